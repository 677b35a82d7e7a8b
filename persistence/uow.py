"""The unit of work: one transaction with the session, SOP and audit repositories on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.audit import AuditLog
from persistence.db import Database
from persistence.session_stats import SopStatsQuery
from persistence.sessions import SessionRepository
from persistence.sops import SopRepository


class UnitOfWork:
    def __init__(self, conn: AsyncConnection) -> None:
        self.sessions = SessionRepository(conn)
        self.sops = SopRepository(conn)
        self.audit = AuditLog(conn)
        self.stats = SopStatsQuery(conn)

    @classmethod
    @asynccontextmanager
    async def begin(cls, db: Database, *, read_only: bool = False, snapshot: bool = False
                    ) -> AsyncIterator[UnitOfWork]:
        """Committed when the block ends, rolled back when it raises. `snapshot` (read
        only): all its reads see one moment, whatever commits meanwhile."""
        async with (db.read(snapshot=snapshot) if read_only else db.write()) as conn:
            yield cls(conn)
