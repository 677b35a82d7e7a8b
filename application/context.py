"""What the use cases need, built once per process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from domain.errors import NotFound
from domain.sop import SessionPlan, SopStatus
from persistence import sops
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


@dataclass
class Context:
    db: Database
    workflows: SessionWorkflows
    plans: PlanCache = field(default_factory=PlanCache)
    clock: Callable[[], datetime] = utcnow
