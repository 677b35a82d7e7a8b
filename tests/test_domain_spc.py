"""The SPC statistics (domain/spc.py) against known answers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from domain.sop import CheckKind, CheckSpec, PlanStep, SessionPlan
from domain.spc import BASELINE_N, D2, Baseline, ChartState, chart_id, rules, rules_at

T0 = datetime(2026, 12, 1, tzinfo=UTC)

# Published worked example: D. C. Montgomery and G. C. Runger, "Applied Statistics and
# Probability for Engineers", 3rd ed. (Wiley, 2003), section 16-6 "Control charts for
# individual measurements", Table 16-3 "Chemical process concentration measurements"
# (p. 617), with its printed figures: x-bar = 99.1, mr-bar = 2.59, UCL = 105.99,
# CL = 99.1, LCL = 92.21 (the book rounds x-bar and mr-bar before it computes the limits,
# hence the tolerance of 0.01), and the moving-range chart's UCL = 3.267 * 2.59 = 8.46.
CONCENTRATION = [102.0, 94.8, 98.3, 98.4, 102.0, 98.5, 99.0, 97.7, 100.0, 98.1,
                 101.3, 98.7, 101.1, 98.4, 97.0, 96.7, 100.3, 101.4, 97.2, 101.0]


def test_the_published_individuals_chart_of_montgomery_and_runger() -> None:
    b = Baseline.of(CONCENTRATION)
    assert b.n == 20
    assert round(b.mean, 1) == 99.1
    assert round(b.mr_bar, 2) == 2.59
    assert b.ucl == pytest.approx(105.99, abs=0.01)
    assert b.lcl == pytest.approx(92.21, abs=0.01)
    assert round(b.mr_ucl, 2) == 8.46
    assert b.sigma == pytest.approx(b.mr_bar / 1.128)
    # "There is no indication of an out-of-control condition."
    assert rules(CONCENTRATION, b) == [[]] * 20


UNIT = Baseline(n=25, mean=0.0, mr_bar=D2)  # mean 0, sigma exactly 1


@pytest.mark.parametrize(("rule", "breaks", "keeps"), [
    (1, [0.1, -0.2, 3.2], [0.1, -0.2, 2.9]),
    # two of the last three beyond 2 sigma on one side (the last one among them)
    (2, [0.0, 2.5, 0.1, 2.4], [2.5, 0.0, 0.1, 2.4]),
    (2, [-2.1, -2.6], [2.1, -2.6]),  # ... on the same side
    # four of the last five beyond 1 sigma on one side
    (3, [1.5, 1.2, 0.2, 1.1, 1.6], [1.5, 0.2, 1.2, 0.3, 1.6]),
    (3, [-1.5, -1.2, -1.1, -1.6], [-1.5, -1.2, 1.1, -1.6]),
    # eight in a row on one side of the mean
    (4, [0.3] * 8, [-0.3] + [0.3] * 7),
    (4, [-0.1, -0.4, -0.2, -0.9, -0.5, -0.3, -0.2, -0.6],
     [-0.1, -0.4, -0.2, -0.9, 0.0, -0.3, -0.2, -0.6]),  # a point on the mean breaks the run
])
def test_each_rule_fires_on_a_series_built_to_break_it_and_not_on_its_near_miss(
        rule: int, breaks: list[float], keeps: list[float]) -> None:
    assert rule in rules_at(breaks, UNIT)
    assert rule not in rules_at(keeps, UNIT)
    assert rules_at(keeps, UNIT) == []


def test_rules_are_judged_per_point_and_only_the_ones_broken() -> None:
    series = [0.2, -0.3, 3.4, 0.1, 0.0, 2.2, 0.0, 2.3, -0.1]
    assert rules(series, UNIT) == [[], [], [1], [], [], [], [], [2], []]
    # rule 1 and rule 2 at one point (it is beyond 3 sigma, and the second beyond 2)
    assert rules_at([2.5, 0.0, 3.5], UNIT) == [1, 2]
    # a window's first points are judged with the values before it
    assert rules([0.3], UNIT, before=[0.3] * 7) == [[4]]
    assert rules([0.3], UNIT) == [[]]


def test_no_limits_and_no_rules_below_ten_values() -> None:
    nine = Baseline.of([1.0, 9.0] * 4 + [1.0])
    assert not nine.has_limits
    assert (nine.sigma, nine.ucl, nine.lcl, nine.mr_ucl) == (None, None, None, None)
    assert nine.capability(0, 10) == (None, None)
    assert rules_at([50.0], nine) == []
    state = ChartState()
    for i in range(9):
        state, broken = state.add(1000.0 * (i % 2), T0)
        assert broken == []
    assert Baseline.of([1.0, 2.0] * 5).has_limits


def test_cp_and_cpk_against_hand_computed_values() -> None:
    b = Baseline(n=25, mean=10.0, mr_bar=0.5 * D2)  # sigma 0.5
    # Cp = (13 - 8) / (6 * 0.5) = 1.6667; Cpk = min(13 - 10, 10 - 8) / (3 * 0.5) = 1.3333
    cp, cpk = b.capability(8.0, 13.0)
    assert cp == pytest.approx(5 / 3) and cpk == pytest.approx(4 / 3)
    # one-sided specifications: no Cp; Cpk from the one limit
    assert b.capability(None, 13.0) == (None, pytest.approx(2.0))
    assert b.capability(8.0, None) == (None, pytest.approx(4 / 3))
    # the mean outside the spec: a negative Cpk
    assert b.capability(11.0, 13.0)[1] == pytest.approx(-2 / 3)


def test_the_chart_keeps_its_first_25_values_as_baseline_one_value_at_a_time() -> None:
    values = [5.0 + ((i * 7) % 11) / 10 for i in range(40)]
    state = ChartState()
    for i, v in enumerate(values):
        state, _ = state.add(v, T0 + timedelta(minutes=i))
    batch = Baseline.of(values[:BASELINE_N])
    assert state.n == 40 and state.recent == tuple(values[-8:])
    assert state.baseline.n == BASELINE_N
    assert state.baseline.mean == pytest.approx(batch.mean, abs=1e-12)
    assert state.baseline.mr_bar == pytest.approx(batch.mr_bar, abs=1e-12)
    assert (state.baseline.first_at, state.baseline.last_at) == (T0, T0 + timedelta(minutes=24))
    # a supervisor's baseline stays as set
    manual = Baseline.of(values[:12], T0, T0, manual=True)
    state, _ = ChartState(baseline=manual).add(99.0, T0)
    assert state.baseline == manual


def test_a_new_value_is_judged_with_the_eight_values_kept() -> None:
    state = ChartState(n=30, recent=(0.0,) * 8, baseline=UNIT)
    for _ in range(7):
        state, broken = state.add(0.4, T0)
        assert broken == []
    state, broken = state.add(0.4, T0)
    assert broken == [4]
    state, broken = state.add(-3.5, T0)
    assert broken == [1]


def _plan(min_: float | None, max_: float | None, *, ids: list[uuid.UUID] | None = None
          ) -> SessionPlan:
    ids = ids or [uuid.uuid4() for _ in range(3)]
    spec = CheckSpec(CheckKind.MEASUREMENT, "Torque", unit="Nm", min=min_, max=max_)
    task = uuid.uuid4()
    return SessionPlan(uuid.uuid4(), "SOP", 1, [
        PlanStep(ids[0], "Measure", spec, task, "Task 1"),
        PlanStep(ids[1], "Measure", spec, task, "Task 1"),  # the same title twice
        PlanStep(ids[2], "Confirm", CheckSpec(CheckKind.CONFIRM, "Done?"), task, "Task 1"),
    ])


def test_a_chart_is_one_per_family_and_step_kept_by_a_copy_new_with_new_limits() -> None:
    family = uuid.uuid4()
    v1, v2, v3 = _plan(1, 2), _plan(1.0, 2.0), _plan(1.0, 2.5)
    first = chart_id(family, v1, v1.steps[0].id)
    assert first is not None
    assert chart_id(family, v2, v2.steps[0].id) == first  # a revision's copy of the step
    assert chart_id(family, v1, v1.steps[1].id) not in (first, None)  # its twin: another
    assert chart_id(family, v3, v3.steps[0].id) != first  # a changed max: a new chart
    assert chart_id(uuid.uuid4(), v1, v1.steps[0].id) != first  # another family
    assert chart_id(family, v1, v1.steps[2].id) is None  # not a measurement
    assert chart_id(family, v1, uuid.uuid4()) is None
