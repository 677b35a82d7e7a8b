"""Writes a session and all its checks to the read model in one transaction (session-007)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio import activity

from persistence import sessions
from persistence.db import Database
from workflows.messages import PERSIST_ACTIVITY, PersistSession


class SessionStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @activity.defn(name=PERSIST_ACTIVITY)
    async def persist_session(self, req: PersistSession) -> bool:
        """Idempotent and ordered: a retry or a late duplicate never overwrites newer state.

        A cancelled attempt (the worker shutting down, a timeout) lets its transaction run to
        its end: a cancellation reaching SQLAlchemy in the middle of a statement leaves the
        connection out of the pool still holding its transaction (on SQLite, the write lock,
        so every later write waits out the busy timeout)."""
        return await asyncio.shield(asyncio.ensure_future(self._save(req)))

    async def _save(self, req: PersistSession) -> bool:
        async with self._db.write() as conn:
            return await sessions.save(self._db, conn, req.state, req.workflow_id, req.run_id,
                                       datetime.now(UTC), run_position=req.run_position)
