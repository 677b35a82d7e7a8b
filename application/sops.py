"""SOP catalog use cases."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from application.authz import Actor, allowed, authorize
from application.context import Context
from application.ports import Percentiles, StepStats, UnitOfWork
from domain.changes import AuditFacts
from domain.errors import NotFound, SopHasActiveSessions
from domain.sop import (
    CheckKind,
    CheckSpec,
    EvidenceRule,
    OnFail,
    Severity,
    Sop,
    SopStatus,
    SopStep,
    SopTask,
)


def _tasks(content: dict[str, Any]) -> list[SopTask]:
    """Fresh ids and positions for every task and step of the submitted content."""
    return [
        SopTask(id=uuid4(), title=t["title"], position=ti, steps=[
            SopStep(id=uuid4(), title=s["title"], instructions=s.get("instructions"),
                    position=si, check=CheckSpec(
                        kind=CheckKind(s["check"]["kind"]), prompt=s["check"]["prompt"],
                        unit=s["check"].get("unit"), min=s["check"].get("min"),
                        max=s["check"].get("max"),
                        evidence=EvidenceRule(s["check"].get("evidence", "optional")),
                        verify=s["check"].get("verify", False),
                        on_fail=OnFail(s["check"].get("on_fail", "retry")),
                        severity=Severity(s["check"].get("severity", "major"))))
            for si, s in enumerate(t["steps"])])
        for ti, t in enumerate(content["tasks"])
    ]


async def _visible(uow: UnitOfWork, actor: Actor, sop_id: UUID, *,
                   lock: str | None = None) -> Sop:
    sop = await uow.sops.get(sop_id, lock=lock)
    if sop is None or (sop.status is not SopStatus.CONFIRMED
                       and not allowed(actor, "sop.read_drafts")):
        raise NotFound("SOP not found")
    return sop


def _facts(actor: Actor, action: str, sop: Sop, request_id: str | None,
           **detail: Any) -> AuditFacts:
    return AuditFacts(action, actor.id, actor.role.value,
                      {"sop_id": str(sop.id), "version": sop.version, **detail}, request_id)


async def create_sop(ctx: Context, actor: Actor, content: dict[str, Any],
                     request_id: str | None = None) -> Sop:
    authorize(actor, "sop.write")
    now = ctx.clock()
    sop = Sop(id=uuid4(), family_id=uuid4(), version=1, status=SopStatus.DRAFT,
              title=content["title"], description=content.get("description"),
              tasks=_tasks(content), created_at=now, updated_at=now)
    sop.validate()
    async with ctx.uow() as uow:
        await uow.sops.add(sop, created_by=actor.id)
        await uow.audit.append_to_sop_family(
            sop.family_id, _facts(actor, "sop_create", sop, request_id, title=sop.title), now)
    return sop


async def get_sop(ctx: Context, actor: Actor, sop_id: UUID) -> Sop:
    authorize(actor, "sop.read")
    async with ctx.uow(read_only=True) as uow:
        return await _visible(uow, actor, sop_id)


async def list_sops(ctx: Context, actor: Actor, status: SopStatus | None, limit: int,
                    offset: int) -> tuple[list[Sop], int]:
    authorize(actor, "sop.read")
    if not allowed(actor, "sop.read_drafts"):
        if status not in (None, SopStatus.CONFIRMED):
            return [], 0
        status = SopStatus.CONFIRMED
    async with ctx.uow(read_only=True) as uow:
        return await uow.sops.list_page(status, limit, offset)


async def sop_stats(ctx: Context, actor: Actor, sop_id: UUID, since: datetime | None,
                    until: datetime | None) -> dict[str, Any]:
    """How the sessions of one SOP version went (contract v1.1), from the read model:
    sessions by status and their active time (completed ones, pauses not counted); per
    step in SOP order, how many reached and passed it, the share passed at the first
    check, failed checks, and the time until passed (of those passed)."""
    async with ctx.uow(read_only=True, snapshot=True) as uow:  # counts and ranks agree
        sop = await _visible(uow, actor, sop_id)
        authorize(actor, "session.read_all")
        stats = await uow.stats.of(sop_id, since, until)
    by_status = stats.sessions
    return {
        "sop_id": str(sop.id), "version": sop.version,
        "sessions": {
            "started": sum(by_status.values()),
            "completed": by_status.get("completed", 0),
            "cancelled": by_status.get("cancelled", 0),
            "in_progress": by_status.get("in_progress", 0) + by_status.get("paused", 0),
            "median_seconds": _seconds(stats.session_seconds.median),
            "p90_seconds": _seconds(stats.session_seconds.p90)},
        "steps": [_step_stats(step.id, step.title, stats.steps.get(step.id, StepStats()))
                  for task in sop.tasks for step in task.steps],
    }


def _step_stats(step_id: UUID, title: str, s: StepStats) -> dict[str, Any]:
    seconds = s.seconds or Percentiles()
    return {"step_id": str(step_id), "title": title, "reached": s.reached, "passed": s.passed,
            "first_try_pass_rate": round(s.first_try_passed / s.tried, 4) if s.tried else None,
            "failed_checks": s.failed_checks, "median_seconds": _seconds(seconds.median),
            "p90_seconds": _seconds(seconds.p90)}


def _seconds(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


# The catalog changes below take an SOP that `gate` let the caller change (404, then 403).
async def update_sop(ctx: Context, actor: Actor, sop_id: UUID, content: dict[str, Any],
                     request_id: str | None = None) -> Sop:
    async with ctx.uow() as uow:
        sop = await _visible(uow, actor, sop_id, lock="update")
        sop.ensure_editable()
        sop.title, sop.description = content["title"], content.get("description")
        sop.tasks = _tasks(content)
        sop.updated_at = ctx.clock()
        sop.validate()
        await uow.sops.replace_content(sop)
        await uow.audit.append_to_sop_family(
            sop.family_id, _facts(actor, "sop_edit", sop, request_id, title=sop.title),
            sop.updated_at)
    return sop


async def confirm_sop(ctx: Context, actor: Actor, sop_id: UUID,
                      request_id: str | None = None) -> Sop:
    async with ctx.uow() as uow:
        sop = await _visible(uow, actor, sop_id, lock="update")
        sop.confirm(ctx.clock())
        await uow.sops.save_status(sop)
        await uow.audit.append_to_sop_family(
            sop.family_id, _facts(actor, "sop_confirm", sop, request_id), ctx.clock())
    return sop


async def revise_sop(ctx: Context, actor: Actor, sop_id: UUID,
                     request_id: str | None = None) -> Sop:
    """A new draft copying a confirmed SOP: same family, version + 1."""
    async with ctx.uow() as uow:
        base = await _visible(uow, actor, sop_id, lock="update")
        base.ensure_revisable()
        now = ctx.clock()
        # the same tasks and steps with fresh ids; each check copied whole
        tasks = [replace(t, id=uuid4(), steps=[replace(s, id=uuid4()) for s in t.steps])
                 for t in base.tasks]
        sop = Sop(id=uuid4(), family_id=base.family_id,
                  version=await uow.sops.latest_version(base.family_id) + 1,
                  status=SopStatus.DRAFT, title=base.title, description=base.description,
                  tasks=tasks, created_at=now, updated_at=now)
        await uow.sops.add(sop, created_by=actor.id)
        await uow.audit.append_to_sop_family(
            sop.family_id, _facts(actor, "sop_revise", sop, request_id,
                                  revises=str(base.id)), now)
    return sop


async def delete_sop(ctx: Context, actor: Actor, sop_id: UUID,
                     request_id: str | None = None) -> None:
    """session-006: refused (400) while sessions are in progress or paused; an SOP that
    sessions still refer to is archived, never lost. The SOP row is held exclusively while
    active sessions are looked for: a start racing it either is seen here or sees the SOP
    archived (it holds the row in share mode while it writes its session)."""
    async with ctx.uow() as uow:
        sop = await _visible(uow, actor, sop_id, lock="update")
        active = await uow.sessions.active_for_sop(sop_id)
        if active:
            raise SopHasActiveSessions(
                f"{len(active)} session(s) of this SOP are in progress or paused: complete "
                f"or cancel them first",
                active_sessions=[{"id": str(a.id), "worker_id": str(a.worker_id),
                                  "started_at": a.started_at.isoformat()} for a in active])
        if await uow.sops.is_referenced(sop_id):
            sop.status = SopStatus.ARCHIVED
            sop.updated_at = ctx.clock()
            await uow.sops.save_status(sop)
            outcome = "archived"
        else:
            await uow.sops.delete_sop(sop_id)
            outcome = "deleted"
        await uow.audit.append_to_sop_family(
            sop.family_id, _facts(actor, "sop_delete", sop, request_id, result=outcome),
            ctx.clock())


async def gate(ctx: Context, actor: Actor, sop_id: UUID) -> None:
    """CONTRACT.md precedence for SOP changes: 404 (may not see it), then 403."""
    async with ctx.uow(read_only=True) as uow:
        await _visible(uow, actor, sop_id)
    authorize(actor, "sop.write")
