"""Work-session read model (spec session-007): the session and all its checks, saved in one
transaction by an idempotent, versioned upsert: a retried or late write never overwrites a
newer state. Approval and the lock live here only (the workflow never writes them)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.sop import CheckResult
from domain.work_session import ACTIVE_STATUSES, Check, SessionState, SessionStatus
from persistence.db import Database, dialect_insert
from persistence.tables import session_checks, work_sessions

ACTIVE_VALUES = [s.value for s in ACTIVE_STATUSES]


@dataclass
class SessionRow:
    state: SessionState
    workflow_id: str
    run_id: str | None


@dataclass
class ActiveSessionRef:
    id: UUID
    worker_id: UUID
    started_at: datetime


async def save(db: Database, conn: AsyncConnection, state: SessionState, workflow_id: str,
               run_id: str | None, now: datetime, run_position: int = 0) -> bool:
    """Upsert the session and make its stored checks exactly the state's, unless what is
    stored is newer. Returns whether it was written.

    Newer means: from the same run, at a later point of its order of changes; from another
    run, a higher `state.version`. Within a run that position decides, not the version:
    runs from before COMMITTED_WRITES_PATCH write from a local activity before their
    workflow task commits, at the history length; when that task is lost (a crashed
    Temporal server) the run does something else from the same point, which may carry a
    lower version than the lost write. That later write, at the same or a later position,
    replaces it. Newer runs number their committed changes 1, 2, 3, ... (The service's own
    writes, at a start or reopen, are position 0.)"""
    values = {
        "id": state.id, "worker_id": state.worker_id, "sop_id": state.sop_id,
        "sop_title": state.sop_title, "sop_version": state.sop_version,
        "status": state.status.value, "current_step_id": state.current_step_id,
        "started_at": state.started_at, "paused_at": state.paused_at,
        "paused_seconds": state.paused_seconds, "paused_reason": state.paused_reason,
        "completed_at": state.completed_at, "cancelled_at": state.cancelled_at,
        "cancel_reason": state.cancel_reason,
        "unchecked_step_ids": None if state.unchecked_step_ids is None
        else [str(i) for i in state.unchecked_step_ids],
        "needs_attention": state.needs_attention, "workflow_id": workflow_id,
        "run_id": run_id, "version": state.version, "run_position": run_position,
        "updated_at": now,
        "locked": state.locked, "approved_by": state.approved_by,
        "approved_at": state.approved_at,
    }
    written = (await conn.execute(_session_upsert(db.is_sqlite), values)).rowcount > 0
    if written:
        await _save_checks(db, conn, state)
    return written


# Statements are built once per dialect and carry no literal values (rows go as parameters):
# SQLAlchemy then finds their compiled form by a cache key computed once, not per call. They
# run on every change of every session.
@functools.cache
def _session_upsert(is_sqlite: bool) -> Any:
    stmt = dialect_insert(is_sqlite, work_sessions)
    # The workflow never knows about approval: the lock is owned by this table.
    updatable = {k: stmt.excluded[k] for k in work_sessions.c.keys()
                 if k not in ("id", "locked", "approved_by", "approved_at")}
    stored, new = work_sessions.c, stmt.excluded
    return stmt.on_conflict_do_update(
        index_elements=[stored.id], set_=updatable,
        where=or_(and_(stored.run_id == new.run_id, stored.run_position <= new.run_position),
                  and_(stored.run_id.is_distinct_from(new.run_id),
                       stored.version <= new.version)))


@functools.cache
def _checks_upsert(is_sqlite: bool) -> Any:
    c = session_checks.c
    stmt = dialect_insert(is_sqlite, session_checks)
    fields = [k for k in c.keys() if k not in ("session_id", "id")]
    return stmt.on_conflict_do_update(
        index_elements=[c.session_id, c.id], set_={f: stmt.excluded[f] for f in fields},
        where=or_(*(c[f].is_distinct_from(stmt.excluded[f]) for f in fields)))


_OTHER_CHECKS = delete(session_checks).where(
    session_checks.c.session_id == bindparam("session_id"),
    session_checks.c.id.not_in(bindparam("ids", expanding=True)))


async def _save_checks(db: Database, conn: AsyncConnection, state: SessionState) -> None:
    """Make the stored checks exactly the state's: add new ones, correct any that differ,
    and drop any the state does not have (left by a write of a lost workflow task)."""
    ids = [check.id for check in state.checks]
    await conn.execute(_OTHER_CHECKS, {"session_id": state.id, "ids": ids})
    if not ids:
        return
    rows = [{"session_id": state.id, "id": k.id, "seq": i, "step_id": k.step_id,
             "result": k.result.value, "value": k.value, "notes": k.notes,
             "evidence_uri": k.evidence_uri, "checked_at": k.checked_at,
             "checked_by": k.checked_by} for i, k in enumerate(state.checks)]
    await conn.execute(_checks_upsert(db.is_sqlite), rows)


def _state(row: dict, checks: list[Check]) -> SessionState:
    return SessionState(
        id=row["id"], worker_id=row["worker_id"], sop_id=row["sop_id"],
        sop_title=row["sop_title"], sop_version=row["sop_version"],
        status=SessionStatus(row["status"]), current_step_id=row["current_step_id"],
        started_at=row["started_at"], checks=checks, paused_at=row["paused_at"],
        paused_seconds=row["paused_seconds"], paused_reason=row["paused_reason"],
        completed_at=row["completed_at"], cancelled_at=row["cancelled_at"],
        cancel_reason=row["cancel_reason"],
        unchecked_step_ids=None if row["unchecked_step_ids"] is None
        else [UUID(i) for i in row["unchecked_step_ids"]],
        needs_attention=row["needs_attention"], locked=row["locked"],
        approved_by=row["approved_by"], approved_at=row["approved_at"], version=row["version"],
    )


async def _checks(conn: AsyncConnection, session_id: UUID) -> list[Check]:
    rows = (await conn.execute(select(session_checks)
                               .where(session_checks.c.session_id == session_id)
                               .order_by(session_checks.c.seq))).mappings().all()
    return [Check(id=r["id"], step_id=r["step_id"], result=CheckResult(r["result"]),
                  checked_at=r["checked_at"], checked_by=r["checked_by"], value=r["value"],
                  notes=r["notes"], evidence_uri=r["evidence_uri"]) for r in rows]


async def _one(conn: AsyncConnection, cond: object, with_checks: bool,
               for_update: bool = False) -> SessionRow | None:
    stmt = select(work_sessions).where(cond)
    if for_update:  # FOR NO KEY UPDATE: holds the row, lets foreign-key checks through
        stmt = stmt.with_for_update(key_share=True)
    row = (await conn.execute(stmt)).mappings().first()
    if row is None:
        return None
    checks = await _checks(conn, row["id"]) if with_checks else []
    return SessionRow(_state(row, checks), row["workflow_id"], row["run_id"])


async def owner(conn: AsyncConnection, session_id: UUID) -> UUID | None:
    """The session's worker, or None when there is no such session."""
    return (await conn.execute(select(work_sessions.c.worker_id)
                               .where(work_sessions.c.id == session_id))).scalar_one_or_none()


async def get(conn: AsyncConnection, session_id: UUID, *, with_checks: bool = True,
              for_update: bool = False) -> SessionRow | None:
    """`with_checks=False` when only the session's own fields matter (who, status, lock);
    `for_update` holds the row until the transaction ends (PostgreSQL; SQLite's write
    transaction already serialises writers)."""
    return await _one(conn, work_sessions.c.id == session_id, with_checks, for_update)


async def active_for_worker(conn: AsyncConnection, worker_id: UUID, *,
                            with_checks: bool = True) -> SessionRow | None:
    return await _one(conn, and_(work_sessions.c.worker_id == worker_id,
                                 work_sessions.c.status.in_(ACTIVE_VALUES)), with_checks)


async def list_page(conn: AsyncConnection, worker_id: UUID | None,
                    status: SessionStatus | None, limit: int,
                    offset: int) -> tuple[list[dict], int]:
    conds = []
    if worker_id is not None:
        conds.append(work_sessions.c.worker_id == worker_id)
    if status is not None:
        conds.append(work_sessions.c.status == status.value)
    where = and_(True, *conds)
    total = (await conn.execute(select(func.count()).select_from(work_sessions)
                                .where(where))).scalar_one()
    c = work_sessions.c
    rows = (await conn.execute(
        select(c.id, c.status, c.sop_id, c.sop_title, c.sop_version, c.worker_id,
               c.started_at, c.completed_at, c.cancelled_at, c.locked, c.needs_attention)
        .where(where).order_by(c.started_at.desc(), c.id.desc()).limit(limit).offset(offset)
    )).mappings().all()
    return [dict(r) for r in rows], total


async def active_not_updated_since(conn: AsyncConnection, before: datetime,
                                   limit: int = 1000) -> list[SessionRow]:
    """Active sessions untouched since `before` (ops: candidates for a lost workflow)."""
    rows = (await conn.execute(
        select(work_sessions).where(work_sessions.c.status.in_(ACTIVE_VALUES),
                                    work_sessions.c.updated_at < before)
        .order_by(work_sessions.c.updated_at).limit(limit))).mappings().all()
    return [SessionRow(_state(r, []), r["workflow_id"], r["run_id"]) for r in rows]


async def active_for_sop(conn: AsyncConnection, sop_id: UUID) -> list[ActiveSessionRef]:
    c = work_sessions.c
    rows = (await conn.execute(select(c.id, c.worker_id, c.started_at)
                               .where(c.sop_id == sop_id, c.status.in_(ACTIVE_VALUES))
                               .order_by(c.started_at))).all()
    return [ActiveSessionRef(r.id, r.worker_id, r.started_at) for r in rows]


async def approve(conn: AsyncConnection, state: SessionState, now: datetime) -> bool:
    """Compare-and-set on the version read: of concurrent approvals exactly one wins."""
    c = work_sessions.c
    res = await conn.execute(
        update(work_sessions)
        .where(c.id == state.id, c.version == state.version - 1, c.locked.is_(False),
               c.status == SessionStatus.COMPLETED.value)
        .values(locked=True, approved_by=state.approved_by, approved_at=state.approved_at,
                version=state.version, updated_at=now))
    return res.rowcount == 1
