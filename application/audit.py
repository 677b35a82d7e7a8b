"""Recording and reading the audit log."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from application.authz import Actor, authorize
from application.context import Context
from persistence import audit
from persistence.audit import AuditEntry


async def record(ctx: Context, actor: Actor | None, action: str, outcome: str,
                 session_id: UUID | None = None, detail: dict[str, Any] | None = None,
                 request_id: str | None = None, dedup_key: str | None = None,
                 along_with: Callable[[AsyncConnection], Awaitable[Any]] | None = None
                 ) -> None:
    """Append one entry; `along_with` writes what the entry records in the same
    transaction, so the read model and the log never tell different stories."""
    entry = AuditEntry(action=action, outcome=outcome, session_id=session_id, detail=detail,
                       actor_id=actor.id if actor else None,
                       actor_role=actor.role.value if actor else None, request_id=request_id)
    async with ctx.db.write() as conn:
        if along_with is not None:
            await along_with(conn)
        await audit.append(conn, entry, ctx.clock(), dedup_key=dedup_key)


async def list_entries(ctx: Context, actor: Actor, session_id: UUID | None, limit: int,
                       offset: int) -> tuple[list[dict], int]:
    authorize(actor, "audit.read")
    async with ctx.db.read() as conn:
        return await audit.list_page(conn, session_id, limit, offset)


async def verify(ctx: Context) -> tuple[int, str | None]:
    async with ctx.db.read() as conn:
        return await audit.verify(conn)
