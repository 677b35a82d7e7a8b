"""Work-session read model (spec session-007): a session's fields and its checks, written one
change at a time with the change's audit entries, by `write_change` alone.

One ordering rule: the row takes a change only when the change's `version` is higher than
the stored one, so no late, repeated or stale write ever replaces a newer state or rolls the
version back (approval included: it is a change like the others), and a locked row takes no
change at all. Checks are added by id, whatever order changes arrive in; an entry already
written (its dedup key names the change) makes the whole change a no-op."""

from __future__ import annotations

import functools
from dataclasses import fields, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Boolean, and_, bindparam, func, not_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from application.ports import ActiveSessionRef, StoredSession
from domain.audit_chain import GENESIS, link, session_chain
from domain.changes import SYSTEM, AuditFacts, SessionChange
from domain.nonconformance import Nonconformance
from domain.signature import Meaning, Signature
from domain.sop import CheckResult
from domain.work_session import (
    ACTIVE_STATUSES,
    Check,
    SessionFilter,
    SessionState,
    SessionStatus,
    StepTime,
    WorkSession,
)
from persistence.audit import AuditLog
from persistence.db import dialect_insert
from persistence.evidence import attach
from persistence.nonconformances import NonconformanceRepository
from persistence.sops import SopRepository
from persistence.spc import SpcCharts
from persistence.tables import (
    people,
    session_checks,
    session_steps,
    signatures,
    sops,
    work_sessions,
)

ACTIVE_VALUES = [s.value for s in ACTIVE_STATUSES]
# The row's fields that a change sets (all but the id, the audit chain's head and the reason
# the service itself set `needs_attention`, which `write_change` alone writes).
_STATE_FIELDS = [k for k in work_sessions.c.keys()
                 if k not in ("id", "audit_seq", "audit_hash", "attention_reason")]
SPC = "spc"  # `attention_reason` of an out-of-control measurement
# The row's fields that are the state's own, by name.
_ROW_FROM_STATE = [f.name for f in fields(SessionState) if f.name in _STATE_FIELDS]
# A check's fields are its table's columns of the same names (`result` as its value).
_CHECK_FIELDS = [f.name for f in fields(Check) if f.name != "result"]
# A step time's fields as the table keeps them (`changed_in` is the row's `version`).
_STEP_FIELDS = [k for k in session_steps.c.keys()
                if k not in ("session_id", "version", "sop_id", "session_started_at")]
# A signature's fields are its table's columns of the same names (`meaning` as its value).
_SIGNATURE_FIELDS = [f.name for f in fields(Signature) if f.name != "meaning"]


def change_key(change: SessionChange, entry: int) -> str:
    return f"{session_chain(change.state.id)}@{change.version}#{entry}"


class SessionRepository:
    def __init__(self, conn: AsyncConnection, sops: SopRepository | None = None) -> None:
        self.conn = conn
        self._sops = sops or SopRepository(conn)  # the SOP plans it loads sessions with
        self._sqlite = conn.dialect.name == "sqlite"
        self._audit = AuditLog(conn)
        self._spc = SpcCharts(conn, self._sops)
        self.written: list[SessionChange] = []  # what this transaction wrote (once committed)
        self.out_of_control: dict[UUID, tuple[UUID, list[int]]] = {}

    # ---- the one write ---------------------------------------------------------------------
    async def write_change(self, change: SessionChange) -> bool:
        """Write one accepted change: its audit entries, the checks it added, and the row if
        the change is newer than it. Returns False, writing nothing, when it was written
        before. The session's row is held from the first statement (PostgreSQL's row lock;
        SQLite's write transaction), so one session's writes queue and no other's do."""
        st = change.state
        head = (await self.conn.execute(_head(self._sqlite), {"id": st.id})).first()
        if head is None:
            # The session's first write: its row comes first (as this change has it, its
            # chain empty), so that a second writer of this session waits on it rather than
            # starting the chain a second time.
            await self.conn.execute(_insert_row_once(self._sqlite), {
                "id": st.id, **_state_values(change), "audit_seq": 0, "audit_hash": GENESIS})
            head = (await self.conn.execute(_head(self._sqlite), {"id": st.id})).one()
        if head.locked:
            # An approved session never changes again (CONTRACT.md): whatever arrives after
            # the lock is a run's that should not exist (a reopen that lost to an approval).
            return False
        seq, prev = head.audit_seq, head.audit_hash
        # A signature binds the record as it stood when it was signed: the chain's head,
        # read under the row's lock, before the entries of the change that signs.
        signed = [replace(g, record_hash=prev) for g in change.signatures]
        rows = []
        for i, facts in enumerate(change.entries):
            seq += 1
            rows.append(link(session_chain(st.id), seq, prev, facts, change.at, st.id,
                             dedup_key=change_key(change, i)))
            prev = rows[-1]["hash"]
        if not await self._audit.insert_once(rows[0]):
            return False
        # Each measured value onto its chart, judged there and then (domain/spc.py), so that
        # an out-of-control point is on the record with the check that made it, whoever
        # writes the change (docs/architecture.md, "Statistical process control").
        out_of_control = await self._spc.judge(st.sop_id, change.checks)
        for k, chart, broken in out_of_control:
            seq += 1
            rows.append(link(session_chain(st.id), seq, prev, _spc_facts(k, chart, broken),
                             change.at, st.id, dedup_key=change_key(change, len(rows))))
            prev = rows[-1]["hash"]
            self.out_of_control[k.id] = (chart, broken)  # its event: application/events.py
        if rows[1:]:
            await self._audit.insert(rows[1:])
        if change.checks:
            await self.conn.execute(_checks_insert(self._sqlite), [
                _check_row(st.id, change.first_check_seq + i, k)
                for i, k in enumerate(change.checks)])
            await attach(self.conn, st.id, change.checks)  # their files: evidence from now on
        for opened in change.nonconformances:  # a failed check's NC, with the check
            nc = Nonconformance.opened_by_check(opened, st.id, st.sop_id)
            await NonconformanceRepository(self.conn).add(nc, [AuditFacts(
                "nonconformance_opened", None, SYSTEM, {
                    "session_id": str(st.id), "step_id": str(nc.step_id),
                    "check_id": str(nc.check_id), "severity": nc.severity.value,
                    "hold": nc.hold, "description": nc.description,
                    "containment_due": nc.containment_due.isoformat(),
                    "close_due": nc.close_due.isoformat()})], change.at)
            # event: nonconformance.opened
        if signed:
            await self.conn.execute(signatures.insert(), [
                _signature_row(change.first_signature_seq + i, g) for i, g in enumerate(signed)])
        if change.step_times:  # each replaced only by a newer change, as the row is
            await self.conn.execute(_steps_upsert(self._sqlite), [
                _step_row(st, t) for t in change.step_times])
        chain_head = {"audit_seq": seq, "audit_hash": prev}
        if head.version < st.version:
            await self.conn.execute(_UPDATE_ALL, {"sid": st.id, **_state_values(change),
                                                  **chain_head})
        else:  # an older change arriving late: its entries and checks, not its state
            await self.conn.execute(_UPDATE_HEAD, {"sid": st.id, **chain_head})
        if out_of_control:
            await self.conn.execute(_FLAG_SPC, {"sid": st.id})
        self.written.append(change)
        return True

    async def record_rejection(self, session_id: UUID, facts: AuditFacts,
                               at: datetime) -> None:
        """An attempt that changed nothing (refused, or on a locked session): its entry on
        the session's chain."""
        await self.record_entry(session_id, facts, at)

    async def record_entry(self, session_id: UUID, facts: AuditFacts, at: datetime) -> None:
        """An entry on the session's chain that changes nothing of the session's own record:
        a refused attempt, an evidence upload (written in the upload's transaction)."""
        head = (await self.conn.execute(_head(self._sqlite), {"id": session_id})).first()
        if head is None:  # no such session recorded: nothing to chain it to
            raise LookupError(f"session {session_id} is not recorded")
        row = link(session_chain(session_id), head.audit_seq + 1, head.audit_hash, facts, at,
                   session_id)
        await self._audit.insert([row])
        await self.conn.execute(_UPDATE_HEAD, {"sid": session_id, "audit_seq": row["seq"],
                                               "audit_hash": row["hash"]})

    # ---- reads -----------------------------------------------------------------------------
    async def chain_head(self, session_id: UUID) -> tuple[int, str]:
        """(seq, hash) of the last entry of the session's chain, as its row records them."""
        head = (await self.conn.execute(_head(is_sqlite=True),  # the form that locks nothing
                                        {"id": session_id})).one()
        return head.audit_seq, head.audit_hash

    async def owner(self, session_id: UUID) -> UUID | None:
        """The session's worker, or None when there is no such session."""
        return (await self.conn.execute(_OWNER, {"sid": session_id})).scalar_one_or_none()

    async def load(self, session_id: UUID, *, with_checks: bool = True,
                   for_update: bool = False) -> StoredSession | None:
        """`with_checks=False` when only the session's own fields matter (who, status,
        lock); `for_update` holds the row until the transaction ends (PostgreSQL; SQLite's
        write transaction already serialises writers)."""
        row = (await self.conn.execute(_session_by_id(for_update and not self._sqlite),
                                       {"sid": session_id})).mappings().first()
        return await self._stored(row, with_checks) if row is not None else None

    async def active_for_worker(self, worker_id: UUID, *,
                                with_checks: bool = True) -> StoredSession | None:
        return await self._one(and_(work_sessions.c.worker_id == worker_id,
                                    work_sessions.c.status.in_(ACTIVE_VALUES)), with_checks)

    async def _one(self, cond: object, with_checks: bool) -> StoredSession | None:
        row = (await self.conn.execute(_SESSIONS.where(cond))).mappings().first()
        return await self._stored(row, with_checks) if row is not None else None

    async def _stored(self, row: Any, with_checks: bool) -> StoredSession:
        state = _state(row, await self._checks(row["id"]) if with_checks else [])
        state.signatures = await self._signatures(row["id"])  # few; approval needs them
        state.nonconformances = await NonconformanceRepository(self.conn).open_of_session(
            row["id"])  # a reopened run holds them (and a hold shows)
        if with_checks:
            state.step_times = await self._step_times(row["id"])
        session = WorkSession(plan=await self._sops.plan(state.sop_id), state=state)
        return StoredSession(session, row["workflow_id"], row["run_id"], row["worker_name"])

    async def _checks(self, session_id: UUID) -> list[Check]:
        rows = (await self.conn.execute(_CHECKS_OF, {"sid": session_id})).mappings().all()
        return [_check(r) for r in rows]

    async def _signatures(self, session_id: UUID) -> list[Signature]:
        rows = (await self.conn.execute(_SIGNATURES_OF, {"sid": session_id})).mappings().all()
        return [Signature(**{k: r[k] for k in _SIGNATURE_FIELDS}, meaning=Meaning(r["meaning"]))
                for r in rows]

    async def _step_times(self, session_id: UUID) -> list[StepTime]:
        rows = (await self.conn.execute(_STEPS_OF, {"sid": session_id})).mappings().all()
        return [StepTime(**{k: r[k] for k in _STEP_FIELDS}, changed_in=r["version"])
                for r in rows]

    async def list_page(self, owner: UUID | None, f: SessionFilter,
                        limit: int, offset: int) -> tuple[list[dict], int]:
        """One page of the sessions `f` selects, newest first, and how many it selects;
        `owner` (a worker's own list) narrows it like any other filter."""
        c = work_sessions.c
        conds: list[Any] = [c.worker_id == w for w in (owner, f.worker_id) if w is not None]
        if f.status is not None:
            conds.append(c.status == f.status.value)
        if f.sop_id is not None:
            conds.append(c.sop_id == f.sop_id)
        if f.sop_family_id is not None:
            conds.append(c.sop_id.in_(select(sops.c.id).where(
                sops.c.family_id == f.sop_family_id).scalar_subquery()))
        if f.needs_attention is not None:
            conds.append(c.needs_attention == f.needs_attention)  # `IS` would use no index
        if f.locked is not None:
            conds.append(c.locked == f.locked)
        if f.awaiting_verification is not None:
            conds.append(c.awaiting_verification.is_not(None) if f.awaiting_verification
                         else c.awaiting_verification.is_(None))
        if f.started_after is not None:
            conds.append(c.started_at >= f.started_after)
        if f.started_before is not None:
            conds.append(c.started_at < f.started_before)
        where = and_(True, *conds)
        total = (await self.conn.execute(select(func.count()).select_from(work_sessions)
                                         .where(where))).scalar_one()
        rows = (await self.conn.execute(
            select(c.id, c.status, c.sop_id, c.sop_title, c.sop_version, c.worker_id,
                   _WORKER_NAME, c.started_at, c.completed_at, c.cancelled_at, c.locked,
                   c.needs_attention, c.awaiting_verification)
            .select_from(_WITH_WORKER).where(where)
            .order_by(c.started_at.desc(), c.id.desc()).limit(limit)
            .offset(offset))).mappings().all()
        return [dict(r) for r in rows], total

    async def active_not_updated_since(self, before: datetime,
                                       limit: int = 1000) -> list[StoredSession]:
        """Active sessions untouched since `before` (ops: candidates for a lost workflow)."""
        rows = (await self.conn.execute(
            _SESSIONS.where(work_sessions.c.status.in_(ACTIVE_VALUES),
                            work_sessions.c.updated_at < before)
            .order_by(work_sessions.c.updated_at).limit(limit))).mappings().all()
        return [await self._stored(r, with_checks=False) for r in rows]

    async def count_needing_attention(self) -> int:
        """Active sessions flagged for a supervisor (repeated failed checks)."""
        c = work_sessions.c
        return (await self.conn.execute(select(func.count()).select_from(work_sessions).where(
            c.needs_attention == True, c.status.in_(ACTIVE_VALUES)))).scalar_one()  # noqa: E712

    async def active_for_sop(self, sop_id: UUID) -> list[ActiveSessionRef]:
        c = work_sessions.c
        rows = (await self.conn.execute(select(c.id, c.worker_id, c.started_at)
                                        .where(c.sop_id == sop_id, c.status.in_(ACTIVE_VALUES))
                                        .order_by(c.started_at))).all()
        return [ActiveSessionRef(r.id, r.worker_id, r.started_at) for r in rows]


# A session's row with its worker's name from the directory of people, in the same SELECT
# (a session's worker need not be in the directory: rows before it, tokens not seen since).
_WITH_WORKER = work_sessions.outerjoin(people, people.c.id == work_sessions.c.worker_id)
_WORKER_NAME = people.c.name.label("worker_name")
_SESSIONS = select(work_sessions, _WORKER_NAME).select_from(_WITH_WORKER)


# Statements are built once (per dialect) and carry no literal values: they run on every
# change of every session.
@functools.cache
def _head(is_sqlite: bool) -> Any:
    c = work_sessions.c
    stmt = select(c.version, c.locked, c.audit_seq, c.audit_hash).where(c.id == bindparam("id"))
    return stmt if is_sqlite else stmt.with_for_update(key_share=True)


@functools.cache
def _insert_row_once(is_sqlite: bool) -> Any:
    return dialect_insert(is_sqlite, work_sessions).on_conflict_do_nothing(
        index_elements=[work_sessions.c.id])


@functools.cache
def _steps_upsert(is_sqlite: bool) -> Any:
    stmt = dialect_insert(is_sqlite, session_steps)
    return stmt.on_conflict_do_update(
        index_elements=[session_steps.c.session_id, session_steps.c.step_id],
        set_={k: stmt.excluded[k] for k in [*_STEP_FIELDS, "version"] if k != "step_id"},
        where=session_steps.c.version < stmt.excluded.version)


@functools.cache
def _checks_insert(is_sqlite: bool) -> Any:
    return dialect_insert(is_sqlite, session_checks).on_conflict_do_nothing(
        index_elements=[session_checks.c.session_id, session_checks.c.id])


@functools.cache
def _session_by_id(for_update: bool) -> Any:
    stmt = _SESSIONS.where(work_sessions.c.id == bindparam("sid"))
    # FOR NO KEY UPDATE: holds the session's row, lets foreign-key checks through
    # (PostgreSQL); the directory's row is only read
    return stmt.with_for_update(key_share=True, of=work_sessions) if for_update else stmt


_OWNER = select(work_sessions.c.worker_id).where(work_sessions.c.id == bindparam("sid"))
_SIGNATURES_OF = select(signatures).where(
    signatures.c.session_id == bindparam("sid")).order_by(signatures.c.seq)
_STEPS_OF = select(session_steps).where(session_steps.c.session_id == bindparam("sid"))
_CHECKS_OF = select(session_checks).where(
    session_checks.c.session_id == bindparam("sid")).order_by(session_checks.c.seq)
_UPDATE_ALL = update(work_sessions).where(work_sessions.c.id == bindparam("sid")).values(
    {k: bindparam(k) for k in [*_STATE_FIELDS, "audit_seq", "audit_hash"]} | {
        # the session's own rules say whether it needs attention, and an out-of-control
        # point says so until the session is approved (passing the step does not undo it)
        "needs_attention": or_(bindparam("needs_attention", type_=Boolean), and_(
            work_sessions.c.attention_reason.is_not(None),
            not_(bindparam("locked", type_=Boolean))))})
_FLAG_SPC = update(work_sessions).where(work_sessions.c.id == bindparam("sid")).values(
    needs_attention=True, attention_reason=SPC)
_UPDATE_HEAD = update(work_sessions).where(work_sessions.c.id == bindparam("sid")).values(
    audit_seq=bindparam("audit_seq"), audit_hash=bindparam("audit_hash"))


def _state_values(change: SessionChange) -> dict[str, Any]:
    st = change.state
    values = {k: getattr(st, k) for k in _ROW_FROM_STATE}  # shallow: asdict deep-copies
    values.update(
        status=st.status.value, workflow_id=change.workflow_id, run_id=change.run_id,
        unchecked_step_ids=None if st.unchecked_step_ids is None
        else [str(i) for i in st.unchecked_step_ids],
        duration_seconds=st.duration_seconds, updated_at=change.at)
    return values


def _spc_facts(k: Check, chart: UUID, broken: list[int]) -> AuditFacts:
    """The service's own entry for a value that breaks a rule of its chart."""
    return AuditFacts("session_escalated", None, SYSTEM, {
        "reason": SPC, "step_id": str(k.step_id), "check_id": str(k.id), "value": k.value,
        "chart_id": str(chart), "rules": broken})


def _step_row(st: SessionState, t: StepTime) -> dict[str, Any]:
    return {"session_id": st.id, "version": st.version, "sop_id": st.sop_id,
            "session_started_at": st.started_at, **{k: getattr(t, k) for k in _STEP_FIELDS}}


def _check_row(session_id: UUID, seq: int, k: Check) -> dict[str, Any]:
    return {"session_id": session_id, "seq": seq,
            **{f: getattr(k, f) for f in _CHECK_FIELDS}, "result": k.result.value}


def _signature_row(seq: int, g: Signature) -> dict[str, Any]:
    return {"seq": seq, **{f: getattr(g, f) for f in _SIGNATURE_FIELDS},
            "meaning": g.meaning.value}


def _check(row: Any) -> Check:
    return Check(**{f: row[f] for f in _CHECK_FIELDS}, result=CheckResult(row["result"]))


def _state(row: Any, checks: list[Check]) -> SessionState:
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
        # until approved, as the row's `needs_attention` (_UPDATE_ALL): a run started from
        # this state (a reopening) keeps the flag, which its own rule would clear
        out_of_control=row["attention_reason"] == SPC and not row["locked"],
        approved_by=row["approved_by"], approved_at=row["approved_at"], version=row["version"],
        awaiting_verification=row["awaiting_verification"],
    )
