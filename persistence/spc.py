"""SPC charts (CONTRACT.md v1.2, "Statistical process control") in the read model.

A chart's values are its steps' checks (`session_checks`, read through
`ix_session_checks_step_at`: one index range per step, newest first, never a sort of the
whole history); what judging its next value takes is its `spc_charts` row (domain.spc
.ChartState). `judge` runs inside `write_change`, in the transaction that records the check,
holding the chart's row: O(1) per check whatever the chart's length. A chart's row is made
by its first value written after migration 0008, from the values recorded before it."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from application.ports import SpcChart, SpcPoint
from domain.errors import InvalidInput
from domain.spc import BASELINE_N, MIN_N, RUN, Baseline, ChartState, chart_id
from domain.work_session import Check
from persistence.db import dialect_insert
from persistence.sops import SopRepository
from persistence.tables import session_checks, spc_charts

k = session_checks.c


class SpcCharts:
    def __init__(self, conn: AsyncConnection, sops: SopRepository) -> None:
        self.conn = conn
        self._sops = sops
        self._sqlite = conn.dialect.name == "sqlite"

    # ---- the write path ---------------------------------------------------------------------
    async def judge(self, sop_id: UUID, checks: list[Check]
                    ) -> list[tuple[Check, UUID, list[int]]]:
        """Put each measured value among `checks` (not yet written) on its chart; answer
        those that break a rule, with their chart and the rules."""
        measured = [c for c in checks if c.value is not None]
        if not measured:
            return []
        plan = await self._sops.plan(sop_id)
        family = await self._sops.family_of(sop_id)
        broke = []
        for c in measured:
            assert c.value is not None
            chart = chart_id(family, plan, c.step_id)
            if chart is None:
                continue
            state, broken = (await self._held(family, chart)).add(c.value, c.checked_at)
            await self.conn.execute(_SAVE, {"cid": chart, **_row(state), "at": c.checked_at})
            if broken:
                broke.append((c, chart, broken))
        return broke

    async def set_baseline(self, family_id: UUID, chart: UUID, start: datetime,
                           end: datetime, now: datetime) -> Baseline:
        """A supervisor's baseline: the chart's values taken from `start` to `end`, both
        included (at least `MIN_N` of them)."""
        rows = await self._values(await self.steps_of(family_id, chart), since=start,
                                  until=end, inclusive=True)
        if len(rows) < MIN_N:
            raise InvalidInput(
                f"the baseline window holds {len(rows)} value(s) of this step: at least "
                f"{MIN_N} are needed", errors=[{"field": "from", "message": "too few values"}])
        rows.reverse()  # oldest first
        b = Baseline.of([r.value for r in rows], rows[0].checked_at, rows[-1].checked_at,
                        manual=True)
        state = await self._held(family_id, chart)
        await self.conn.execute(_SAVE, {"cid": chart, **_row(ChartState(
            state.n, state.recent, b)), "at": now})
        return b

    async def _held(self, family_id: UUID, chart: UUID) -> ChartState:
        """The chart's state, its row held until the transaction ends (made, from the values
        already recorded, when the chart has none yet)."""
        row = (await self.conn.execute(_held(self._sqlite), {"cid": chart})).mappings().first()
        if row is None:
            state = await self._recorded(family_id, chart)
            await self.conn.execute(_insert_once(self._sqlite), {
                "id": chart, "family_id": family_id, **_row(state),
                "updated_at": state.baseline.last_at or _EPOCH})
            row = (await self.conn.execute(_held(self._sqlite), {"cid": chart})
                   ).mappings().one()
        return _state(row)

    async def _recorded(self, family_id: UUID, chart: UUID, *, count: bool = True
                        ) -> ChartState:
        """A chart's state as the recorded values have it (its first `BASELINE_N` the
        baseline): three index reads per step (two without `count`: n then is 0)."""
        steps = await self.steps_of(family_id, chart)
        first = list(reversed(await self._values(steps, limit=BASELINE_N, oldest=True)))
        last = await self._values(steps, limit=RUN)
        n = sum([await self._count(s, None, None) for s in steps]) if count else 0
        b = Baseline.of([r.value for r in first], first[0].checked_at if first else None,
                        first[-1].checked_at if first else None)
        return ChartState(n, tuple(r.value for r in reversed(last)), b)

    # ---- reads ------------------------------------------------------------------------------
    async def read(self, family_id: UUID, chart: UUID, since: datetime | None,
                   until: datetime | None, limit: int) -> SpcChart:
        """The chart's state and its last `limit` values from `since` (included) to `until`
        (excluded), oldest first, with the `RUN - 1` values before them."""
        steps = await self.steps_of(family_id, chart)
        row = (await self.conn.execute(_held(True), {"cid": chart})).mappings().first()
        state = _state(row) if row is not None else \
            await self._recorded(family_id, chart, count=False)  # its n is not shown
        rows = await self._values(steps, until=until, limit=limit + RUN - 1)
        shown = [r for r in rows if since is None or r.checked_at >= since][:limit]
        before = rows[len(shown):len(shown) + RUN - 1]
        n = sum([await self._count(s, since, until) for s in steps])
        return SpcChart(state=state, n=n, points=[
            SpcPoint(r.id, r.session_id, r.value, r.checked_at) for r in reversed(shown)],
            before=[r.value for r in reversed(before)])

    async def steps_of(self, family_id: UUID, chart: UUID) -> list[UUID]:
        """The steps, of every version of the family, whose values the chart shows."""
        steps = []
        for sop_id in await self._sops.of_family(family_id):
            plan = await self._sops.plan(sop_id)
            steps += [s.id for s in plan.steps if chart_id(family_id, plan, s.id) == chart]
        return steps

    async def _values(self, steps: list[UUID], *, since: datetime | None = None,
                      until: datetime | None = None, inclusive: bool = False,
                      limit: int | None = None, oldest: bool = False) -> list[Any]:
        """Values of the steps, newest first (`oldest`: the oldest `limit` of them, still
        answered newest first): one index range per step, merged."""
        rows: list[Any] = []
        for step in steps:
            stmt = select(k.id, k.session_id, k.value, k.checked_at).where(k.step_id == step)
            if since is not None:
                stmt = stmt.where(k.checked_at >= since)
            if until is not None:
                stmt = stmt.where(k.checked_at <= until if inclusive else k.checked_at < until)
            order = [k.checked_at, k.id] if oldest else [k.checked_at.desc(), k.id.desc()]
            rows += (await self.conn.execute(stmt.order_by(*order).limit(limit))).all()
        rows.sort(key=lambda r: (r.checked_at, r.id), reverse=True)
        if limit is not None:
            rows = rows[-limit:] if oldest else rows[:limit]
        return rows

    async def _count(self, step: UUID, since: datetime | None, until: datetime | None) -> int:
        stmt = select(func.count()).select_from(session_checks).where(k.step_id == step)
        if since is not None:
            stmt = stmt.where(k.checked_at >= since)
        if until is not None:
            stmt = stmt.where(k.checked_at < until)
        return (await self.conn.execute(stmt)).scalar_one()


_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
_FIELDS = ["n", "recent", "base_n", "base_mean", "base_mr_bar", "base_from", "base_to",
           "base_manual"]
_SAVE = update(spc_charts).where(spc_charts.c.id == bindparam("cid")).values(
    {f: bindparam(f) for f in _FIELDS} | {"updated_at": bindparam("at")})


@functools.cache
def _held(is_sqlite: bool) -> Any:
    """The chart's row; held (PostgreSQL's FOR NO KEY UPDATE; SQLite's write transaction
    already is) when written."""
    stmt = select(spc_charts).where(spc_charts.c.id == bindparam("cid"))
    return stmt if is_sqlite else stmt.with_for_update(key_share=True)


@functools.cache
def _insert_once(is_sqlite: bool) -> Any:
    return dialect_insert(is_sqlite, spc_charts).on_conflict_do_nothing(
        index_elements=[spc_charts.c.id])


def _row(state: ChartState) -> dict[str, Any]:
    b = state.baseline
    return {"n": state.n, "recent": list(state.recent), "base_n": b.n, "base_mean": b.mean,
            "base_mr_bar": b.mr_bar, "base_from": b.first_at, "base_to": b.last_at,
            "base_manual": b.manual}


def _state(row: Any) -> ChartState:
    return ChartState(row["n"], tuple(row["recent"]), Baseline(
        row["base_n"], row["base_mean"], row["base_mr_bar"], row["base_from"], row["base_to"],
        row["base_manual"]))
