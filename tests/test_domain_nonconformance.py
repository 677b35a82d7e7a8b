"""The nonconformance rules, pure (domain/nonconformance.py, and the session's side of them
in domain/work_session.py): opening by a failed check, once per step; a hold; the lifecycle
and its refusals; deadlines and overdue, once per deadline."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from domain.changes import SessionChange
from domain.errors import InvalidInput, NcWrongState, SessionHeld
from domain.nonconformance import (
    Deadline,
    Deadlines,
    Disposition,
    NcStatus,
    Nonconformance,
    nc_id_for,
    number_text,
)
from domain.signature import Meaning, Signature
from domain.sop import CheckKind, CheckResult, CheckSpec, OnFail, PlanStep, SessionPlan, Severity
from domain.work_session import BEGINNING, CheckSubmission, WorkSession

T0 = datetime(2026, 12, 8, 7, 0, tzinfo=UTC)
WORKER, BOSS = uuid4(), uuid4()


def plan(*on_fail: tuple[OnFail, Severity]) -> SessionPlan:
    task = uuid4()
    return SessionPlan(sop_id=uuid4(), sop_title="Press", sop_version=1, steps=[
        PlanStep(id=uuid4(), title=f"Step {i + 1}", task_id=task, task_title="T",
                 check=CheckSpec(CheckKind.CONFIRM, f"ok {i + 1}", on_fail=f, severity=s))
        for i, (f, s) in enumerate(on_fail)])


def check(s: WorkSession, result: CheckResult, at: datetime = T0,
          deadlines: Deadlines | None = Deadlines()) -> UUID:
    cid = uuid4()
    s.add_check(CheckSubmission(step_id=s.state.current_step_id, check_id=cid, result=result),
                by=WORKER, now=at, escalate_after_failures=3, deadlines=deadlines)
    return cid


def test_a_failed_check_opens_one_nc_per_step_and_the_change_carries_it() -> None:
    s = WorkSession.start(uuid4(), WORKER, plan((OnFail.NONCONFORMANCE, Severity.CRITICAL),
                                                (OnFail.RETRY, Severity.MAJOR)), T0)
    before = s.mark()
    cid = check(s, CheckResult.FAILED)
    [nc] = s.state.nonconformances
    assert (nc.id, nc.check_id, nc.hold, nc.severity) == (nc_id_for(cid), cid, False,
                                                          Severity.CRITICAL)
    assert nc.containment_due == T0 + timedelta(minutes=15)
    assert nc.close_due == T0 + timedelta(days=7)
    assert "Step 1" in nc.description
    change = SessionChange.of(s.state, before, [], T0, "wf", "run")
    assert change.nonconformances == [nc] and change.state.nonconformances == []
    before = s.mark()
    check(s, CheckResult.FAILED)
    check(s, CheckResult.FAILED)  # escalation: still the one open NC
    assert s.state.needs_attention and len(s.state.nonconformances) == 1
    assert SessionChange.of(s.state, before, [], T0, "wf", "run").nonconformances == []
    # contained: no longer open; the next failure opens a new one
    assert s.nonconformance_contained(nc.id) is True
    assert s.nonconformance_contained(nc.id) is False
    check(s, CheckResult.FAILED)
    assert len(s.state.nonconformances) == 1 and s.state.nonconformances[0].id != nc.id
    check(s, CheckResult.PASSED)
    check(s, CheckResult.FAILED)  # a `retry` step opens none
    assert len(s.state.nonconformances) == 1


def test_a_hold_refuses_every_check_until_contained_and_a_dry_run_opens_nothing() -> None:
    s = WorkSession.start(uuid4(), WORKER, plan((OnFail.HOLD, Severity.MAJOR),
                                                (OnFail.RETRY, Severity.MAJOR)), T0)
    copy = s.copy()
    check(copy, CheckResult.FAILED, deadlines=None)  # a validator's try: nothing opened
    assert copy.state.nonconformances == [] and copy.state.held_by is None
    check(s, CheckResult.FAILED)
    held = s.state.held_by
    assert held is not None and held.containment_due == T0 + timedelta(hours=1)
    version = s.state.version
    with pytest.raises(SessionHeld) as e:
        check(s, CheckResult.PASSED)
    assert e.value.extra["nonconformance_id"] == str(held.id)
    assert s.state.version == version and len(s.state.checks) == 1
    s.pause(T0)  # the worker may still pause, resume, cancel
    s.resume(T0)
    s.nonconformance_contained(held.id)
    check(s, CheckResult.PASSED)
    assert s.state.current_step_id == s.plan.steps[1].id


def nc(severity: Severity = Severity.MAJOR) -> Nonconformance:
    return Nonconformance.open_by_hand(uuid4(), uuid4(), uuid4(), None, severity, "oil leak",
                                       BOSS, T0, Deadlines())


def signature(n: Nonconformance, meaning: Meaning = Meaning.APPROVED) -> Signature:
    return Signature(id=uuid4(), session_id=n.session_id, meaning=meaning, step_id=None,
                     signer_id=BOSS, signer_name="Boss", signer_role="supervisor",
                     signed_at=T0 + timedelta(days=1))


def test_lifecycle_open_contained_closed_and_its_refusals() -> None:
    with pytest.raises(InvalidInput):
        Nonconformance.open_by_hand(uuid4(), uuid4(), uuid4(), None, Severity.MINOR, "  ",
                                    BOSS, T0, Deadlines())
    n = nc()
    assert (n.status, n.opened_by, n.owner_id) == (NcStatus.OPEN, BOSS, BOSS)
    with pytest.raises(NcWrongState):
        n.close(Disposition.SCRAP, "scrapped", signature(n))
    with pytest.raises(InvalidInput):
        n.contain(" ", BOSS, T0)
    assert n.status is NcStatus.OPEN
    n.contain("taped off", BOSS, T0 + timedelta(minutes=5))
    assert (n.status, n.contained_by) == (NcStatus.CONTAINED, BOSS)
    with pytest.raises(NcWrongState):
        n.contain("again", BOSS, T0)
    with pytest.raises(InvalidInput):
        n.close(Disposition.SCRAP, "", signature(n))
    with pytest.raises(InvalidInput):
        n.close(Disposition.SCRAP, "scrapped", signature(n, Meaning.PERFORMED))
    n.close(Disposition.SCRAP, "scrapped", signature(n))
    assert (n.status, n.closed_by, n.disposition) == (NcStatus.CLOSED, BOSS, Disposition.SCRAP)
    with pytest.raises(NcWrongState):
        n.close(Disposition.SCRAP, "scrapped", signature(n))
    assert number_text(12) == "NC-000012"


def test_overdue_once_per_missed_deadline_and_for_good() -> None:
    n = nc(Severity.CRITICAL)
    assert n.containment_due == T0 + timedelta(minutes=15)
    assert n.mark_overdue(Deadline.CONTAINMENT, T0 + timedelta(minutes=14)) is False
    assert n.overdue is False
    assert n.mark_overdue(Deadline.CONTAINMENT, T0 + timedelta(minutes=15)) is True
    assert n.mark_overdue(Deadline.CONTAINMENT, T0 + timedelta(hours=5)) is False
    n.contain("late", BOSS, T0 + timedelta(hours=6))
    assert n.overdue is True  # it was late: that stays on the record
    assert n.mark_overdue(Deadline.CLOSURE, T0 + timedelta(days=6)) is False
    assert n.mark_overdue(Deadline.CLOSURE, T0 + timedelta(days=7)) is True
    assert n.overdue_deadlines == [Deadline.CONTAINMENT, Deadline.CLOSURE]
    # done in time: a passing deadline changes nothing
    m = nc()
    m.contain("done", BOSS, T0 + timedelta(minutes=1))
    assert m.mark_overdue(Deadline.CONTAINMENT, T0 + timedelta(hours=2)) is False
    m.close(Disposition.USE_AS_IS, "fine", signature(m))
    assert m.mark_overdue(Deadline.CLOSURE, T0 + timedelta(days=8)) is False
    assert m.overdue is False
    # done late, before any timer marked it: missed all the same
    late = nc(Severity.CRITICAL)
    late.contain("late", BOSS, T0 + timedelta(minutes=20))
    assert late.missed(Deadline.CONTAINMENT, T0 + timedelta(minutes=20))
    assert late.mark_overdue(Deadline.CONTAINMENT, T0 + timedelta(minutes=20)) is True
    assert late.missed(Deadline.CLOSURE, T0 + timedelta(minutes=20)) is False  # not due yet
    late.close(Disposition.SCRAP, "scrapped",
               replace(signature(late), signed_at=T0 + timedelta(days=9)))
    assert late.mark_overdue(Deadline.CLOSURE, T0 + timedelta(days=9)) is True
    assert late.overdue_deadlines == [Deadline.CONTAINMENT, Deadline.CLOSURE]


def test_beginning_is_before_any_version() -> None:  # the opened_in rule relies on it
    assert BEGINNING.version < 0
