"""The unit of work (application/ports.py): one transaction with the session, SOP, audit,
statistics, people, evidence and webhook repositories on it; `SqlStore` makes them for one
database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.audit import AuditLog
from persistence.db import Database
from persistence.evidence import EvidenceRepository
from persistence.nonconformances import NonconformanceRepository
from persistence.people import PeopleRepository
from persistence.session_stats import SopStatsQuery
from persistence.sessions import SessionRepository
from persistence.sops import PlanCache, SopRepository
from persistence.spc import SpcCharts
from persistence.webhooks import SecretBox, WebhookRepository


class UnitOfWork:
    def __init__(self, conn: AsyncConnection, plans: PlanCache,
                 box: SecretBox | None = None) -> None:
        self.sops = SopRepository(conn, plans)
        self.sessions = SessionRepository(conn, self.sops)
        self.audit = AuditLog(conn)
        self.stats = SopStatsQuery(conn)
        self.people = PeopleRepository(conn)
        self.evidence = EvidenceRepository(conn)
        self.spc = SpcCharts(conn, self.sops)
        self.events = WebhookRepository(conn, box)
        self.nonconformances = NonconformanceRepository(conn)


class SqlStore:
    def __init__(self, db: Database, box: SecretBox | None = None) -> None:
        """`box` seals and opens webhook secrets (None: webhooks cannot be added or sent)."""
        self.db = db
        self.plans = PlanCache()
        self.box = box

    @asynccontextmanager
    async def __call__(self, *, read_only: bool = False,
                       snapshot: bool = False) -> AsyncIterator[UnitOfWork]:
        """Committed when the block ends, rolled back when it raises. `snapshot` (read
        only): all its reads see one moment, whatever commits meanwhile."""
        async with (self.db.read(snapshot=snapshot) if read_only else self.db.write()) as conn:
            yield UnitOfWork(conn, self.plans, self.box)

    async def ping(self) -> None:
        await self.db.ping()
