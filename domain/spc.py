"""Statistical process control of measurement steps (CONTRACT.md v1.2): an individuals and
moving-range (I-MR) chart per SOP family and step, its limits from a baseline, Cp/Cpk from
the step's `min`/`max`, and the four Western Electric rules, judged point by point.

Pure: values and times in, figures out. The write path keeps a chart's `ChartState` (its
baseline's figures and its last `RUN` values) so that judging a new value is O(1)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from uuid import UUID

from domain.sop import CheckKind, SessionPlan

D2 = 1.128  # d2(2): sigma = MR-bar / d2
D4 = 3.267  # D4(2): the moving-range chart's upper limit = D4 * MR-bar
BASELINE_N = 25  # values in the automatic baseline (the chart's first)
MIN_N = 10  # fewer values than this: no limits
RUN = 8  # the longest pattern a rule looks at (rule 4), so the values a chart keeps


@dataclass(frozen=True)
class Baseline:
    """The values a chart's limits come from: how many, their mean and their mean moving
    range, when the first and last of them were taken, and whether a supervisor chose them
    (`manual`) or they are the chart's first values."""

    n: int = 0
    mean: float | None = None
    mr_bar: float | None = None
    first_at: datetime | None = None
    last_at: datetime | None = None
    manual: bool = False

    @classmethod
    def of(cls, values: Sequence[float], first_at: datetime | None = None,
           last_at: datetime | None = None, manual: bool = False) -> Baseline:
        n = len(values)
        if n == 0:
            return cls(manual=manual)
        mrs = [abs(b - a) for a, b in zip(values, values[1:], strict=False)]
        return cls(n, sum(values) / n, sum(mrs) / len(mrs) if mrs else 0.0, first_at,
                   last_at, manual)

    def plus(self, value: float, previous: float | None, at: datetime) -> Baseline:
        """The automatic baseline with one more value (`previous`: the chart's last value),
        as `of` would compute it over all of them."""
        if self.n == 0 or self.mean is None or self.mr_bar is None or previous is None:
            return Baseline(1, value, 0.0, at, at)
        n = self.n + 1
        return Baseline(n, self.mean + (value - self.mean) / n,
                        self.mr_bar + (abs(value - previous) - self.mr_bar) / (n - 1),
                        self.first_at, at)

    @property
    def has_limits(self) -> bool:
        return self.n >= MIN_N and self.mean is not None and self.mr_bar is not None

    @property
    def sigma(self) -> float | None:
        return self.mr_bar / D2 if self.has_limits and self.mr_bar is not None else None

    @property
    def ucl(self) -> float | None:
        s = self.sigma
        return None if s is None or self.mean is None else self.mean + 3 * s

    @property
    def lcl(self) -> float | None:
        s = self.sigma
        return None if s is None or self.mean is None else self.mean - 3 * s

    @property
    def mr_ucl(self) -> float | None:
        return D4 * self.mr_bar if self.has_limits and self.mr_bar is not None else None

    def capability(self, lsl: float | None, usl: float | None
                   ) -> tuple[float | None, float | None]:
        """(Cp, Cpk) against the spec limits: Cp needs both; Cpk the nearer one (either
        alone will do). None without limits or with no spread (sigma 0)."""
        s, m = self.sigma, self.mean
        if s is None or m is None or s == 0:
            return None, None
        cp = (usl - lsl) / (6 * s) if lsl is not None and usl is not None else None
        sides = [x for x in ((usl - m) if usl is not None else None,
                             (m - lsl) if lsl is not None else None) if x is not None]
        cpk = min(sides) / (3 * s) if sides else None
        return cp, cpk


def rules_at(recent: Sequence[float], b: Baseline) -> list[int]:
    """The Western Electric rules the last of `recent` (oldest first; the last `RUN` will
    do) breaks against the baseline's limits: 1 beyond 3 sigma; 2 two of the last three
    beyond 2 sigma on its side; 3 four of the last five beyond 1 sigma on its side; 4 the
    last eight on one side of the mean. A point counts for 2 and 3 only when it is itself
    beyond (so one pattern is marked where it completes, not again on the next in-zone
    point); a point on the mean is on neither side."""
    sigma, mean = b.sigma, b.mean
    if sigma is None or mean is None or not recent:
        return []
    x = recent[-1]
    side = (x > mean) - (x < mean)
    if side == 0:
        return []

    def beyond(v: float, k: float) -> bool:  # beyond k sigma on the point's side
        return (v - mean) * side > k * sigma

    broken = []
    if beyond(x, 3):
        broken.append(1)
    if beyond(x, 2) and sum(beyond(v, 2) for v in recent[-3:]) >= 2:
        broken.append(2)
    if beyond(x, 1) and sum(beyond(v, 1) for v in recent[-5:]) >= 4:
        broken.append(3)
    if len(recent) >= RUN and all((v - mean) * side > 0 for v in recent[-RUN:]):
        broken.append(4)
    return broken


def rules(values: Sequence[float], b: Baseline, before: Sequence[float] = ()
          ) -> list[list[int]]:
    """The rules each of `values` breaks; `before`: the chart's values just before them
    (the last `RUN - 1` will do), so that a window's first points are judged as in the
    whole series."""
    series = [*before[-(RUN - 1):], *values] if before else list(values)
    skip = len(series) - len(values)
    return [rules_at(series[max(0, i - RUN + 1):i + 1], b)
            for i in range(skip, len(series))]


@dataclass(frozen=True)
class ChartState:
    """What the write path keeps of a chart: how many values it has, its last `RUN` values
    (oldest first) and its baseline."""

    n: int = 0
    recent: tuple[float, ...] = ()
    baseline: Baseline = Baseline()

    def add(self, value: float, at: datetime) -> tuple[ChartState, list[int]]:
        """The chart with one more value, and the rules that value breaks. Until a
        supervisor sets a baseline, the chart's first `BASELINE_N` values are it (so its
        limits appear with the `MIN_N`th value and settle with the `BASELINE_N`th)."""
        b = self.baseline
        if not b.manual and b.n < BASELINE_N:
            b = b.plus(value, self.recent[-1] if self.recent else None, at)
        recent = (*self.recent, value)[-RUN:]
        return replace(self, n=self.n + 1, recent=recent, baseline=b), rules_at(recent, b)


def chart_id(family_id: UUID, plan: SessionPlan, step_id: UUID) -> UUID | None:
    """The chart a step's values go on, or None for a step that is no measurement.

    A step's identity across an SOP family's revisions is what a revision copies: its
    task's title, its own title (the how-many-th step of that task with that title), and
    its check's unit, `min` and `max`; so a revision that copies a step keeps its chart,
    and a changed `min`/`max` (or unit, or title) starts a new one."""
    step = plan.step(step_id)
    if step is None or step.check.kind is not CheckKind.MEASUREMENT:
        return None
    twin = [s.id for s in plan.steps
            if (s.task_title, s.title) == (step.task_title, step.title)].index(step_id)
    c = step.check
    limits = [None if x is None else float(x) for x in (c.min, c.max)]
    key = "\x1f".join(str(p) for p in (family_id, step.task_title, step.title, twin, c.unit,
                                        *limits))
    return uuid.uuid5(_NAMESPACE, key)


_NAMESPACE = UUID("5e6c2f0a-9b1d-4c1e-8f00-5bc0c0a5c001")
