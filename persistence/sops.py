"""SOP repository."""

from __future__ import annotations

from uuid import UUID

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.errors import NotFound
from domain.sop import (
    CheckKind,
    CheckSpec,
    EvidenceRule,
    OnFail,
    SessionPlan,
    Severity,
    Sop,
    SopStatus,
    SopStep,
    SopTask,
)
from persistence.tables import sop_steps, sop_tasks, sops, work_sessions


class PlanCache(dict[UUID, SessionPlan]):
    """A confirmed SOP's content never changes, so its plan is kept for good (per process);
    nor does any SOP's family (`families`)."""

    def __init__(self) -> None:
        super().__init__()
        self.families: dict[UUID, UUID] = {}


class SopRepository:
    def __init__(self, conn: AsyncConnection, plans: PlanCache | None = None) -> None:
        self.conn = conn
        self._plans = PlanCache() if plans is None else plans

    async def plan(self, sop_id: UUID) -> SessionPlan:
        """The steps a session of that SOP walks (a draft's is read every time)."""
        plan = self._plans.get(sop_id)
        if plan is None:
            sop = await self.get(sop_id)
            if sop is None:
                raise NotFound("SOP not found")
            plan = sop.plan()
            if sop.status is not SopStatus.DRAFT:
                self._plans[sop_id] = plan
        return plan

    async def family_of(self, sop_id: UUID) -> UUID:
        family = self._plans.families.get(sop_id)
        if family is None:
            family = (await self.conn.execute(select(sops.c.family_id).where(
                sops.c.id == sop_id))).scalar_one()
            self._plans.families[sop_id] = family
        return family

    async def of_family(self, family_id: UUID) -> list[UUID]:
        """The ids of a family's SOPs (every version)."""
        return list((await self.conn.execute(select(sops.c.id).where(
            sops.c.family_id == family_id).order_by(sops.c.version))).scalars())

    async def add(self, sop: Sop, created_by: UUID | None = None) -> None:
        await self.conn.execute(sops.insert().values(
            id=sop.id, family_id=sop.family_id, version=sop.version, status=sop.status.value,
            title=sop.title, description=sop.description, created_at=sop.created_at,
            updated_at=sop.updated_at, confirmed_at=sop.confirmed_at, created_by=created_by))
        await self._insert_content(sop)

    async def replace_content(self, sop: Sop) -> None:
        await self.conn.execute(update(sops).where(sops.c.id == sop.id).values(
            title=sop.title, description=sop.description, updated_at=sop.updated_at))
        await self.conn.execute(delete(sop_steps).where(sop_steps.c.sop_id == sop.id))
        await self.conn.execute(delete(sop_tasks).where(sop_tasks.c.sop_id == sop.id))
        await self._insert_content(sop)

    async def _insert_content(self, sop: Sop) -> None:
        tasks = [{"id": t.id, "sop_id": sop.id, "position": t.position, "title": t.title}
                 for t in sop.tasks]
        steps = [{"id": s.id, "sop_id": sop.id, "task_id": t.id, "position": s.position,
                  "title": s.title, "instructions": s.instructions,
                  "check_kind": s.check.kind.value, "check_prompt": s.check.prompt,
                  "check_unit": s.check.unit, "check_min": s.check.min, "check_max": s.check.max,
                  "check_evidence": s.check.evidence.value, "check_verify": s.check.verify,
                  "check_on_fail": s.check.on_fail.value,
                  "check_severity": s.check.severity.value}
                 for t in sop.tasks for s in t.steps]
        if tasks:
            await self.conn.execute(sop_tasks.insert(), tasks)
        if steps:
            await self.conn.execute(sop_steps.insert(), steps)

    async def save_status(self, sop: Sop) -> None:
        await self.conn.execute(update(sops).where(sops.c.id == sop.id).values(
            status=sop.status.value, updated_at=sop.updated_at, confirmed_at=sop.confirmed_at))

    async def get(self, sop_id: UUID, *, lock: str | None = None,
                  with_content: bool = True) -> Sop | None:
        """`with_content=False`: the SOP without its tasks and steps (a session start needs
        its status only; its plan is cached).
        `lock` (PostgreSQL; SQLite's write transaction already serialises writers):
        "share" for a session start, which holds the SOP as it is without making other
        starts of it wait; "update" for a catalog change, which waits for those starts and
        makes later ones wait (FOR NO KEY UPDATE, so foreign-key checks of session rows are
        not blocked by it)."""
        stmt = select(sops).where(sops.c.id == sop_id)
        if lock == "share":
            stmt = stmt.with_for_update(read=True)
        elif lock == "update":
            stmt = stmt.with_for_update(key_share=True)
        row = (await self.conn.execute(stmt)).mappings().first()
        if row is None:
            return None
        return (await self._hydrate([row], with_content))[0]

    async def list_page(self, status: SopStatus | None, limit: int,
                        offset: int) -> tuple[list[Sop], int]:
        cond = (sops.c.status == status.value if status
                else sops.c.status != SopStatus.ARCHIVED.value)
        total = (await self.conn.execute(
            select(func.count()).select_from(sops).where(cond))).scalar_one()
        rows = (await self.conn.execute(
            select(sops).where(cond).order_by(sops.c.created_at.desc(), sops.c.id)
            .limit(limit).offset(offset))).mappings().all()
        return await self._hydrate(rows), total

    async def _hydrate(self, rows: list, with_content: bool = True) -> list[Sop]:
        if not rows:
            return []
        tasks = await self._content([r["id"] for r in rows]) if with_content else {}
        return [Sop(id=r["id"], family_id=r["family_id"], version=r["version"],
                    status=SopStatus(r["status"]), title=r["title"], description=r["description"],
                    tasks=tasks.get(r["id"], []), created_at=r["created_at"],
                    updated_at=r["updated_at"], confirmed_at=r["confirmed_at"]) for r in rows]

    async def _content(self, ids: list[UUID]) -> dict[UUID, list[SopTask]]:
        """The tasks of each SOP, with their steps."""
        task_rows = (await self.conn.execute(select(sop_tasks).where(sop_tasks.c.sop_id.in_(ids))
                                             .order_by(sop_tasks.c.position))).mappings().all()
        step_rows = (await self.conn.execute(select(sop_steps).where(sop_steps.c.sop_id.in_(ids))
                                             .order_by(sop_steps.c.position))).mappings().all()
        steps_by_task: dict[UUID, list[SopStep]] = {}
        for s in step_rows:
            steps_by_task.setdefault(s["task_id"], []).append(SopStep(
                id=s["id"], title=s["title"], instructions=s["instructions"],
                position=s["position"],
                check=CheckSpec(kind=CheckKind(s["check_kind"]), prompt=s["check_prompt"],
                                unit=s["check_unit"], min=s["check_min"], max=s["check_max"],
                                # steps from before the rule existed: optional
                                evidence=EvidenceRule(s["check_evidence"] or "optional"),
                                verify=bool(s["check_verify"]),
                                on_fail=OnFail(s["check_on_fail"] or "retry"),
                                severity=Severity(s["check_severity"] or "major"))))
        tasks_by_sop: dict[UUID, list[SopTask]] = {}
        for t in task_rows:
            tasks_by_sop.setdefault(t["sop_id"], []).append(SopTask(
                id=t["id"], title=t["title"], position=t["position"],
                steps=steps_by_task.get(t["id"], [])))
        return tasks_by_sop

    async def latest_version(self, family_id: UUID) -> int:
        return (await self.conn.execute(select(func.max(sops.c.version))
                                   .where(sops.c.family_id == family_id))).scalar_one() or 0

    async def is_referenced(self, sop_id: UUID) -> bool:
        row = (await self.conn.execute(select(work_sessions.c.id)
                                  .where(work_sessions.c.sop_id == sop_id).limit(1))).first()
        return row is not None

    async def delete_sop(self, sop_id: UUID) -> None:
        await self.conn.execute(delete(sops).where(sops.c.id == sop_id))
