"""Uploads of evidence files (the `evidence` table). The bytes are in the evidence store
(persistence/files.py) under their sha256; a row says which session they were uploaded to,
by whom, and which check they are evidence of.

Whoever publishes bytes under a hash or removes them holds that hash (`hold_bytes`) for the
length of the transaction that records or forgets the rows naming it, so that an upload of
bytes that another session's forgotten upload shares never loses them to its removal."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import and_, bindparam, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.evidence import Evidence
from domain.work_session import Check
from persistence.tables import evidence

_FIELDS = [c.name for c in evidence.c if c.name != "named_at"]
_UNATTACHED = evidence.c.check_id.is_(None)


class EvidenceRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._sqlite = conn.dialect.name == "sqlite"

    async def hold_bytes(self, sha256: str) -> None:
        """Until the transaction ends, no one else publishes or removes these bytes.
        PostgreSQL: a transaction-level advisory lock on the hash (a lock on the rows would
        not stop a new row); SQLite's write transaction already serialises writers."""
        if not self._sqlite:
            key = int.from_bytes(bytes.fromhex(sha256[:16]), "big", signed=True)
            await self.conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    async def add(self, e: Evidence) -> None:
        await self.conn.execute(evidence.insert(), {k: getattr(e, k) for k in _FIELDS})

    async def get(self, evidence_id: UUID) -> Evidence | None:
        row = (await self.conn.execute(_BY_ID, {"id": evidence_id})).mappings().first()
        return _evidence(row) if row is not None else None

    async def find(self, session_id: UUID, sha256: str) -> Evidence | None:
        """The session's upload of these bytes, if it has one."""
        row = (await self.conn.execute(select(evidence).where(
            evidence.c.session_id == session_id, evidence.c.sha256 == sha256))
        ).mappings().first()
        return _evidence(row) if row is not None else None

    async def of_session(self, session_id: UUID) -> list[Evidence]:
        rows = (await self.conn.execute(select(evidence).where(
            evidence.c.session_id == session_id).order_by(evidence.c.uploaded_at,
                                                          evidence.c.id))).mappings().all()
        return [_evidence(r) for r in rows]

    async def named(self, session_id: UUID, ids: Iterable[UUID],
                    at: datetime) -> list[Evidence]:
        """The session's uploads among `ids`, marked as named by a check now: none of them
        is removed as unattached within the next day, so a check on its way to the record
        keeps its files (the removal counts from the last time a check named it)."""
        ids = list(ids)
        cond = and_(evidence.c.session_id == session_id, evidence.c.id.in_(ids))
        await self.conn.execute(update(evidence).where(cond).values(named_at=at))
        rows = (await self.conn.execute(select(evidence).where(cond))).mappings().all()
        return [_evidence(r) for r in rows]

    async def unattached_before(self, before: datetime, limit: int) -> list[str]:
        """Hashes of uploads not attached to any check, neither uploaded nor named by a
        check since `before`."""
        last = func.coalesce(evidence.c.named_at, evidence.c.uploaded_at)
        return list((await self.conn.execute(
            select(evidence.c.sha256).where(_UNATTACHED, evidence.c.uploaded_at < before,
                                            last < before)
            .group_by(evidence.c.sha256).order_by(func.min(evidence.c.uploaded_at))
            .limit(limit))).scalars())

    async def remove_unattached(self, sha256: str, before: datetime) -> int:
        """Forget the uploads of these bytes that `unattached_before` would name; how many."""
        last = func.coalesce(evidence.c.named_at, evidence.c.uploaded_at)
        return (await self.conn.execute(delete(evidence).where(
            evidence.c.sha256 == sha256, _UNATTACHED, evidence.c.uploaded_at < before,
            last < before))).rowcount

    async def names_bytes(self, sha256: str) -> bool:
        """Whether any upload, of any session, names these bytes."""
        return (await self.conn.execute(select(evidence.c.id).where(
            evidence.c.sha256 == sha256).limit(1))).first() is not None


async def attach(conn: AsyncConnection, session_id: UUID, checks: Iterable[Check]) -> None:
    """The uploads each check names become its evidence (in the write of the change that
    recorded the check: `write_change`). Only a row no check holds yet is taken."""
    rows = [{"eid": f.id, "sid": session_id, "cid": k.id, "at": k.checked_at}
            for k in checks for f in k.evidence]
    if rows:
        await conn.execute(_attach(), rows)


@functools.cache
def _attach() -> Any:
    return update(evidence).where(
        evidence.c.id == bindparam("eid"), evidence.c.session_id == bindparam("sid"),
        _UNATTACHED).values(check_id=bindparam("cid"), attached_at=bindparam("at"))


_BY_ID = select(evidence).where(evidence.c.id == bindparam("id"))


def _evidence(row: Any) -> Evidence:
    return Evidence(**{k: row[k] for k in _FIELDS})
