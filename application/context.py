"""What the use cases need, built once per process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from domain.errors import NotFound
from domain.sop import SessionPlan, SopStatus
from persistence import sessions, sops
from persistence.db import Database
from workflows.client import SessionWorkflows


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class PlanCache:
    """A confirmed SOP's content never changes, so its plan is cached for good."""

    plans: dict[UUID, SessionPlan] = field(default_factory=dict)

    async def get(self, conn: AsyncConnection, sop_id: UUID) -> SessionPlan:
        plan = self.plans.get(sop_id)
        if plan is None:
            sop = await sops.get(conn, sop_id)
            if sop is None:
                raise NotFound("SOP not found")
            plan = sop.plan()
            if sop.status is not SopStatus.DRAFT:
                self.plans[sop_id] = plan
        return plan

    async def of(self, db: Database, sop_id: UUID) -> SessionPlan:
        """The plan, reading the database only when it is not cached."""
        plan = self.plans.get(sop_id)
        if plan is None:
            async with db.read() as conn:
                plan = await self.get(conn, sop_id)
        return plan


@dataclass
class OwnerCache:
    """Whose a session is never changes (sessions are neither deleted nor handed over), so
    the answer is kept: every request on a session asks it first (404 before anything).
    Bounded; the oldest answers go first. Unknown ids are not kept."""

    limit: int = 100_000
    owners: dict[UUID, UUID] = field(default_factory=dict)

    async def get(self, db: Database, session_id: UUID) -> UUID | None:
        owner = self.owners.get(session_id)
        if owner is None:
            async with db.read() as conn:
                owner = await sessions.owner(conn, session_id)
            if owner is not None:
                self.remember(session_id, owner)
        return owner

    def remember(self, session_id: UUID, owner: UUID) -> None:
        if len(self.owners) >= self.limit:
            self.owners.pop(next(iter(self.owners)))
        self.owners[session_id] = owner


@dataclass
class Context:
    db: Database
    workflows: SessionWorkflows
    plans: PlanCache = field(default_factory=PlanCache)
    owners: OwnerCache = field(default_factory=OwnerCache)
    clock: Callable[[], datetime] = utcnow
