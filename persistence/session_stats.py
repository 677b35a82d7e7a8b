"""SOP statistics from the read model (contract v1.1 `GET /sops/{id}/stats`), in SQL that
SQLite and PostgreSQL both run: counts by aggregate over a covering index, and each
percentile by reading the two values next to its rank in an index kept in order of time
(`ORDER BY … LIMIT 2 OFFSET rank`), so no query sorts and none joins.

A percentile interpolates linearly between the two values closest to its rank (as
PostgreSQL's `percentile_cont` and numpy's default): the median of 10, 20, 30, 40 is 25."""

from __future__ import annotations

from datetime import datetime
from fractions import Fraction
from typing import Any
from uuid import UUID

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from application.ports import Percentiles, SopStats, StepStats
from persistence.tables import session_steps, work_sessions

PERCENTILES = {"median": Fraction(1, 2), "p90": Fraction(9, 10)}


class SopStatsQuery:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def of(self, sop_id: UUID, since: datetime | None,
                 until: datetime | None) -> SopStats:
        """The sessions of one SOP version started in [since, until)."""
        s, st = work_sessions.c, session_steps.c
        sessions = [s.sop_id == sop_id, *_window(s.started_at, since, until)]
        steps_of = [st.sop_id == sop_id, *_window(st.session_started_at, since, until)]
        by_status = dict((await self.conn.execute(
            select(s.status, func.count()).where(*sessions).group_by(s.status))).all())
        steps: dict[UUID, StepStats] = {}
        for r in (await self.conn.execute(
                select(st.step_id, func.count(), func.count(st.passed_at),
                       func.sum(case((st.first_passed, 1), else_=0)),
                       func.count(st.first_passed), func.sum(st.failed_checks))
                .where(*steps_of).group_by(st.step_id))).all():
            steps[r[0]] = StepStats(*(int(x or 0) for x in r[1:]))
        for step_id, step in steps.items():
            step.seconds = await self._percentiles(
                select(st.active_seconds).where(*steps_of, st.step_id == step_id,
                                                st.passed_at.is_not(None))
                .order_by(st.active_seconds), step.passed)
        durations = await self._percentiles(
            select(s.duration_seconds).where(*sessions, s.status == "completed")
            .order_by(s.duration_seconds), by_status.get("completed", 0))
        return SopStats(sessions=by_status, session_seconds=durations, steps=steps)

    async def _percentiles(self, ordered: Any, n: int) -> Percentiles:
        """Median and p90 of the `n` values `ordered` selects in order."""
        if n == 0:
            return Percentiles()
        out = {}
        for name, p in PERCENTILES.items():
            h = (n - 1) * p
            lo = int(h)  # floor: h >= 0
            pair = (await self.conn.execute(ordered.limit(2).offset(lo))).scalars().all()
            low = pair[0]
            high = pair[1] if len(pair) > 1 else low
            out[name] = low + float(h - lo) * (high - low)
        return Percentiles(**out)


def _window(column: Any, since: datetime | None, until: datetime | None) -> list[Any]:
    return [c for c in (None if since is None else column >= since,
                        None if until is None else column < until) if c is not None]
