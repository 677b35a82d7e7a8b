"""Unit tests of the WorkSession aggregate (domain/work_session.py): pure, no servers.

The SOP used throughout has two tasks and three steps:
  Isolate: "Stop the press" (confirm), "Measure residual voltage" (measurement 0..0.5 V)
  Verify:  "Try to start" (confirm)
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from api.schemas import SessionOut
from domain.errors import (
    Conflict,
    DomainError,
    InvalidInput,
    SessionLocked,
    StepNotCurrent,
    WrongState,
    error_from_payload,
)
from domain.sop import (
    CheckKind,
    CheckResult,
    CheckSpec,
    SessionPlan,
    Sop,
    SopStatus,
    SopStep,
    SopTask,
)
from domain.work_session import (
    CheckSubmission,
    SessionStatus,
    WorkSession,
)

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
PASSED, FAILED = CheckResult.PASSED, CheckResult.FAILED
WORKER = UUID("00000000-0000-0000-0000-00000000000a")
SUPERVISOR = UUID("00000000-0000-0000-0000-00000000000b")



def iso(t: datetime) -> str:
    """A time as the API writes it (UTC as `Z`)."""
    return t.isoformat().replace("+00:00", "Z")


def shown(s: WorkSession, run_id: str | None = None, workflow_id: str | None = None,
          now: datetime | None = None) -> dict:
    """The session as the API and the workflow's query show it."""
    return SessionOut.of(s, workflow_id=workflow_id, run_id=run_id,
                         now=now).model_dump(mode="json")

def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# ---- builders ------------------------------------------------------------------------------
def lockout_plan() -> SessionPlan:
    stop = SopStep(id=uuid4(), title="Stop the press", position=0,
                   instructions="Press the red stop button",
                   check=CheckSpec(kind=CheckKind.CONFIRM, prompt="Press has stopped"))
    measure = SopStep(id=uuid4(), title="Measure residual voltage", position=1,
                      check=CheckSpec(kind=CheckKind.MEASUREMENT, prompt="Voltage at terminal A",
                                      unit="V", min=0, max=0.5))
    try_start = SopStep(id=uuid4(), title="Try to start", position=0,
                        check=CheckSpec(kind=CheckKind.CONFIRM, prompt="Press does not start"))
    sop = Sop(id=uuid4(), family_id=uuid4(), version=2, status=SopStatus.CONFIRMED,
              title="Lockout/Tagout - Press 4", description=None,
              tasks=[SopTask(id=uuid4(), title="Verify", position=1, steps=[try_start]),
                     SopTask(id=uuid4(), title="Isolate", position=0, steps=[measure, stop])],
              created_at=T0, updated_at=T0)
    return sop.plan()


def started() -> WorkSession:
    return WorkSession.start(uuid4(), WORKER, lockout_plan(), T0)


def step_ids(s: WorkSession) -> list[UUID]:
    return [p.id for p in s.plan.steps]


def sub(step_id: UUID, result: CheckResult | None = None, value: float | None = None,
        check_id: UUID | None = None, **kw: Any) -> CheckSubmission:
    return CheckSubmission(check_id=check_id or uuid4(), step_id=step_id, result=result,
                           value=value, **kw)


def pass_current(s: WorkSession, now: datetime = T0) -> None:
    """Pass the current step with the right kind of check."""
    step = s.plan.step(s.state.current_step_id)
    if step.check.kind is CheckKind.MEASUREMENT:
        s.add_check(sub(step.id, value=0.1), by=WORKER, now=now)
    else:
        s.add_check(sub(step.id, PASSED), by=WORKER, now=now)


def completed() -> WorkSession:
    s = started()
    for _ in s.plan.steps:
        pass_current(s)
    assert s.state.status is SessionStatus.COMPLETED
    return s


def approved() -> WorkSession:
    s = completed()
    s.approve(SUPERVISOR, at(100))
    return s


def cancelled() -> WorkSession:
    s = started()
    s.cancel("machine broke", at(10))
    return s


def paused() -> WorkSession:
    s = started()
    s.pause(at(10))
    return s


# ---- starting ------------------------------------------------------------------------------
def test_new_session_is_in_progress_at_first_step_of_first_task() -> None:
    s = started()
    first = s.plan.steps[0]
    assert s.state.status is SessionStatus.IN_PROGRESS
    assert s.state.current_step_id == first.id
    assert (first.title, first.task_title) == ("Stop the press", "Isolate")
    assert s.state.started_at == T0
    assert s.state.checks == []
    assert s.is_active and not s.is_closed


def test_new_session_is_linked_to_worker_and_sop_version() -> None:
    plan = lockout_plan()
    s = WorkSession.start(uuid4(), WORKER, plan, T0)
    assert s.state.worker_id == WORKER
    assert (s.state.sop_id, s.state.sop_title, s.state.sop_version) == \
        (plan.sop_id, plan.sop_title, 2)


def test_new_session_is_unlocked_unpaused_and_not_needing_attention() -> None:
    st = started().state
    assert not st.locked and st.approved_by is None and st.approved_at is None
    assert st.paused_at is None and st.paused_seconds == 0
    assert st.completed_at is None and st.cancelled_at is None
    assert not st.needs_attention
    assert st.unchecked_step_ids is None


# ---- checks --------------------------------------------------------------------------------
def test_passed_check_advances_to_the_next_step() -> None:
    s = started()
    first, second, _ = step_ids(s)
    check = s.add_check(sub(first, PASSED), by=WORKER, now=at(5))
    assert check is not None and check.result is PASSED
    assert s.state.current_step_id == second
    assert s.state.status is SessionStatus.IN_PROGRESS


def test_next_step_is_first_step_of_next_task() -> None:
    s = started()
    _, measure, try_start = step_ids(s)
    pass_current(s)
    s.add_check(sub(measure, value=0.2), by=WORKER, now=at(5))
    assert s.state.current_step_id == try_start
    assert s.plan.step(try_start).task_title == "Verify"


def test_passed_check_on_last_step_completes_session() -> None:
    s = started()
    pass_current(s)
    pass_current(s)
    last = step_ids(s)[-1]
    s.add_check(sub(last, PASSED), by=WORKER, now=at(60))
    assert s.state.status is SessionStatus.COMPLETED
    assert s.state.completed_at == at(60)
    assert s.state.current_step_id is None
    assert s.is_closed and not s.is_active


def test_completion_by_last_check_lists_no_unchecked_steps() -> None:
    assert completed().state.unchecked_step_ids is None


def test_failed_check_keeps_the_step() -> None:
    s = started()
    first = step_ids(s)[0]
    check = s.add_check(sub(first, FAILED, notes="still spinning"), by=WORKER, now=at(5))
    assert check is not None and check.result is FAILED
    assert s.state.current_step_id == first
    assert s.state.status is SessionStatus.IN_PROGRESS
    assert s.state.checks == [check]


def test_check_records_who_when_and_what() -> None:
    s = started()
    first = step_ids(s)[0]
    cid = uuid4()
    s.add_check(sub(first, PASSED, check_id=cid, notes="ok",
                    evidence_uri="https://evidence.example/1.jpg"), by=WORKER, now=at(7))
    (c,) = s.state.checks
    assert (c.id, c.step_id, c.result, c.value) == (cid, first, PASSED, None)
    assert (c.notes, c.evidence_uri) == ("ok", "https://evidence.example/1.jpg")
    assert (c.checked_at, c.checked_by) == (at(7), WORKER)


def test_measurement_check_result_is_decided_from_the_value() -> None:
    s = started()
    pass_current(s)
    measure = s.state.current_step_id
    failed = s.add_check(sub(measure, value=230.0), by=WORKER, now=at(5))
    assert failed.result is FAILED and failed.value == 230.0
    assert s.state.current_step_id == measure
    ok = s.add_check(sub(measure, value=0.5), by=WORKER, now=at(6))
    assert ok.result is PASSED
    assert s.state.current_step_id != measure


def test_measurement_outside_min_max_fails() -> None:
    s = started()
    pass_current(s)
    measure = s.state.current_step_id
    for value in (-0.1, 0.51):
        assert s.add_check(sub(measure, value=value), by=WORKER, now=at(5)).result is FAILED
    assert s.state.current_step_id == measure


def test_result_contradicting_measurement_is_invalid() -> None:
    s = started()
    pass_current(s)
    measure = s.state.current_step_id
    before = s.copy().state
    with pytest.raises(InvalidInput):
        s.add_check(sub(measure, PASSED, value=9.0), by=WORKER, now=at(5))
    with pytest.raises(InvalidInput):
        s.add_check(sub(measure, FAILED, value=0.1), by=WORKER, now=at(5))
    assert s.state == before


def test_confirm_check_without_result_is_invalid_and_records_nothing() -> None:
    s = started()
    with pytest.raises(InvalidInput):
        s.add_check(sub(step_ids(s)[0]), by=WORKER, now=at(5))
    assert s.state.checks == [] and s.state.version == 0


def test_measurement_check_without_value_is_invalid() -> None:
    s = started()
    pass_current(s)
    with pytest.raises(InvalidInput):
        s.add_check(sub(s.state.current_step_id, PASSED), by=WORKER, now=at(5))


def test_check_for_a_step_other_than_the_current_one_is_refused_with_current_step_id() -> None:
    s = started()
    first, second, _ = step_ids(s)
    with pytest.raises(StepNotCurrent) as exc:
        s.add_check(sub(second, value=0.1), by=WORKER, now=at(5))
    assert isinstance(exc.value, Conflict)
    assert exc.value.extra["current_step_id"] == str(first)
    assert s.state.checks == [] and s.state.current_step_id == first


def test_check_for_an_already_passed_step_is_refused() -> None:
    s = started()
    first = step_ids(s)[0]
    pass_current(s)
    with pytest.raises(StepNotCurrent):
        s.add_check(sub(first, PASSED), by=WORKER, now=at(5))


def test_check_for_a_step_outside_the_sop_is_refused() -> None:
    s = started()
    with pytest.raises(StepNotCurrent):
        s.add_check(sub(uuid4(), PASSED), by=WORKER, now=at(5))


@pytest.mark.parametrize("make", [paused, completed, cancelled])
def test_check_on_a_session_not_in_progress_is_refused(make: Callable[[], WorkSession]) -> None:
    s = make()
    before = s.copy().state
    step = s.state.current_step_id or step_ids(s)[0]
    with pytest.raises(WrongState) as exc:
        s.add_check(sub(step, PASSED), by=WORKER, now=at(50))
    assert exc.value.extra["session_status"] == s.state.status.value
    assert s.state == before


# ---- idempotency ---------------------------------------------------------------------------
def test_repeated_check_id_with_same_content_records_nothing() -> None:
    s = started()
    first = step_ids(s)[0]
    cid = uuid4()
    assert s.add_check(sub(first, FAILED, check_id=cid), by=WORKER, now=at(5)) is not None
    version = s.state.version
    assert s.add_check(sub(first, FAILED, check_id=cid), by=WORKER, now=at(6)) is None
    assert len(s.state.checks) == 1
    assert s.state.version == version
    assert s.state.current_step_id == first


def test_repeated_passed_check_id_does_not_advance_twice() -> None:
    s = started()
    first, second, _ = step_ids(s)
    cid = uuid4()
    s.add_check(sub(first, PASSED, check_id=cid), by=WORKER, now=at(5))
    assert s.add_check(sub(first, PASSED, check_id=cid), by=WORKER, now=at(6)) is None
    assert s.state.current_step_id == second
    assert len(s.state.checks) == 1


def test_repeated_measurement_check_id_without_result_is_the_same_check() -> None:
    s = started()
    pass_current(s)
    measure = s.state.current_step_id
    cid = uuid4()
    s.add_check(sub(measure, value=0.3, check_id=cid), by=WORKER, now=at(5))
    assert s.add_check(sub(measure, value=0.3, check_id=cid), by=WORKER, now=at(6)) is None
    assert s.add_check(sub(measure, PASSED, value=0.3, check_id=cid), by=WORKER,
                       now=at(6)) is None
    assert len(s.state.checks) == 2


def test_repeated_check_id_after_the_session_closed_records_nothing() -> None:
    s = started()
    cids = []
    for _ in s.plan.steps:
        step = s.plan.step(s.state.current_step_id)
        cid = uuid4()
        cids.append((cid, step.id))
        value = 0.1 if step.check.kind is CheckKind.MEASUREMENT else None
        result = None if value is not None else PASSED
        s.add_check(sub(step.id, result, value, check_id=cid), by=WORKER, now=at(5))
    assert s.state.status is SessionStatus.COMPLETED
    version = s.state.version
    last_cid, last_step = cids[-1]
    assert s.add_check(sub(last_step, PASSED, check_id=last_cid), by=WORKER, now=at(9)) is None
    assert s.state.version == version and len(s.state.checks) == 3
    assert s.state.completed_at == at(5)


def test_repeated_check_id_with_other_content_is_invalid() -> None:
    s = started()
    first, second, _ = step_ids(s)
    cid = uuid4()
    s.add_check(sub(first, FAILED, check_id=cid), by=WORKER, now=at(5))
    with pytest.raises(InvalidInput) as other_result:
        s.add_check(sub(first, PASSED, check_id=cid), by=WORKER, now=at(6))
    with pytest.raises(InvalidInput):
        s.add_check(sub(second, FAILED, check_id=cid), by=WORKER, now=at(6))
    assert other_result.value.extra["errors"][0]["field"] == "check_id"
    assert len(s.state.checks) == 1 and s.state.current_step_id == first


def test_repeated_measurement_check_id_with_other_value_is_invalid() -> None:
    s = started()
    pass_current(s)
    measure = s.state.current_step_id
    cid = uuid4()
    s.add_check(sub(measure, value=3.0, check_id=cid), by=WORKER, now=at(5))
    with pytest.raises(InvalidInput):
        s.add_check(sub(measure, value=3.5, check_id=cid), by=WORKER, now=at(6))
    assert [c.value for c in s.state.checks if c.id == cid] == [3.0]
    assert len(s.state.checks) == 2


def test_repeated_check_id_with_only_different_notes_is_the_same_check() -> None:
    s = started()
    first = step_ids(s)[0]
    cid = uuid4()
    s.add_check(sub(first, FAILED, check_id=cid, notes="a"), by=WORKER, now=at(5))
    assert s.add_check(sub(first, FAILED, check_id=cid, notes="b"), by=WORKER,
                       now=at(6)) is None
    assert s.state.checks[0].notes == "a"


# ---- escalation ----------------------------------------------------------------------------
def test_escalate_after_failures_sets_needs_attention() -> None:
    s = started()
    first = step_ids(s)[0]
    for i in range(2):
        s.add_check(sub(first, FAILED), by=WORKER, now=at(i), escalate_after_failures=3)
    assert not s.state.needs_attention
    s.add_check(sub(first, FAILED), by=WORKER, now=at(3), escalate_after_failures=3)
    assert s.state.needs_attention
    assert s.failures_in_a_row(first) == 3


def test_escalation_counts_only_failures_in_a_row_on_the_same_step() -> None:
    s = started()
    first, measure, _ = step_ids(s)
    s.add_check(sub(first, FAILED), by=WORKER, now=at(1), escalate_after_failures=2)
    pass_current(s)
    s.add_check(sub(measure, value=9.0), by=WORKER, now=at(2), escalate_after_failures=2)
    assert not s.state.needs_attention
    assert s.failures_in_a_row(measure) == 1


def test_escalation_is_off_when_threshold_is_zero() -> None:
    s = started()
    first = step_ids(s)[0]
    for i in range(10):
        s.add_check(sub(first, FAILED), by=WORKER, now=at(i))
    assert not s.state.needs_attention


# ---- manual completion ---------------------------------------------------------------------
def test_manual_completion_lists_unchecked_steps() -> None:
    s = started()
    first, measure, try_start = step_ids(s)
    pass_current(s)
    s.add_check(sub(measure, value=9.0), by=WORKER, now=at(5))  # failed: still unchecked
    s.complete(at(30), manual=True)
    assert s.state.status is SessionStatus.COMPLETED
    assert s.state.completed_at == at(30)
    assert s.state.current_step_id is None
    assert s.state.unchecked_step_ids == [measure, try_start]


def test_manual_completion_with_nothing_passed_lists_every_step() -> None:
    s = started()
    s.complete(at(30), manual=True)
    assert s.state.unchecked_step_ids == step_ids(s)


@pytest.mark.parametrize("make", [paused, completed, cancelled])
def test_manual_completion_only_when_in_progress(make: Callable[[], WorkSession]) -> None:
    s = make()
    before = s.copy().state
    with pytest.raises(WrongState):
        s.complete(at(99), manual=True)
    assert s.state == before


# ---- pause / resume ------------------------------------------------------------------------
def test_pause_keeps_the_current_step_and_records_when() -> None:
    s = started()
    pass_current(s)
    step = s.state.current_step_id
    s.pause(at(10), reason="break")
    assert s.state.status is SessionStatus.PAUSED
    assert s.state.paused_at == at(10)
    assert s.state.paused_reason == "break"
    assert s.state.current_step_id == step
    assert s.is_active


def test_resume_returns_to_in_progress_and_clears_paused_at() -> None:
    s = paused()
    step = s.state.current_step_id
    s.resume(at(70))
    assert s.state.status is SessionStatus.IN_PROGRESS
    assert s.state.paused_at is None and s.state.paused_reason is None
    assert s.state.current_step_id == step
    assert s.state.paused_seconds == 60


def test_pause_and_resume_accumulate_paused_seconds() -> None:
    s = started()
    s.pause(at(10))
    s.resume(at(40))
    s.pause(at(100))
    s.resume(at(102.5))
    assert s.state.paused_seconds == pytest.approx(32.5)


def test_resume_with_clock_behind_pause_adds_no_negative_time() -> None:
    s = paused()
    s.resume(at(5))
    assert s.state.paused_seconds == 0


def test_pause_only_when_in_progress() -> None:
    for make in (paused, completed, cancelled):
        with pytest.raises(WrongState):
            make().pause(at(99))


def test_resume_only_when_paused() -> None:
    for make in (started, completed, cancelled):
        with pytest.raises(WrongState):
            make().resume(at(99))


def test_checks_continue_after_resume() -> None:
    s = paused()
    s.resume(at(20))
    first, second, _ = step_ids(s)
    s.add_check(sub(first, PASSED), by=WORKER, now=at(21))
    assert s.state.current_step_id == second


# ---- cancel --------------------------------------------------------------------------------
def test_cancel_from_in_progress() -> None:
    s = started()
    s.cancel("wrong press", at(10))
    assert s.state.status is SessionStatus.CANCELLED
    assert s.state.cancelled_at == at(10)
    assert s.state.cancel_reason == "wrong press"
    assert s.state.current_step_id is None
    assert s.state.completed_at is None
    assert s.is_closed


def test_cancel_from_paused_counts_the_pause() -> None:
    s = paused()  # paused at 10
    s.cancel("shift over", at(70))
    assert s.state.status is SessionStatus.CANCELLED
    assert s.state.cancelled_at == at(70)
    assert s.state.paused_at is None
    assert s.state.paused_seconds == 60


@pytest.mark.parametrize("make", [completed, cancelled])
def test_cancel_only_active_sessions(make: Callable[[], WorkSession]) -> None:
    s = make()
    before = s.copy().state
    with pytest.raises(WrongState):
        s.cancel("again", at(99))
    assert s.state == before


# ---- approve -------------------------------------------------------------------------------
def test_approve_locks_a_completed_session() -> None:
    s = completed()
    s.approve(SUPERVISOR, at(100))
    assert s.state.locked
    assert s.state.approved_by == SUPERVISOR
    assert s.state.approved_at == at(100)
    assert s.state.status is SessionStatus.COMPLETED


@pytest.mark.parametrize("make", [started, paused, cancelled])
def test_approve_only_when_completed(make: Callable[[], WorkSession]) -> None:
    s = make()
    with pytest.raises(WrongState):
        s.approve(SUPERVISOR, at(100))
    assert not s.state.locked and s.state.approved_by is None


def test_approving_twice_is_refused_as_locked() -> None:
    s = approved()
    with pytest.raises(SessionLocked):
        s.approve(uuid4(), at(200))
    assert s.state.approved_at == at(100) and s.state.approved_by == SUPERVISOR


# ---- locked sessions -----------------------------------------------------------------------
LOCKED_MODIFICATIONS: dict[str, Callable[[WorkSession], Any]] = {
    "check": lambda s: s.add_check(sub(s.plan.steps[0].id, PASSED), by=WORKER, now=at(200)),
    "complete": lambda s: s.complete(at(200), manual=True),
    "pause": lambda s: s.pause(at(200)),
    "resume": lambda s: s.resume(at(200)),
    "cancel": lambda s: s.cancel("nope", at(200)),
    "reopen": lambda s: s.reopen(at(200)),
    "reopen_at_step": lambda s: s.reopen(at(200), s.plan.steps[0].id),
    "approve": lambda s: s.approve(SUPERVISOR, at(200)),
}


@pytest.mark.parametrize("action", LOCKED_MODIFICATIONS.values(), ids=LOCKED_MODIFICATIONS)
def test_locked_session_refuses_every_modification(action: Callable[[WorkSession], Any]) -> None:
    s = approved()
    before = s.copy().state
    with pytest.raises(SessionLocked) as exc:
        action(s)
    assert isinstance(exc.value, Conflict)
    assert s.state == before


# ---- reopen --------------------------------------------------------------------------------
def test_reopen_defaults_to_the_first_step_without_a_passed_check() -> None:
    s = started()
    first, measure, try_start = step_ids(s)
    pass_current(s)
    s.add_check(sub(measure, value=7.0), by=WORKER, now=at(5))
    s.complete(at(10), manual=True)
    s.reopen(at(20))
    assert s.state.status is SessionStatus.IN_PROGRESS
    assert s.state.current_step_id == measure


def test_reopen_clears_completed_at_and_unchecked_steps_and_keeps_checks() -> None:
    s = started()
    pass_current(s)
    s.complete(at(10), manual=True)
    checks = list(s.state.checks)
    s.reopen(at(20))
    assert s.state.completed_at is None
    assert s.state.unchecked_step_ids is None
    assert s.state.checks == checks
    assert s.is_active


def test_reopen_cancelled_session_clears_cancelled_at_and_reason() -> None:
    s = cancelled()
    s.reopen(at(20))
    assert s.state.status is SessionStatus.IN_PROGRESS
    assert s.state.cancelled_at is None and s.state.cancel_reason is None
    assert s.state.current_step_id == step_ids(s)[0]


def test_reopen_of_fully_passed_session_goes_to_the_last_step() -> None:
    s = completed()
    s.reopen(at(20))
    assert s.state.current_step_id == step_ids(s)[-1]
    assert s.state.completed_at is None


def test_reopen_at_a_chosen_step() -> None:
    s = completed()
    first = step_ids(s)[0]
    s.reopen(at(20), step_id=first)
    assert s.state.current_step_id == first
    s.add_check(sub(first, PASSED), by=WORKER, now=at(21))
    assert s.state.current_step_id == step_ids(s)[1]


def test_reopen_with_unknown_step_is_invalid() -> None:
    s = completed()
    before = s.copy().state
    with pytest.raises(InvalidInput) as exc:
        s.reopen(at(20), step_id=uuid4())
    assert exc.value.extra["errors"][0]["field"] == "step_id"
    assert s.state == before


@pytest.mark.parametrize("make", [started, paused])
def test_reopen_only_closed_sessions(make: Callable[[], WorkSession]) -> None:
    s = make()
    before = s.copy().state
    with pytest.raises(WrongState):
        s.reopen(at(20))
    assert s.state == before


def test_reopened_session_can_complete_again() -> None:
    s = completed()
    s.reopen(at(20), step_id=step_ids(s)[-1])
    pass_current(s, at(30))
    assert s.state.status is SessionStatus.COMPLETED
    assert s.state.completed_at == at(30)


# ---- version -------------------------------------------------------------------------------
CHANGES: dict[str, tuple[Callable[[], WorkSession], Callable[[WorkSession], Any]]] = {
    "passed_check": (started, lambda s: pass_current(s)),
    "failed_check": (started, lambda s: s.add_check(sub(s.state.current_step_id, FAILED),
                                                    by=WORKER, now=at(1))),
    "last_passed_check": (lambda: _at_last_step(), lambda s: pass_current(s)),
    "complete": (started, lambda s: s.complete(at(1), manual=True)),
    "pause": (started, lambda s: s.pause(at(1))),
    "resume": (paused, lambda s: s.resume(at(20))),
    "cancel": (started, lambda s: s.cancel("r", at(1))),
    "cancel_paused": (paused, lambda s: s.cancel("r", at(20))),
    "approve": (completed, lambda s: s.approve(SUPERVISOR, at(1))),
    "reopen": (completed, lambda s: s.reopen(at(1))),
}


def _at_last_step() -> WorkSession:
    s = started()
    pass_current(s)
    pass_current(s)
    return s


@pytest.mark.parametrize(("make", "change"), CHANGES.values(), ids=CHANGES)
def test_version_increments_on_every_change(make: Callable[[], WorkSession],
                                            change: Callable[[WorkSession], Any]) -> None:
    s = make()
    version = s.state.version
    change(s)
    assert s.state.version > version


def test_version_starts_at_zero_and_counts_each_change() -> None:
    s = started()
    assert s.state.version == 0
    s.add_check(sub(step_ids(s)[0], FAILED), by=WORKER, now=at(1))
    assert s.state.version == 1
    s.pause(at(2))
    assert s.state.version == 2


def test_refused_or_repeated_request_leaves_version_unchanged() -> None:
    s = started()
    first = step_ids(s)[0]
    cid = uuid4()
    s.add_check(sub(first, FAILED, check_id=cid), by=WORKER, now=at(1))
    version = s.state.version
    s.add_check(sub(first, FAILED, check_id=cid), by=WORKER, now=at(2))
    with pytest.raises(WrongState):
        s.resume(at(3))
    with pytest.raises(StepNotCurrent):
        s.add_check(sub(step_ids(s)[1], value=0.1), by=WORKER, now=at(3))
    with pytest.raises(InvalidInput):
        s.add_check(sub(first), by=WORKER, now=at(3))
    assert s.state.version == version


# ---- copy ----------------------------------------------------------------------------------
def test_copy_is_independent_of_the_original() -> None:
    s = started()
    c = s.copy()
    pass_current(c)
    c.pause(at(5))
    assert s.state.checks == [] and s.state.status is SessionStatus.IN_PROGRESS
    assert s.state.version == 0
    assert c.plan is s.plan


# ---- view ----------------------------------------------------------------------------------
CONTRACT_SESSION_KEYS = {
    "id", "status", "sop", "worker_id", "current_step_id", "current_step", "next_step",
    "checks", "started_at", "paused_at", "completed_at", "cancelled_at", "locked",
    "approved_by", "approved_at", "workflow_id", "run_id", "unchecked_step_ids",
    "paused_seconds",
}
CONTRACT_CURRENT_STEP_KEYS = {"id", "title", "instructions", "check", "task", "index", "total"}
CONTRACT_CHECK_KEYS = {"id", "step_id", "result", "value", "notes", "evidence_uri",
                       "checked_at", "checked_by"}


def test_view_shape_matches_the_contracts_session_shape_keys() -> None:
    s = started()
    s.add_check(sub(step_ids(s)[0], FAILED, notes="n"), by=WORKER, now=at(1))
    v = shown(s, run_id="run-1", workflow_id=f"work-session-{WORKER}")
    assert CONTRACT_SESSION_KEYS <= set(v)
    assert set(v["sop"]) == {"id", "title", "version"}
    assert CONTRACT_CURRENT_STEP_KEYS <= set(v["current_step"])
    assert set(v["current_step"]["task"]) == {"id", "title"}
    assert set(v["next_step"]) == {"id", "title"}
    assert CONTRACT_CHECK_KEYS <= set(v["checks"][0])
    assert (v["workflow_id"], v["run_id"]) == (f"work-session-{WORKER}", "run-1")


def test_view_of_a_new_session_names_first_and_next_step() -> None:
    s = started()
    first, second, _ = s.plan.steps
    v = shown(s)
    assert v["id"] == str(s.state.id)
    assert v["status"] == "in_progress"
    assert v["sop"] == {"id": str(s.state.sop_id), "title": "Lockout/Tagout - Press 4",
                        "version": 2}
    assert v["worker_id"] == str(WORKER)
    assert v["current_step_id"] == str(first.id)
    assert v["current_step"] == {
        "id": str(first.id), "title": "Stop the press",
        "instructions": "Press the red stop button",
        "check": {"kind": "confirm", "prompt": "Press has stopped", "unit": None, "min": None,
                  "max": None, "evidence": "optional", "verify": False, "on_fail": "retry",
                  "severity": "major"},
        "task": {"id": str(first.task_id), "title": "Isolate"},
        "index": 0, "total": 3,
    }
    assert v["next_step"] == {"id": str(second.id), "title": "Measure residual voltage"}
    assert v["checks"] == []
    assert v["locked"] is False and v["approved_by"] is None and v["approved_at"] is None
    assert v["paused_seconds"] == 0


def test_view_of_measurement_step_shows_unit_min_max() -> None:
    s = started()
    pass_current(s)
    check = shown(s)["current_step"]["check"]
    assert check == {"kind": "measurement", "prompt": "Voltage at terminal A", "unit": "V",
                     "min": 0, "max": 0.5, "evidence": "optional", "verify": False,
                     "on_fail": "retry", "severity": "major"}


def test_view_of_last_step_has_no_next_step() -> None:
    v = shown(_at_last_step())
    assert v["current_step"]["index"] == 2
    assert v["current_step"]["task"]["title"] == "Verify"
    assert v["next_step"] is None


def test_view_of_completed_session_has_no_current_or_next_step() -> None:
    v = shown(completed())
    assert v["status"] == "completed"
    assert v["current_step_id"] is None
    assert v["current_step"] is None and v["next_step"] is None
    assert len(v["checks"]) == 3
    assert v["completed_at"] == iso(T0)


def test_view_timestamps_are_iso_8601_with_time_zone() -> None:
    s = started()
    s.add_check(sub(step_ids(s)[0], FAILED), by=WORKER, now=at(1))
    s.pause(at(2))
    v = shown(s)
    for ts in (v["started_at"], v["paused_at"], v["checks"][0]["checked_at"]):
        parsed = datetime.fromisoformat(ts)
        assert parsed.tzinfo is not None
    assert v["paused_at"] == "2024-05-01T08:00:02Z"


def test_view_renders_checks_as_json_values() -> None:
    s = started()
    pass_current(s)
    s.add_check(sub(s.state.current_step_id, value=3.0, evidence_uri="s3://b/k"),
                by=WORKER, now=at(1))
    c = shown(s)["checks"][1]
    assert c["step_id"] == str(step_ids(s)[1])
    assert (c["result"], c["value"], c["evidence_uri"]) == ("failed", 3.0, "s3://b/k")
    assert c["checked_by"] == str(WORKER)


def test_view_of_manually_completed_session_lists_unchecked_step_ids_as_strings() -> None:
    s = started()
    s.complete(at(5), manual=True)
    assert shown(s)["unchecked_step_ids"] == [str(i) for i in step_ids(s)]


def test_view_of_approved_session_shows_lock_and_approver() -> None:
    v = shown(approved())
    assert v["locked"] is True
    assert v["approved_by"] == str(SUPERVISOR)
    assert v["approved_at"] == iso(at(100))


def test_view_of_resumed_session_totals_paused_seconds() -> None:
    s = paused()
    s.resume(at(25.5))
    v = shown(s)
    assert v["paused_seconds"] == 15.5
    assert v["paused_at"] is None


# ---- errors cross the Temporal boundary ----------------------------------------------------
@pytest.mark.parametrize("error", [
    StepNotCurrent("checks are accepted only for the current step", current_step_id="x"),
    WrongState("cannot pause", status="completed"),
    SessionLocked("locked"),
    InvalidInput("bad", errors=[{"field": "value", "message": "required"}]),
])
def test_domain_error_survives_a_round_trip_through_its_payload(error: DomainError) -> None:
    back = error_from_payload(error.code, error.payload())
    assert type(back) is type(error)
    assert back.detail == error.detail and back.extra == error.extra


def test_unknown_error_code_comes_back_as_a_domain_error() -> None:
    back = error_from_payload("no-such-code", {"detail": "boom"})
    assert type(back) is DomainError and back.detail == "boom"


# ---- error precedence (CONTRACT.md "Error precedence": 422 before 409) ------------------------
def test_invalid_check_on_a_paused_session_is_invalid_before_wrong_state() -> None:
    s = paused()
    with pytest.raises(InvalidInput):
        s.add_check(sub(s.state.current_step_id), by=WORKER, now=at(20))


def test_invalid_check_on_a_locked_session_is_invalid_before_locked() -> None:
    s = approved()
    with pytest.raises(InvalidInput):
        s.add_check(sub(s.plan.steps[1].id, PASSED, value=99.0), by=WORKER, now=at(200))


def test_reopen_locked_session_with_unknown_step_is_invalid_before_locked() -> None:
    s = approved()
    with pytest.raises(InvalidInput):
        s.reopen(at(200), step_id=uuid4())


# ---- step times (contract v1.1) ------------------------------------------------------------
def times(s: WorkSession, now: datetime | None = None) -> list[tuple[Any, ...]]:
    return [(UUID(t["step_id"]), t["started_at"], t["passed_at"], t["active_seconds"],
             t["attempts"]) for t in shown(s, now=now)["step_times"]]


def test_step_times_count_time_on_each_step_without_the_pauses():
    s = started()
    stop, volt, try_start = step_ids(s)
    assert times(s, at(7)) == [(stop, iso(at(0)), None, 7.0, 0)]
    s.add_check(sub(stop, FAILED), WORKER, at(10))
    s.pause(at(15))
    assert times(s, at(100)) == [(stop, iso(at(0)), None, 15.0, 1)]  # paused since 15
    s.resume(at(115))
    s.add_check(sub(stop, PASSED), WORKER, at(130))  # 130 s on it, 100 of them paused
    s.add_check(sub(volt, value=0.2), WORKER, at(142))
    assert times(s, at(150)) == [
        (stop, iso(at(0)), iso(at(130)), 30.0, 2),
        (volt, iso(at(130)), iso(at(142)), 12.0, 1),
        (try_start, iso(at(142)), None, 8.0, 0)]
    s.add_check(sub(try_start, PASSED), WORKER, at(160))
    assert s.state.status is SessionStatus.COMPLETED
    assert [t[3] for t in times(s, at(9999))] == [30.0, 12.0, 18.0]  # closed: time stops


def test_a_cancelled_or_manually_completed_session_stops_the_clock_of_its_step():
    s = started()
    s.pause(at(10))
    s.cancel("shift ended", at(70))
    assert times(s, at(500))[0][2:] == (None, 10.0, 0)
    s = started()
    s.complete(at(25), manual=True)
    assert times(s, at(500))[0][2:] == (None, 25.0, 0)


def test_reopening_at_a_step_starts_a_new_stretch_on_it():
    s = started()
    stop, volt, try_start = step_ids(s)
    s.add_check(sub(stop, PASSED), WORKER, at(20))
    s.cancel("wrong press", at(50))
    s.reopen(at(1000), stop)
    assert times(s, at(1005)) == [(stop, iso(at(0)), None, 25.0, 1),
                                  (volt, iso(at(20)), None, 30.0, 0)]
    s.add_check(sub(stop, PASSED), WORKER, at(1010))
    assert times(s, at(1010))[0] == (stop, iso(at(0)), iso(at(1010)), 30.0, 2)


def test_a_change_carries_only_the_step_times_it_changed():
    from domain.changes import SessionChange

    s = started()
    stop, volt, try_start = step_ids(s)
    before = s.mark()
    s.add_check(sub(stop, FAILED), WORKER, at(5))
    change = SessionChange.of(s.state, before, [], at(5), "wf", "run")
    assert [(t.step_id, t.attempts, t.failed_checks, t.first_passed)
            for t in change.step_times] == [(stop, 1, 1, False)]
    before = s.mark()
    s.add_check(sub(stop, PASSED), WORKER, at(9))
    change = SessionChange.of(s.state, before, [], at(9), "wf", "run")
    assert [t.step_id for t in change.step_times] == [stop, volt]
    assert change.state.step_times == [] and change.state.checks == []
    before = s.mark()
    s.pause(at(12))  # the formula reads the session's pause: no step time changes
    assert SessionChange.of(s.state, before, [], at(12), "wf", "run").step_times == []
