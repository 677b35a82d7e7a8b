"""What the use cases need, built once per process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from application.metrics import Meter, NoMeter, count_written
from domain.errors import NotFound
from domain.sop import SessionPlan, SopStatus
from orchestration.client import SessionWorkflows
from persistence.db import Database
from persistence.uow import UnitOfWork


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class PlanCache:
    """A confirmed SOP's content never changes, so its plan is cached for good."""

    plans: dict[UUID, SessionPlan] = field(default_factory=dict)

    async def get(self, uow: UnitOfWork, sop_id: UUID) -> SessionPlan:
        plan = self.plans.get(sop_id)
        if plan is None:
            sop = await uow.sops.get(sop_id)
            if sop is None:
                raise NotFound("SOP not found")
            plan = sop.plan()
            if sop.status is not SopStatus.DRAFT:
                self.plans[sop_id] = plan
        return plan


@dataclass
class OwnerCache:
    """Whose a session is never changes (sessions are neither deleted nor handed over), so
    the answer is kept: every request on a session asks it first (404 before anything).
    Bounded; the oldest answers go first. Unknown ids are not kept."""

    limit: int = 100_000
    owners: dict[UUID, UUID] = field(default_factory=dict)

    def known(self, session_id: UUID) -> UUID | None:
        return self.owners.get(session_id)

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
    meter: Meter = field(default_factory=NoMeter)

    @asynccontextmanager
    async def uow(self, *, read_only: bool = False,
                  snapshot: bool = False) -> AsyncIterator[UnitOfWork]:
        """One transaction: committed when the block ends, rolled back when it raises.
        `snapshot` (read only): all its reads see one moment. What it wrote is counted once
        committed."""
        async with UnitOfWork.begin(self.db, read_only=read_only, snapshot=snapshot) as uow:
            yield uow
        count_written(self.meter, uow.sessions.written)

    async def owner(self, session_id: UUID) -> UUID | None:
        owner = self.owners.known(session_id)
        if owner is None:
            async with self.uow(read_only=True) as uow:
                owner = await uow.sessions.owner(session_id)
            if owner is not None:
                self.owners.remember(session_id, owner)
        return owner
