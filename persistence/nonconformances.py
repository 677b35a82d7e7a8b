"""Nonconformances as recorded (domain/nonconformance.py), each with its own audit chain
(`nc:<id>`, head on its row), changed only together with its entries.

**Gap-free numbers.** `NC-000001`, … come from the `counters` row `nonconformance`, taken by
`UPDATE counters SET value = value + 1 … RETURNING value` in the transaction that inserts
the NC. On PostgreSQL that UPDATE holds the counter's row until the transaction ends, so a
second opening waits for the first to commit (and then reads its value) or roll back (and
then takes the same number again): no number is given twice, and none is lost to a
transaction that did not commit. On SQLite the write transaction (one writer at a time)
does the same. The price: NC openings queue on one row (they are rare; nothing else does)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.audit_chain import GENESIS, link, nc_chain
from domain.changes import AuditFacts
from domain.nonconformance import (
    Deadline,
    Disposition,
    NcFilter,
    NcStatus,
    Nonconformance,
    OpenNc,
)
from domain.signature import Meaning, Signature
from domain.sop import Severity
from persistence.audit import AuditLog
from persistence.db import dialect_insert
from persistence.tables import counters, nonconformances, work_sessions

COUNTER = "nonconformance"
_FIELDS = [k for k in nonconformances.c.keys() if k not in ("audit_seq", "audit_hash")]


class NonconformanceRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._sqlite = conn.dialect.name == "sqlite"
        self._audit = AuditLog(conn)

    async def add(self, nc: Nonconformance, entries: list[AuditFacts], at: datetime) -> None:
        """Record a new NC with its first entries, giving it the next number."""
        await self.conn.execute(dialect_insert(self._sqlite, counters).on_conflict_do_nothing(
            index_elements=[counters.c.name]), {"name": COUNTER, "value": 0})
        nc.number = (await self.conn.execute(
            update(counters).where(counters.c.name == COUNTER)
            .values(value=counters.c.value + 1).returning(counters.c.value))).scalar_one()
        await self.conn.execute(nonconformances.insert().values(
            **_row(nc), audit_seq=0, audit_hash=GENESIS))
        await self._append(nc.id, 0, GENESIS, entries, at)

    async def save(self, nc: Nonconformance, entries: list[AuditFacts], at: datetime,
                   dedup_key: str | None = None) -> bool:
        """Record a change of an NC held by `get(for_update=True)` with its entries. With a
        `dedup_key` (a change the service makes by itself, perhaps twice): nothing when an
        entry with that key is there already. Whether it was recorded."""
        seq, prev = await self.chain_head(nc.id)
        if nc.signature is not None and nc.signature.record_hash is None:
            nc.signature = _with_hash(nc.signature, prev)  # the record as it stood
        if not await self._append(nc.id, seq, prev, entries, at, dedup_key):
            return False
        await self.conn.execute(update(nonconformances).where(nonconformances.c.id == nc.id)
                                .values(**_row(nc)))
        return True

    async def _append(self, nc_id: UUID, seq: int, prev: str, entries: list[AuditFacts],
                      at: datetime, dedup_key: str | None = None) -> bool:
        chain = nc_chain(nc_id)
        rows = []
        for i, facts in enumerate(entries):
            seq += 1
            rows.append(link(chain, seq, prev, facts, at, None,
                             dedup_key=f"{dedup_key}#{i}" if dedup_key else None))
            prev = rows[-1]["hash"]
        if dedup_key is not None:
            if not await self._audit.insert_once(rows[0]):
                return False
            rows = rows[1:]
        if rows:
            await self._audit.insert(rows)
        await self.conn.execute(update(nonconformances).where(nonconformances.c.id == nc_id)
                                .values(audit_seq=seq, audit_hash=prev))
        return True

    # ---- reads -----------------------------------------------------------------------------
    async def get(self, nc_id: UUID, *, for_update: bool = False) -> Nonconformance | None:
        """`for_update`: the row is held until the transaction ends (PostgreSQL; SQLite's
        write transaction already serialises writers)."""
        stmt = select(nonconformances).where(nonconformances.c.id == nc_id)
        if for_update and not self._sqlite:
            stmt = stmt.with_for_update(key_share=True)
        row = (await self.conn.execute(stmt)).mappings().first()
        return None if row is None else _nc(row)

    async def chain_head(self, nc_id: UUID) -> tuple[int, str]:
        row = (await self.conn.execute(
            select(nonconformances.c.audit_seq, nonconformances.c.audit_hash)
            .where(nonconformances.c.id == nc_id))).one()
        return row.audit_seq, row.audit_hash

    async def worker_of(self, nc_id: UUID) -> tuple[bool, UUID | None]:
        """(whether the NC exists, its session's worker)."""
        row = (await self.conn.execute(
            select(work_sessions.c.worker_id).select_from(nonconformances.join(
                work_sessions, work_sessions.c.id == nonconformances.c.session_id))
            .where(nonconformances.c.id == nc_id))).first()
        return (row is not None, row.worker_id if row is not None else None)

    async def released_between(self, since: datetime, before: datetime, limit: int = 1000
                               ) -> list[Nonconformance]:
        """The NCs holding a session that were contained (and perhaps closed since) from
        `since` to `before`."""
        c = nonconformances.c
        rows = (await self.conn.execute(
            select(nonconformances).where(
                c.hold.is_(True), c.status != NcStatus.OPEN.value,
                c.contained_at >= since, c.contained_at < before)
            .order_by(c.contained_at).limit(limit))).mappings().all()
        return [_nc(r) for r in rows]

    async def of_session(self, session_id: UUID) -> list[Nonconformance]:
        """The session's NCs, by number."""
        rows = (await self.conn.execute(
            select(nonconformances).where(nonconformances.c.session_id == session_id)
            .order_by(nonconformances.c.number))).mappings().all()
        return [_nc(r) for r in rows]

    async def opened_by_hand_before(self, before: datetime, limit: int = 1000
                                    ) -> list[tuple[Nonconformance, UUID]]:
        """The NCs opened by hand before `before` and not closed, with their session's
        worker, oldest first."""
        rows = (await self.conn.execute(
            select(nonconformances, work_sessions.c.worker_id).select_from(nonconformances.join(
                work_sessions, work_sessions.c.id == nonconformances.c.session_id))
            .where(nonconformances.c.opened_by.is_not(None),
                   nonconformances.c.status != NcStatus.CLOSED.value,
                   nonconformances.c.opened_at < before)
            .order_by(nonconformances.c.opened_at).limit(limit))).mappings().all()
        return [(_nc(r), r["worker_id"]) for r in rows]

    async def open_of_session(self, session_id: UUID) -> list[OpenNc]:
        """The NCs its failed checks opened that are still open, as the session holds them."""
        c = nonconformances.c
        rows = (await self.conn.execute(
            select(c.id, c.step_id, c.hold).where(
                c.session_id == session_id, c.status == NcStatus.OPEN.value,
                c.check_id.is_not(None)).order_by(c.opened_at))).all()
        return [OpenNc(id=r.id, step_id=r.step_id, hold=r.hold) for r in rows]

    async def list_page(self, worker: UUID | None, f: NcFilter, limit: int,
                        offset: int) -> tuple[list[Nonconformance], int]:
        """Newest first; `worker`: only the NCs of that worker's sessions."""
        c = nonconformances.c
        conds: list[Any] = []
        if worker is not None:
            conds.append(c.session_id.in_(select(work_sessions.c.id).where(
                work_sessions.c.worker_id == worker).scalar_subquery()))
        if f.status is not None:
            conds.append(c.status == f.status.value)
        if f.session_id is not None:
            conds.append(c.session_id == f.session_id)
        if f.sop_id is not None:
            conds.append(c.sop_id == f.sop_id)
        if f.overdue is not None:
            conds.append(c.overdue == f.overdue)
        where = and_(True, *conds)
        total = (await self.conn.execute(select(func.count()).select_from(nonconformances)
                                         .where(where))).scalar_one()
        rows = (await self.conn.execute(
            select(nonconformances).where(where).order_by(c.opened_at.desc(), c.number.desc())
            .limit(limit).offset(offset))).mappings().all()
        return [_nc(r) for r in rows], total


def _with_hash(g: Signature, record_hash: str) -> Signature:
    return replace(g, record_hash=record_hash)


def _signature_json(g: Signature | None) -> dict[str, Any] | None:
    if g is None:
        return None
    return {"id": str(g.id), "session_id": str(g.session_id), "meaning": g.meaning.value,
            "step_id": None, "signer_id": str(g.signer_id), "signer_name": g.signer_name,
            "signer_role": g.signer_role, "signed_at": g.signed_at.astimezone(UTC).isoformat(),
            "statement": g.statement, "record_hash": g.record_hash}


def _signature(d: dict[str, Any] | None) -> Signature | None:
    if d is None:
        return None
    return Signature(id=UUID(d["id"]), session_id=UUID(d["session_id"]),
                     meaning=Meaning(d["meaning"]), step_id=None, signer_id=UUID(d["signer_id"]),
                     signer_name=d["signer_name"], signer_role=d["signer_role"],
                     signed_at=datetime.fromisoformat(d["signed_at"]),
                     statement=d["statement"], record_hash=d["record_hash"])


def _row(nc: Nonconformance) -> dict[str, Any]:
    values = {k: getattr(nc, k) for k in _FIELDS if k not in ("signature",)}
    values.update(status=nc.status.value, severity=nc.severity.value,
                  disposition=nc.disposition.value if nc.disposition else None,
                  overdue_deadlines=[d.value for d in nc.overdue_deadlines],
                  signature=_signature_json(nc.signature))
    return values


def _nc(r: Any) -> Nonconformance:
    values = {k: r[k] for k in _FIELDS}
    values.update(status=NcStatus(r["status"]), severity=Severity(r["severity"]),
                  disposition=Disposition(r["disposition"]) if r["disposition"] else None,
                  overdue_deadlines=[Deadline(d) for d in r["overdue_deadlines"] or []],
                  signature=_signature(r["signature"]))
    return Nonconformance(**values)
