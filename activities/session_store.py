"""Writes a session and all its checks to the read model in one transaction (session-007)."""

from __future__ import annotations

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
        """Idempotent and ordered: a retry or a late duplicate never overwrites newer state."""
        async with self._db.write() as conn:
            return await sessions.save(self._db, conn, req.state, req.workflow_id, req.run_id,
                                       datetime.now(UTC), run_position=req.run_position)
