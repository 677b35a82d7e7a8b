"""Statistical process control of an SOP's measurement steps (CONTRACT.md v1.2): the chart
from the read model, and a supervisor's baseline (audited in the SOP family's chain). The
judging of each new value is part of the write of its check (persistence/spc.py, from
`write_change`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from application.authz import Actor, authorize
from application.context import Context
from application.ports import UnitOfWork
from application.sops import _visible
from domain.changes import AuditFacts
from domain.errors import InvalidInput, NotFound
from domain.sop import CheckKind, Sop
from domain.spc import chart_id, rules

DEFAULT_POINTS = 500
MAX_POINTS = 5000


async def _chart_of(uow: UnitOfWork, actor: Actor, sop_id: UUID, step_id: UUID
                    ) -> tuple[Sop, Any, UUID]:
    """The SOP (404), the caller's right (403), the step (404: unknown, or another SOP's)
    and that it is a measurement (422): the step and its chart."""
    sop = await _visible(uow, actor, sop_id)
    authorize(actor, "session.read_all")
    plan = sop.plan()
    step = plan.step(step_id)
    if step is None:
        raise NotFound("step not found in this SOP")
    if step.check.kind is not CheckKind.MEASUREMENT:
        raise InvalidInput("this step is not a measurement: it has no control chart",
                           errors=[{"field": "step_id", "message": "not a measurement"}])
    chart = chart_id(sop.family_id, plan, step_id)
    assert chart is not None
    return sop, step, chart


async def chart(ctx: Context, actor: Actor, sop_id: UUID, step_id: UUID,
                since: datetime | None, until: datetime | None, limit: int) -> dict[str, Any]:
    async with ctx.uow(read_only=True, snapshot=True) as uow:
        sop, step, cid = await _chart_of(uow, actor, sop_id, step_id)
        got = await uow.spc.read(sop.family_id, cid, since, until, limit)
    b = got.state.baseline
    lsl, usl = step.check.min, step.check.max
    cp, cpk = b.capability(lsl, usl)
    judged = rules([p.value for p in got.points], b, got.before)
    limits = b.has_limits
    return {
        "step_id": str(step_id), "unit": step.check.unit, "lsl": lsl, "usl": usl,
        "n": got.n, "mean": b.mean if limits else None, "sigma": b.sigma, "ucl": b.ucl,
        "lcl": b.lcl, "mr_bar": b.mr_bar if limits else None, "mr_ucl": b.mr_ucl,
        "cp": cp, "cpk": cpk,
        "baseline": {"n": b.n, "from": b.first_at, "to": b.last_at,
                     "set_by": "supervisor" if b.manual else "first values"},
        "points": [{"check_id": str(p.check_id), "session_id": str(p.session_id),
                    "value": p.value, "at": p.at, "rules": r}
                   for p, r in zip(got.points, judged, strict=True)],
    }


async def set_baseline(ctx: Context, actor: Actor, sop_id: UUID, step_id: UUID,
                       start: datetime, end: datetime, request_id: str | None = None
                       ) -> dict[str, Any]:
    """The chart's limits from the values taken from `start` to `end` (both included)."""
    if start > end:
        raise InvalidInput("from must not be after to",
                           errors=[{"field": "from", "message": "after to"}])
    async with ctx.uow() as uow:
        sop, _, cid = await _chart_of(uow, actor, sop_id, step_id)
        now = ctx.clock()
        b = await uow.spc.set_baseline(sop.family_id, cid, start, end, now)
        await uow.audit.append_to_sop_family(sop.family_id, AuditFacts(
            "spc_baseline_set", actor.id, actor.role.value, {
                "sop_id": str(sop.id), "version": sop.version, "step_id": str(step_id),
                "chart_id": str(cid), "from": start.isoformat(), "to": end.isoformat(),
                "n": b.n, "mean": b.mean, "mr_bar": b.mr_bar}, request_id), now)
    return await chart(ctx, actor, sop_id, step_id, None, None, DEFAULT_POINTS)
