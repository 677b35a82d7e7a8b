"""Reading and checking the audit log. Entries are written with what they record, by the use
case that records it (persistence.sessions.write_change, the SOP catalog)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from application.authz import Actor, authorize
from application.context import Context
from application.ports import Store, StoredSession
from domain.audit_chain import anchor_digest, session_chain, verify_chain
from domain.errors import NotFound

EXPORT_FORMAT = "worksession-audit-export/1"


async def list_entries(ctx: Context, actor: Actor, session_id: UUID | None, limit: int,
                       offset: int) -> tuple[list[dict], int]:
    authorize(actor, "audit.read")
    async with ctx.uow(read_only=True) as uow:
        return await uow.audit.list_page(session_id, limit, offset)


async def of_session(ctx: Context, actor: Actor, session_id: UUID) -> list[dict[str, Any]]:
    """Every entry of one session, oldest first (the CSV export: a whole chain, unpaged)."""
    authorize(actor, "audit.read")
    async with ctx.uow(read_only=True) as uow:
        return await uow.audit.of_session(session_id)


async def export_session(store: Store, session_id: UUID,
                         render: Callable[[StoredSession, datetime], dict[str, Any]]
                         ) -> dict[str, Any]:
    """One session as one document: the session (as `render` shows it: the API's shape, its
    checks and step times included), its audit chain as the API shows it, and the chain's
    head as the session's row records it. `verify_export` checks it with no database."""
    now = datetime.now(UTC)
    async with store(read_only=True, snapshot=True) as uow:
        stored = await uow.sessions.load(session_id)
        if stored is None:
            raise NotFound(f"session {session_id} is not recorded")
        view = render(stored, now)
        entries = await uow.audit.of_session(session_id)
        head = await uow.sessions.chain_head(session_id)
    return {"format": EXPORT_FORMAT, "exported_at": now.isoformat(), "session": view,
            "audit": entries, "head": {"seq": head[0], "hash": head[1]}}


def verify_export(doc: dict[str, Any]) -> tuple[int, list[str]]:
    """(entries checked, problems) of an exported session: its chain links from the first
    entry and matches every hash, ends at the head the session recorded, and records every
    check of the session once."""
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        return 0, [f"not a session export ({EXPORT_FORMAT})"]
    session, entries = doc.get("session"), doc.get("audit")
    if not (isinstance(session, dict) and isinstance(entries, list)
            and all(isinstance(e, dict) and isinstance(e.get("hash"), str)
                    and isinstance(e.get("detail"), dict | None) for e in entries)):
        return 0, ["the export's session or audit entries are not in the export's shape"]
    chain = session_chain(session.get("id"))  # type: ignore[arg-type]
    checked, problems = verify_chain(chain, entries)
    head = doc.get("head") or {}
    last = (entries[-1]["seq"], entries[-1]["hash"]) if entries else (0, None)
    if not problems and (head.get("seq"), head.get("hash")) != last:
        problems.append(f"{chain}: the session records {head.get('seq')} entries ending in "
                        f"{str(head.get('hash'))[:12]}…, the export has {last[0]} "
                        f"(entries removed or added at the end)")
    recorded = [e["detail"].get("check_id") for e in entries
                if e.get("action") == "check_submitted" and e.get("outcome") == "accepted"
                and e.get("detail")]
    kept = Counter(str(c.get("id")) for c in session.get("checks") or [])
    chained = Counter(str(c) for c in recorded)
    for check_id in sorted((kept - chained) | (chained - kept)):
        problems.append(f"check {check_id}: the session holds it {kept[check_id]} time(s), "
                        f"its chain records it {chained[check_id]} time(s)")
    return checked, problems


async def verify(store: Store, anchor: dict[str, Any] | None = None
                 ) -> tuple[int, list[str]]:
    """(entries checked, problems): every chain, every session's record of its chain, and
    with an anchor, that no anchored entry was lost or rewritten."""
    problems = []
    if anchor is not None and anchor_digest(anchor.get("chains", [])) != anchor.get("digest"):
        problems.append("the anchor's digest does not match its chains: the anchor file was "
                        "altered")
    async with store(read_only=True, snapshot=True) as uow:  # a live log
        n, found = await uow.audit.verify(anchor)
    return n, problems + found


async def anchor(store: Store) -> dict[str, Any]:
    async with store(read_only=True, snapshot=True) as uow:
        return await uow.audit.anchor(datetime.now(UTC))
