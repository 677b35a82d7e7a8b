"""Unit tests of the SOP catalog's domain rules (domain/sop.py): pure, no servers."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest

from domain.errors import Conflict, InvalidInput, SopNotEditable, SopNotStartable
from domain.sop import (
    CheckKind,
    CheckResult,
    CheckSpec,
    Sop,
    SopStatus,
    SopStep,
    SopTask,
)

T0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)

PASSED, FAILED = CheckResult.PASSED, CheckResult.FAILED


# ---- builders ------------------------------------------------------------------------------
def confirm(prompt: str = "Press has stopped") -> CheckSpec:
    return CheckSpec(kind=CheckKind.CONFIRM, prompt=prompt)


def measurement(min: float | None = 0, max: float | None = 0.5, unit: str | None = "V"
                ) -> CheckSpec:
    return CheckSpec(kind=CheckKind.MEASUREMENT, prompt="Voltage at terminal A", unit=unit,
                     min=min, max=max)


def step(title: str, position: int, check: CheckSpec | None = None,
         instructions: str | None = None) -> SopStep:
    return SopStep(id=uuid4(), title=title, check=check or confirm(), position=position,
                   instructions=instructions)


def task(title: str, position: int, *steps: SopStep) -> SopTask:
    return SopTask(id=uuid4(), title=title, position=position, steps=list(steps))


def sop(*tasks: SopTask, status: SopStatus = SopStatus.DRAFT, version: int = 1) -> Sop:
    return Sop(id=uuid4(), family_id=uuid4(), version=version, status=status,
               title="Lockout/Tagout - Press 4",
               description="Isolate all energy sources before maintenance",
               tasks=list(tasks), created_at=T0, updated_at=T0)


def lockout_sop(status: SopStatus = SopStatus.DRAFT) -> Sop:
    """The contract's example SOP."""
    return sop(task("Isolate", 0,
                    step("Stop the press", 0, confirm(), "Press the red stop button"),
                    step("Measure residual voltage", 1, measurement())),
               status=status)


def error_fields(exc: InvalidInput) -> list[str]:
    return [e["field"] for e in exc.extra.get("errors", [])]


# ---- SOP validation ------------------------------------------------------------------------
def test_contract_example_sop_is_valid() -> None:
    lockout_sop().validate()


def test_sop_without_tasks_is_invalid() -> None:
    with pytest.raises(InvalidInput) as exc:
        sop().validate()
    assert error_fields(exc.value) == ["tasks"]


def test_task_without_steps_is_invalid_and_names_the_task() -> None:
    s = sop(task("Isolate", 0, step("Stop", 0)), task("Verify", 1))
    with pytest.raises(InvalidInput) as exc:
        s.validate()
    assert error_fields(exc.value) == ["tasks.1.steps"]
    assert "Verify" in exc.value.detail


def test_invalid_check_is_reported_at_its_step_path() -> None:
    s = sop(task("Isolate", 0, step("Stop", 0),
                 step("Measure", 1, measurement(min=None, max=None))))
    with pytest.raises(InvalidInput) as exc:
        s.validate()
    assert error_fields(exc.value) == ["tasks.0.steps.1.check"]


def test_measurement_needs_min_or_max() -> None:
    with pytest.raises(InvalidInput):
        measurement(min=None, max=None).validate()


@pytest.mark.parametrize(("lo", "hi"), [(0, None), (None, 0.5), (0, 0.5), (0.5, 0.5)])
def test_measurement_with_min_or_max_and_min_not_above_max_is_valid(
        lo: float | None, hi: float | None) -> None:
    measurement(min=lo, max=hi).validate()


def test_measurement_with_min_above_max_is_invalid() -> None:
    with pytest.raises(InvalidInput):
        measurement(min=1, max=0.5).validate()


@pytest.mark.parametrize("spec", [
    CheckSpec(kind=CheckKind.CONFIRM, prompt="p", unit="V"),
    CheckSpec(kind=CheckKind.CONFIRM, prompt="p", min=0),
    CheckSpec(kind=CheckKind.CONFIRM, prompt="p", max=1),
])
def test_confirm_check_takes_no_unit_min_or_max(spec: CheckSpec) -> None:
    with pytest.raises(InvalidInput):
        spec.validate()


# ---- deciding a check's result ------------------------------------------------------------
@pytest.mark.parametrize("result", [PASSED, FAILED])
def test_confirm_check_result_is_what_the_worker_states(result: CheckResult) -> None:
    assert confirm().decide(result, None) is result


def test_confirm_check_without_result_is_invalid() -> None:
    with pytest.raises(InvalidInput) as exc:
        confirm().decide(None, None)
    assert error_fields(exc.value) == ["result"]


def test_confirm_check_with_a_value_is_invalid() -> None:
    with pytest.raises(InvalidInput) as exc:
        confirm().decide(PASSED, 1.0)
    assert error_fields(exc.value) == ["value"]


@pytest.mark.parametrize("value", [0, 0.25, 0.5])
def test_measurement_within_min_max_inclusive_passes(value: float) -> None:
    assert measurement(min=0, max=0.5).decide(None, value) is PASSED


@pytest.mark.parametrize("value", [-0.01, 0.51, 230])
def test_measurement_outside_min_max_fails(value: float) -> None:
    assert measurement(min=0, max=0.5).decide(None, value) is FAILED


def test_measurement_with_only_min_fails_below_and_passes_at_or_above() -> None:
    spec = measurement(min=10, max=None)
    assert spec.decide(None, 9.99) is FAILED
    assert spec.decide(None, 10) is PASSED
    assert spec.decide(None, 1e9) is PASSED


def test_measurement_with_only_max_fails_above_and_passes_at_or_below() -> None:
    spec = measurement(min=None, max=0.5)
    assert spec.decide(None, 0.51) is FAILED
    assert spec.decide(None, 0.5) is PASSED
    assert spec.decide(None, -1e9) is PASSED


def test_measurement_without_value_is_invalid() -> None:
    with pytest.raises(InvalidInput) as exc:
        measurement().decide(PASSED, None)
    assert error_fields(exc.value) == ["value"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_measurement_with_non_finite_value_is_invalid(value: float) -> None:
    with pytest.raises(InvalidInput):
        measurement().decide(None, value)


@pytest.mark.parametrize(("value", "result"), [(0.2, PASSED), (3.0, FAILED)])
def test_result_agreeing_with_measurement_is_accepted(value: float,
                                                      result: CheckResult) -> None:
    assert measurement().decide(result, value) is result


@pytest.mark.parametrize(("value", "result"), [(0.2, FAILED), (3.0, PASSED)])
def test_result_contradicting_measurement_is_invalid(value: float,
                                                     result: CheckResult) -> None:
    with pytest.raises(InvalidInput) as exc:
        measurement().decide(result, value)
    assert error_fields(exc.value) == ["result"]


# ---- lifecycle: draft -> confirmed ---------------------------------------------------------
def test_confirm_turns_a_valid_draft_into_a_confirmed_sop() -> None:
    s = lockout_sop()
    later = T0 + timedelta(hours=1)
    s.confirm(later)
    assert s.status is SopStatus.CONFIRMED
    assert s.confirmed_at == later
    assert s.updated_at == later


@pytest.mark.parametrize("status", [SopStatus.CONFIRMED, SopStatus.ARCHIVED])
def test_confirm_only_drafts(status: SopStatus) -> None:
    s = lockout_sop(status)
    with pytest.raises(SopNotEditable) as exc:
        s.confirm(T0 + timedelta(hours=1))
    assert isinstance(exc.value, Conflict)
    assert exc.value.extra["sop_status"] == status.value
    assert s.status is status
    assert s.updated_at == T0


def test_confirm_refuses_an_invalid_draft_and_leaves_it_a_draft() -> None:
    s = sop(task("Isolate", 0))
    with pytest.raises(InvalidInput):
        s.confirm(T0 + timedelta(hours=1))
    assert s.status is SopStatus.DRAFT
    assert s.confirmed_at is None


def test_only_drafts_are_editable() -> None:
    lockout_sop(SopStatus.DRAFT).ensure_editable()
    for status in (SopStatus.CONFIRMED, SopStatus.ARCHIVED):
        with pytest.raises(SopNotEditable):
            lockout_sop(status).ensure_editable()


def test_confirmed_sop_is_startable() -> None:
    lockout_sop(SopStatus.CONFIRMED).ensure_startable()


@pytest.mark.parametrize("status", [SopStatus.DRAFT, SopStatus.ARCHIVED])
def test_draft_or_archived_sop_is_not_startable(status: SopStatus) -> None:
    with pytest.raises(SopNotStartable) as exc:
        lockout_sop(status).ensure_startable()
    assert isinstance(exc.value, Conflict)
    assert exc.value.extra["sop_status"] == status.value


def test_revisions_are_made_only_from_confirmed_sops() -> None:
    lockout_sop(SopStatus.CONFIRMED).ensure_revisable()
    for status in (SopStatus.DRAFT, SopStatus.ARCHIVED):
        with pytest.raises(SopNotEditable):
            lockout_sop(status).ensure_revisable()


# ---- the session plan ----------------------------------------------------------------------
def shuffled_sop() -> tuple[Sop, list[UUID]]:
    """Tasks and steps listed out of position order; returns the expected walk order."""
    a1, a2 = step("A1", 0), step("A2", 1)
    b1, b2, b3 = step("B1", 0), step("B2", 5), step("B3", 9)
    s = sop(task("B", 2, b3, b1, b2), task("A", 1, a2, a1), status=SopStatus.CONFIRMED)
    return s, [a1.id, a2.id, b1.id, b2.id, b3.id]


def test_plan_orders_tasks_and_steps_by_position() -> None:
    s, expected = shuffled_sop()
    assert [p.id for p in s.plan().steps] == expected


def test_plan_steps_carry_their_task_title_instructions_and_check() -> None:
    s = lockout_sop(SopStatus.CONFIRMED)
    plan = s.plan()
    first, second = plan.steps
    isolate = s.tasks[0]
    assert (first.task_id, first.task_title) == (isolate.id, "Isolate")
    assert first.instructions == "Press the red stop button"
    assert first.check.kind is CheckKind.CONFIRM
    assert second.check == measurement()
    assert (plan.sop_id, plan.sop_title, plan.sop_version) == (s.id, s.title, s.version)


def test_next_step_is_next_step_of_same_task() -> None:
    s, order = shuffled_sop()
    plan = s.plan()
    assert plan.step_after(order[0]).id == order[1]
    assert plan.step_after(order[2]).id == order[3]


def test_next_step_is_first_step_of_next_task() -> None:
    s, order = shuffled_sop()
    nxt = s.plan().step_after(order[1])
    assert nxt is not None
    assert nxt.id == order[2]
    assert nxt.task_title == "B"


def test_last_step_has_no_next_step() -> None:
    s, order = shuffled_sop()
    assert s.plan().step_after(order[-1]) is None


def test_unknown_step_has_no_index_no_step_and_no_next_step() -> None:
    plan = shuffled_sop()[0].plan()
    unknown = uuid4()
    assert plan.index_of(unknown) is None
    assert plan.step(unknown) is None
    assert plan.step_after(unknown) is None


def test_plan_looks_up_steps_by_id() -> None:
    s, order = shuffled_sop()
    plan = s.plan()
    assert plan.index_of(order[3]) == 3
    assert plan.step(order[3]).title == "B2"


def test_plan_is_a_snapshot_unaffected_by_later_sop_changes() -> None:
    s = lockout_sop(SopStatus.DRAFT)
    plan = s.plan()
    s.tasks[0].steps.append(step("Added later", 2))
    s.title = "Renamed"
    assert len(plan.steps) == 2
    assert plan.sop_title == "Lockout/Tagout - Press 4"
