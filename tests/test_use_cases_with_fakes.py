"""The use cases against in-memory fakes of their ports (application/ports.py): no database,
no Temporal. What a use case decides (what it writes, with which audit entries, what it
refuses) is shown here on its own; the same use cases run against the real adapters in the
end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from application import sessions as uc
from application.authz import Actor, Role
from application.context import Context
from application.ports import RunClosed, Running, StoredSession, WorkflowRunning
from domain.changes import AuditFacts, SessionChange
from domain.errors import SessionLocked, WrongState
from domain.sop import CheckKind, CheckResult, CheckSpec, Sop, SopStatus, SopStep, SopTask
from domain.work_session import CheckSubmission, SessionState, WorkSession
from tests.conftest import shown

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


def confirmed_sop(steps: int = 2) -> Sop:
    sop = Sop(id=uuid4(), family_id=uuid4(), version=1, status=SopStatus.DRAFT,
              title="Lockout", description=None, created_at=T0, updated_at=T0,
              tasks=[SopTask(id=uuid4(), title="Isolate", position=0, steps=[
                  SopStep(id=uuid4(), title=f"Step {i}", instructions=None, position=i,
                          check=CheckSpec(kind=CheckKind.CONFIRM, prompt="done?"))
                  for i in range(steps)])])
    sop.confirm(T0)
    return sop


class FakeSessions:
    """Keeps each session's latest state and its audit entries, by the one rule: a change
    newer than the stored one replaces it; its entries are appended once."""

    def __init__(self, db: FakeDb) -> None:
        self.db, self.written = db, []
        self.out_of_control: dict[UUID, tuple[UUID, list[int]]] = {}  # no charts here

    async def write_change(self, change: SessionChange) -> bool:
        key = (change.state.id, change.version)
        if key in self.db.changes:
            return False
        self.db.changes.add(key)
        st = self.db.states.get(change.state.id)
        if st is not None and st.locked:
            return False
        checks = (st.checks if st else []) + change.checks
        signatures = (st.signatures if st else []) + change.signatures
        if st is None or change.version > st.version:
            self.db.states[change.state.id] = replace(change.state, checks=checks,
                                                      signatures=signatures)
            self.db.runs[change.state.id] = (change.workflow_id, change.run_id)
        else:
            st.checks = checks
        self.db.entries.setdefault(change.state.id, []).extend(change.entries)
        self.written.append(change)
        return True

    async def record_rejection(self, session_id: UUID, facts: AuditFacts,
                               at: datetime) -> None:
        self.db.entries[session_id].append(facts)

    async def load(self, session_id: UUID, *, with_checks: bool = True,
                   for_update: bool = False) -> StoredSession | None:
        st = self.db.states.get(session_id)
        if st is None:
            return None
        workflow_id, run_id = self.db.runs[session_id]
        state = replace(st, checks=list(st.checks) if with_checks else [])
        return StoredSession(WorkSession(plan=self.db.sop.plan(), state=state),
                             workflow_id, run_id)

    async def active_for_worker(self, worker_id: UUID, *,
                                with_checks: bool = True) -> StoredSession | None:
        for st in self.db.states.values():
            if st.worker_id == worker_id and st.status.value in ("in_progress", "paused"):
                return await self.load(st.id, with_checks=with_checks)
        return None

    async def owner(self, session_id: UUID) -> UUID | None:
        st = self.db.states.get(session_id)
        return st.worker_id if st else None


class FakeSops:
    def __init__(self, db: FakeDb) -> None:
        self.db = db

    async def get(self, sop_id: UUID, **_: Any) -> Sop | None:
        return self.db.sop if sop_id == self.db.sop.id else None

    async def plan(self, sop_id: UUID) -> Any:
        return self.db.sop.plan()


class FakeAudit:
    def __init__(self, db: FakeDb) -> None:
        self.db = db

    async def append_to_sop_family(self, family_id: UUID, facts: AuditFacts,
                                   at: datetime) -> None:
        self.db.entries.setdefault(family_id, []).append(facts)


class FakeDb:
    def __init__(self, sop: Sop) -> None:
        self.sop = sop
        self.states: dict[UUID, SessionState] = {}
        self.runs: dict[UUID, tuple[str, str | None]] = {}
        self.entries: dict[UUID, list[AuditFacts]] = {}
        self.changes: set[tuple[UUID, int]] = set()

    @asynccontextmanager
    async def __call__(self, *, read_only: bool = False,
                       snapshot: bool = False) -> AsyncIterator[Any]:
        uow = type("FakeUnitOfWork", (), {})()
        uow.sessions, uow.sops, uow.audit = FakeSessions(self), FakeSops(self), FakeAudit(self)
        yield uow

    async def ping(self) -> None:
        return None


class FakeWorkflows:
    """Each worker's run holds its session and applies the domain rules, as the workflow
    does; `close` ends a run as a completed session's would."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.runs: dict[UUID, tuple[str, WorkSession]] = {}

    def workflow_id(self, worker_id: UUID) -> str:
        return f"work-session-{worker_id}"

    async def start(self, plan: Any, state: SessionState, change: Any) -> str:
        if state.worker_id in self.runs:
            raise WorkflowRunning(await self.running(state.worker_id))
        run_id = str(uuid4())
        self.runs[state.worker_id] = (run_id, WorkSession(plan=plan, state=replace(state)))
        return run_id

    async def running(self, worker_id: UUID) -> Running | None:
        run = self.runs.get(worker_id)
        return Running(run[1].state.id, run[0]) if run else None

    async def wait_closed(self, worker_id: UUID, run_id: str, within: float) -> bool:
        return worker_id not in self.runs

    async def submit_check(self, worker_id: UUID, session_id: UUID, sub: CheckSubmission,
                           facts: AuditFacts) -> SessionChange | None:
        run_id, session = self._held(worker_id, session_id)
        before = session.mark()
        session.add_check(sub, by=worker_id, now=self.clock())
        return SessionChange.of(session.state, before, [facts], self.clock(),
                                self.workflow_id(worker_id), run_id)

    def _held(self, worker_id: UUID, session_id: UUID) -> tuple[str, WorkSession]:
        run = self.runs.get(worker_id)
        if run is None or run[1].state.id != session_id:
            raise RunClosed()
        return run

    def close(self, worker_id: UUID) -> None:
        del self.runs[worker_id]


@pytest.fixture
def world() -> tuple[Context, FakeDb, FakeWorkflows]:
    clock = iter(T0 + timedelta(seconds=i) for i in range(10_000))
    now = lambda: next(clock)  # noqa: E731
    db = FakeDb(confirmed_sop())
    workflows = FakeWorkflows(now)
    return Context(store=db, workflows=workflows, clock=now), db, workflows


async def test_a_session_walked_to_its_end_is_recorded_change_by_change(world) -> None:
    ctx, db, workflows = world
    worker = Actor(uuid4(), Role.WORKER)
    view = shown(await uc.start_session(ctx, worker, db.sop.id, "req-1"))
    sid = UUID(view["id"])
    assert view["status"] == "in_progress" and view["current_step"]["index"] == 0

    for _ in range(2):
        view = shown(await uc.submit_check(ctx, await uc.gate(ctx, worker, sid, "session.work"),
                                     CheckSubmission(check_id=uuid4(),
                                                     step_id=UUID(view["current_step_id"]),
                                                     result=CheckResult.PASSED)))
    assert view["status"] == "completed" and len(view["checks"]) == 2
    assert db.states[sid].status.value == "completed"
    assert [(e.action, e.outcome) for e in db.entries[sid]] == [
        ("session_start", "accepted"), ("check_submitted", "accepted"),
        ("check_submitted", "accepted")]
    assert db.entries[sid][0].request_id == "req-1"


async def test_approval_waits_for_the_run_and_a_locked_session_refuses_with_an_entry(
        world) -> None:
    ctx, db, workflows = world
    worker = Actor(uuid4(), Role.WORKER)
    supervisor = Actor(uuid4(), Role.SUPERVISOR, auth_time=T0)  # signs: freshly signed in
    view = shown(await uc.start_session(ctx, worker, db.sop.id))
    sid = UUID(view["id"])
    work = await uc.gate(ctx, worker, sid, "session.work")
    review = await uc.gate(ctx, supervisor, sid, "session.override")

    # still in progress: the domain refuses first, and the refusal is audited
    with pytest.raises(WrongState):
        shown(await uc.approve_session(ctx, review))
    assert db.entries[sid][-1].outcome == "rejected"

    for _ in range(2):
        view = shown(await uc.submit_check(ctx, work, CheckSubmission(
            check_id=uuid4(), step_id=UUID(view["current_step_id"]),
            result=CheckResult.PASSED)))
    workflows.close(worker.id)  # the run closes after its final write
    approved = shown(await uc.approve_session(ctx, review, "req-approve"))
    assert approved["locked"] is True and db.states[sid].locked
    assert db.entries[sid][-1].action == "session_approve"

    # the run is gone: a late check is judged on the stored copy, refused, and audited
    with pytest.raises(SessionLocked):
        shown(await uc.submit_check(ctx, work, CheckSubmission(
            check_id=uuid4(), step_id=db.sop.tasks[0].steps[0].id,
            result=CheckResult.PASSED)))
    last = db.entries[sid][-1]
    assert (last.action, last.outcome, last.detail["attempted"]) == (
        "modification_rejected", "rejected", "check_submitted")
    assert len(db.states[sid].checks) == 2
