"""Reading and checking the audit log. Entries are written with what they record, by the use
case that records it (persistence.sessions.write_change, the SOP catalog)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from application.authz import Actor, authorize
from application.context import Context
from persistence.audit import anchor_digest
from persistence.db import Database
from persistence.uow import UnitOfWork


async def list_entries(ctx: Context, actor: Actor, session_id: UUID | None, limit: int,
                       offset: int) -> tuple[list[dict], int]:
    authorize(actor, "audit.read")
    async with ctx.uow(read_only=True) as uow:
        return await uow.audit.list_page(session_id, limit, offset)


async def verify(db: Database, anchor: dict[str, Any] | None = None
                 ) -> tuple[int, list[str]]:
    """(entries checked, problems): every chain, every session's record of its chain, and
    with an anchor, that no anchored entry was lost or rewritten."""
    problems = []
    if anchor is not None and anchor_digest(anchor.get("chains", [])) != anchor.get("digest"):
        problems.append("the anchor's digest does not match its chains: the anchor file was "
                        "altered")
    async with UnitOfWork.begin(db, read_only=True, snapshot=True) as uow:  # a live log
        n, found = await uow.audit.verify(anchor)
    return n, problems + found


async def anchor(db: Database) -> dict[str, Any]:
    async with UnitOfWork.begin(db, read_only=True, snapshot=True) as uow:
        return await uow.audit.anchor(datetime.now(UTC))
