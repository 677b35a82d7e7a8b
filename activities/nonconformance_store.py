"""The NC workflow's one activity: a missed deadline, decided and recorded on the NC's row
(see workflows/nonconformance.py); and the `NonconformanceSweep`'s, starting the workflows
the API did not."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from temporalio import activity
from temporalio.exceptions import ApplicationError

from application.events import Render
from application.nonconformances import follow_up, mark_overdue
from application.ports import Deliveries, SessionWorkflows
from persistence.db import Database
from persistence.uow import SqlStore
from workflows.messages import NC_FOLLOW_ACTIVITY, NC_OVERDUE_ACTIVITY, NcOverdue


class NonconformanceStore:
    def __init__(self, db: Database, render: Render | None = None,
                 deliveries: Deliveries | None = None,
                 workflows: SessionWorkflows | None = None) -> None:
        self._store = SqlStore(db)
        self._render, self._deliveries = render, deliveries  # its webhook event
        self._workflows = workflows

    @activity.defn(name=NC_FOLLOW_ACTIVITY)
    async def follow_up(self, grace_seconds: float) -> int:
        assert self._workflows is not None
        return await follow_up(self._store, self._workflows, datetime.now(UTC),
                               timedelta(seconds=grace_seconds))

    @activity.defn(name=NC_OVERDUE_ACTIVITY)
    async def mark_overdue(self, msg: NcOverdue) -> str:
        """Where the NC stands after the deadline; retried (its transaction runs to its end,
        as the session store's) until the NC is recorded."""
        status = await asyncio.shield(asyncio.ensure_future(
            mark_overdue(self._store, msg.nc_id, msg.deadline, msg.at, self._render,
                         self._deliveries)))
        if status is None:
            raise ApplicationError(f"nonconformance {msg.nc_id} is not recorded yet")
        return status
