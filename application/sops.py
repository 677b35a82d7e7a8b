"""SOP catalog use cases."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from sqlalchemy.ext.asyncio import AsyncConnection

from application import audit
from application.authz import Actor, allowed, authorize
from application.context import Context
from domain.errors import NotFound, SopHasActiveSessions
from domain.sop import CheckKind, CheckSpec, Sop, SopStatus, SopStep, SopTask
from persistence import sessions, sops


def _tasks(content: dict[str, Any]) -> list[SopTask]:
    """Fresh ids and positions for every task and step of the submitted content."""
    return [
        SopTask(id=uuid4(), title=t["title"], position=ti, steps=[
            SopStep(id=uuid4(), title=s["title"], instructions=s.get("instructions"),
                    position=si, check=CheckSpec(
                        kind=CheckKind(s["check"]["kind"]), prompt=s["check"]["prompt"],
                        unit=s["check"].get("unit"), min=s["check"].get("min"),
                        max=s["check"].get("max")))
            for si, s in enumerate(t["steps"])])
        for ti, t in enumerate(content["tasks"])
    ]


async def _visible(conn: AsyncConnection, actor: Actor, sop_id: UUID, *,
                   for_update: bool = False) -> Sop:
    sop = await sops.get(conn, sop_id, for_update=for_update)
    if sop is None or (sop.status is not SopStatus.CONFIRMED
                       and not allowed(actor, "sop.read_drafts")):
        raise NotFound("SOP not found")
    return sop


async def create_sop(ctx: Context, actor: Actor, content: dict[str, Any]) -> Sop:
    authorize(actor, "sop.write")
    now = ctx.clock()
    sop = Sop(id=uuid4(), family_id=uuid4(), version=1, status=SopStatus.DRAFT,
              title=content["title"], description=content.get("description"),
              tasks=_tasks(content), created_at=now, updated_at=now)
    sop.validate()
    async with ctx.db.write() as conn:
        await sops.add(conn, sop, created_by=actor.id)
    return sop


async def get_sop(ctx: Context, actor: Actor, sop_id: UUID) -> Sop:
    authorize(actor, "sop.read")
    async with ctx.db.read() as conn:
        return await _visible(conn, actor, sop_id)


async def list_sops(ctx: Context, actor: Actor, status: SopStatus | None, limit: int,
                    offset: int) -> tuple[list[Sop], int]:
    authorize(actor, "sop.read")
    if not allowed(actor, "sop.read_drafts"):
        if status not in (None, SopStatus.CONFIRMED):
            return [], 0
        status = SopStatus.CONFIRMED
    async with ctx.db.read() as conn:
        return await sops.list_page(conn, status, limit, offset)


async def update_sop(ctx: Context, actor: Actor, sop_id: UUID, content: dict[str, Any]) -> Sop:
    async with ctx.db.write() as conn:
        sop = await _visible(conn, actor, sop_id, for_update=True)
        authorize(actor, "sop.write")
        sop.ensure_editable()
        sop.title, sop.description = content["title"], content.get("description")
        sop.tasks = _tasks(content)
        sop.updated_at = ctx.clock()
        sop.validate()
        await sops.replace_content(conn, sop)
    return sop


async def confirm_sop(ctx: Context, actor: Actor, sop_id: UUID) -> Sop:
    async with ctx.db.write() as conn:
        sop = await _visible(conn, actor, sop_id, for_update=True)
        authorize(actor, "sop.write")
        sop.confirm(ctx.clock())
        await sops.save_status(conn, sop)
    return sop


async def revise_sop(ctx: Context, actor: Actor, sop_id: UUID) -> Sop:
    """A new draft copying a confirmed SOP: same family, version + 1."""
    async with ctx.db.write() as conn:
        base = await _visible(conn, actor, sop_id, for_update=True)
        authorize(actor, "sop.write")
        base.ensure_revisable()
        now = ctx.clock()
        content = {"tasks": [{"title": t.title, "steps": [
            {"title": s.title, "instructions": s.instructions,
             "check": {"kind": s.check.kind.value, "prompt": s.check.prompt,
                       "unit": s.check.unit, "min": s.check.min, "max": s.check.max}}
            for s in t.steps]} for t in base.tasks]}
        sop = Sop(id=uuid4(), family_id=base.family_id,
                  version=await sops.latest_version(conn, base.family_id) + 1,
                  status=SopStatus.DRAFT, title=base.title, description=base.description,
                  tasks=_tasks(content), created_at=now, updated_at=now)
        await sops.add(conn, sop, created_by=actor.id)
    return sop


async def delete_sop(ctx: Context, actor: Actor, sop_id: UUID,
                     request_id: str | None = None) -> None:
    """session-006: refused (400) while sessions are in progress or paused; an SOP that
    sessions still refer to is archived, never lost."""
    async with ctx.db.write() as conn:
        sop = await _visible(conn, actor, sop_id, for_update=True)
        authorize(actor, "sop.write")
        active = await sessions.active_for_sop(conn, sop_id)
        if active:
            raise SopHasActiveSessions(
                f"{len(active)} session(s) of this SOP are in progress or paused: complete "
                f"or cancel them first",
                active_sessions=[{"id": str(a.id), "worker_id": str(a.worker_id),
                                  "started_at": a.started_at.isoformat()} for a in active])
        if await sops.is_referenced(conn, sop_id):
            sop.status = SopStatus.ARCHIVED
            sop.updated_at = ctx.clock()
            await sops.save_status(conn, sop)
            outcome = "archived"
        else:
            await sops.delete_sop(conn, sop_id)
            outcome = "deleted"
    await audit.record(ctx, actor, "sop_delete", "accepted",
                       detail={"sop_id": str(sop_id), "result": outcome},
                       request_id=request_id)


async def gate(ctx: Context, actor: Actor, sop_id: UUID) -> None:
    """CONTRACT.md precedence for SOP changes: 404 (may not see it), then 403."""
    async with ctx.db.read() as conn:
        await _visible(conn, actor, sop_id)
    authorize(actor, "sop.write")
