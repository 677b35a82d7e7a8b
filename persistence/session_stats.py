"""SOP statistics from the read model (contract v1.1 `GET /sops/{id}/stats`), in SQL that
SQLite and PostgreSQL both run: counts and sums by aggregate, percentiles by ranking with a
window function and fetching only the rows next to each percentile's rank.

A percentile interpolates linearly between the two values closest to its rank (as
PostgreSQL's `percentile_cont` and numpy's default): the median of 10, 20, 30, 40 is 25."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import Any
from uuid import UUID

from sqlalchemy import case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.tables import session_steps, work_sessions

PERCENTILES = {"median": Fraction(1, 2), "p90": Fraction(9, 10)}


@dataclass
class Percentiles:
    median: float | None = None
    p90: float | None = None


@dataclass
class StepStats:
    reached: int = 0
    passed: int = 0
    first_try_passed: int = 0
    tried: int = 0  # reached and checked at least once
    failed_checks: int = 0
    seconds: Percentiles | None = None  # of the passed ones: time until passed


@dataclass
class SopStats:
    sessions: dict[str, int]  # by status
    session_seconds: Percentiles  # completed sessions: active time, pauses not counted
    steps: dict[UUID, StepStats]


class SopStatsQuery:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def of(self, sop_id: UUID, since: datetime | None,
                 until: datetime | None) -> SopStats:
        """The sessions of one SOP version started in [since, until)."""
        s, st = work_sessions.c, session_steps.c
        where = [s.sop_id == sop_id]
        if since is not None:
            where.append(s.started_at >= since)
        if until is not None:
            where.append(s.started_at < until)
        by_status = dict((await self.conn.execute(
            select(s.status, func.count()).where(*where).group_by(s.status))).all())
        joined = session_steps.join(work_sessions, s.id == st.session_id)
        steps: dict[UUID, StepStats] = {}
        for r in (await self.conn.execute(
                select(st.step_id, func.count(), func.count(st.passed_at),
                       func.sum(case((st.first_passed, 1), else_=0)),
                       func.count(st.first_passed), func.sum(st.failed_checks))
                .select_from(joined).where(*where).group_by(st.step_id))).all():
            steps[r[0]] = StepStats(*(int(x or 0) for x in r[1:]))
        passed = (select(st.step_id.label("key"), st.active_seconds.label("value"))
                  .select_from(joined).where(*where, st.passed_at.is_not(None)))
        for key, pct in (await self._percentiles(passed)).items():
            steps[key].seconds = pct
        completed = (select(s.id.label("key"), func.sum(st.active_seconds).label("value"))
                     .select_from(joined).where(*where, s.status == "completed")
                     .group_by(s.id))
        per_session = completed.subquery()
        whole = await self._percentiles(select(literal(0).label("key"), per_session.c.value))
        return SopStats(sessions=by_status, session_seconds=whole.get(0, Percentiles()),
                        steps=steps)

    async def _percentiles(self, values: Any) -> dict[Any, Percentiles]:
        """Median and p90 of `values` (columns `key`, `value`) per key. Only the rows next
        to each rank are read: row r (from 0) of n is next to percentile p when
        |r - (n-1)p| < 1, tested in integers (p = num/den) so both databases agree."""
        v = values.subquery()
        ranked = select(
            v.c.key, v.c.value,
            (func.row_number().over(partition_by=v.c.key, order_by=v.c.value) - 1).label("r"),
            func.count().over(partition_by=v.c.key).label("n")).subquery()
        near = or_(*(func.abs(ranked.c.r * p.denominator - (ranked.c.n - 1) * p.numerator)
                     < p.denominator for p in PERCENTILES.values()))
        rows: dict[Any, tuple[int, dict[int, float]]] = {}
        for key, value, r, n in (await self.conn.execute(
                select(ranked.c.key, ranked.c.value, ranked.c.r, ranked.c.n).where(near))):
            rows.setdefault(key, (n, {}))[1][r] = value
        return {key: Percentiles(**{name: _interpolate(n, ranks, p)
                                    for name, p in PERCENTILES.items()})
                for key, (n, ranks) in rows.items()}


def _interpolate(n: int, ranks: dict[int, float], p: Fraction) -> float:
    h = (n - 1) * p
    lo = int(h)  # floor: h >= 0
    low = ranks[lo]
    high = ranks.get(lo + 1, low)
    return low + float(h - lo) * (high - low)
