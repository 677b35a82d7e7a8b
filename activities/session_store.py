"""The run's own write of the changes it holds (see workflows/work_session.py)."""

from __future__ import annotations

import asyncio
import logging

from temporalio import activity

from application.events import Render, record_change, start_deliveries, tell_out_of_control
from application.metrics import Meter, NoMeter, count_written
from application.ports import Deliveries, SessionWorkflows
from domain.changes import SessionChange
from persistence.db import Database
from persistence.uow import SqlStore
from workflows.messages import WRITE_CHANGES_ACTIVITY
from worksession import logs

log = logging.getLogger("worksession.worker")


class SessionStore:
    def __init__(self, db: Database, meter: Meter | None = None, render: Render | None = None,
                 deliveries: Deliveries | None = None,
                 workflows: SessionWorkflows | None = None) -> None:
        """With `render`, the webhook events of the changes it writes are recorded with them
        (application/events.py), and their delivery started by `deliveries`; with
        `workflows`, the run of a session it finds out of control is told (its own)."""
        self._store = SqlStore(db)
        self._meter = meter or NoMeter()
        self._render = render
        self._deliveries = deliveries
        self._workflows = workflows

    @activity.defn(name=WRITE_CHANGES_ACTIVITY)
    async def write_changes(self, changes: list[SessionChange]) -> int:
        """Each change with its audit entries, in one transaction; a change already written
        (by the API, or by an earlier attempt) is skipped. Returns how many were new.

        A cancelled attempt (the worker shutting down, a timeout) lets its transaction run to
        its end: a cancellation reaching SQLAlchemy in the middle of a statement leaves the
        connection out of the pool still holding its transaction (on SQLite, the write lock,
        so every later write waits out the busy timeout)."""
        state = changes[-1].state
        # For the rest of this activity's task: its own lines, and the SDK's when it fails.
        # The run is the one writing (not always the one that took the changes: they cross
        # continue-as-new); outside an activity (tests call this directly) the changes say.
        run_id = activity.info().workflow_run_id if activity.in_activity() \
            else changes[-1].run_id
        logs.bind(session_id=state.id, worker_id=state.worker_id,
                  workflow_id=changes[-1].workflow_id, run_id=run_id)
        new = await asyncio.shield(asyncio.ensure_future(self._write(changes)))
        log.info("the run's changes recorded: versions %d-%d, %d new (the rest were written "
                 "already)", changes[0].state.version, state.version, new)
        return new

    async def _write(self, changes: list[SessionChange]) -> int:
        async with self._store() as uow:
            written = 0
            for c in changes:
                if await uow.sessions.write_change(c):
                    written += 1
                    if self._render is not None:  # the session as this change left it
                        await record_change(uow, c, self._render)
        count_written(self._meter, uow.sessions.written)
        await tell_out_of_control(self._workflows, uow.sessions.written,
                                  uow.sessions.out_of_control)
        await start_deliveries(self._deliveries, uow.events.streams)
        return written
