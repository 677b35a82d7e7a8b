"""The evidence cleanup's work (workflows/evidence_cleanup.py), on the worker's database and
evidence store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from temporalio import activity

from application import evidence
from application.ports import EvidenceStore
from persistence.db import Database
from persistence.uow import SqlStore
from workflows.evidence_cleanup import REMOVE_UNATTACHED_ACTIVITY, CleanupInput


class EvidenceCleanup:
    def __init__(self, db: Database, files: EvidenceStore) -> None:
        self._store = SqlStore(db)
        self._files = files

    @activity.defn(name=REMOVE_UNATTACHED_ACTIVITY)
    async def remove_unattached(self, inp: CleanupInput) -> int:
        return await evidence.remove_unattached(
            self._store, self._files, timedelta(seconds=inp.older_than_seconds),
            datetime.now(UTC))
