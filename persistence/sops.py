"""SOP repository."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.sop import CheckKind, CheckSpec, Sop, SopStatus, SopStep, SopTask
from persistence.tables import sop_steps, sop_tasks, sops, work_sessions


async def add(conn: AsyncConnection, sop: Sop, created_by: UUID | None = None) -> None:
    await conn.execute(sops.insert().values(
        id=sop.id, family_id=sop.family_id, version=sop.version, status=sop.status.value,
        title=sop.title, description=sop.description, created_at=sop.created_at,
        updated_at=sop.updated_at, confirmed_at=sop.confirmed_at, created_by=created_by))
    await _insert_content(conn, sop)


async def replace_content(conn: AsyncConnection, sop: Sop) -> None:
    await conn.execute(update(sops).where(sops.c.id == sop.id).values(
        title=sop.title, description=sop.description, updated_at=sop.updated_at))
    await conn.execute(delete(sop_steps).where(sop_steps.c.sop_id == sop.id))
    await conn.execute(delete(sop_tasks).where(sop_tasks.c.sop_id == sop.id))
    await _insert_content(conn, sop)


async def _insert_content(conn: AsyncConnection, sop: Sop) -> None:
    tasks = [{"id": t.id, "sop_id": sop.id, "position": t.position, "title": t.title}
             for t in sop.tasks]
    steps = [{"id": s.id, "sop_id": sop.id, "task_id": t.id, "position": s.position,
              "title": s.title, "instructions": s.instructions,
              "check_kind": s.check.kind.value, "check_prompt": s.check.prompt,
              "check_unit": s.check.unit, "check_min": s.check.min, "check_max": s.check.max}
             for t in sop.tasks for s in t.steps]
    if tasks:
        await conn.execute(sop_tasks.insert(), tasks)
    if steps:
        await conn.execute(sop_steps.insert(), steps)


async def save_status(conn: AsyncConnection, sop: Sop) -> None:
    await conn.execute(update(sops).where(sops.c.id == sop.id).values(
        status=sop.status.value, updated_at=sop.updated_at, confirmed_at=sop.confirmed_at))


async def get(conn: AsyncConnection, sop_id: UUID, *, for_update: bool = False) -> Sop | None:
    stmt = select(sops).where(sops.c.id == sop_id)
    if for_update:
        # PostgreSQL: FOR NO KEY UPDATE, which serialises a session start against an SOP
        # delete but lets the workflow's session insert check its foreign key meanwhile
        # (FOR UPDATE would deadlock with it). SQLite: the write transaction (BEGIN
        # IMMEDIATE) already serialises writers, so the clause is ignored there.
        stmt = stmt.with_for_update(key_share=True)
    row = (await conn.execute(stmt)).mappings().first()
    if row is None:
        return None
    return (await _hydrate(conn, [row]))[0]


async def list_page(conn: AsyncConnection, status: SopStatus | None, limit: int,
                    offset: int) -> tuple[list[Sop], int]:
    cond = sops.c.status == status.value if status else sops.c.status != SopStatus.ARCHIVED.value
    total = (await conn.execute(select(func.count()).select_from(sops).where(cond))).scalar_one()
    rows = (await conn.execute(
        select(sops).where(cond).order_by(sops.c.created_at.desc(), sops.c.id)
        .limit(limit).offset(offset))).mappings().all()
    return await _hydrate(conn, rows), total


async def _hydrate(conn: AsyncConnection, rows: list) -> list[Sop]:
    ids = [r["id"] for r in rows]
    if not ids:
        return []
    task_rows = (await conn.execute(select(sop_tasks).where(sop_tasks.c.sop_id.in_(ids))
                                    .order_by(sop_tasks.c.position))).mappings().all()
    step_rows = (await conn.execute(select(sop_steps).where(sop_steps.c.sop_id.in_(ids))
                                    .order_by(sop_steps.c.position))).mappings().all()
    steps_by_task: dict[UUID, list[SopStep]] = {}
    for s in step_rows:
        steps_by_task.setdefault(s["task_id"], []).append(SopStep(
            id=s["id"], title=s["title"], instructions=s["instructions"], position=s["position"],
            check=CheckSpec(kind=CheckKind(s["check_kind"]), prompt=s["check_prompt"],
                            unit=s["check_unit"], min=s["check_min"], max=s["check_max"])))
    tasks_by_sop: dict[UUID, list[SopTask]] = {}
    for t in task_rows:
        tasks_by_sop.setdefault(t["sop_id"], []).append(SopTask(
            id=t["id"], title=t["title"], position=t["position"],
            steps=steps_by_task.get(t["id"], [])))
    return [Sop(id=r["id"], family_id=r["family_id"], version=r["version"],
                status=SopStatus(r["status"]), title=r["title"], description=r["description"],
                tasks=tasks_by_sop.get(r["id"], []), created_at=r["created_at"],
                updated_at=r["updated_at"], confirmed_at=r["confirmed_at"]) for r in rows]


async def latest_version(conn: AsyncConnection, family_id: UUID) -> int:
    return (await conn.execute(select(func.max(sops.c.version))
                               .where(sops.c.family_id == family_id))).scalar_one() or 0


async def is_referenced(conn: AsyncConnection, sop_id: UUID) -> bool:
    row = (await conn.execute(select(work_sessions.c.id)
                              .where(work_sessions.c.sop_id == sop_id).limit(1))).first()
    return row is not None


async def delete_sop(conn: AsyncConnection, sop_id: UUID) -> None:
    await conn.execute(delete(sops).where(sops.c.id == sop_id))
