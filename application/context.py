"""What the use cases need, built once per process: the ports (application/ports.py) and
the caches and clock they share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from application.metrics import Meter, NoMeter, count_written
from application.ports import EvidenceStore, SessionWorkflows, Store, UnitOfWork


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    store: Store
    workflows: SessionWorkflows
    owners: OwnerCache = field(default_factory=OwnerCache)
    clock: Callable[[], datetime] = utcnow
    meter: Meter = field(default_factory=NoMeter)
    files: EvidenceStore | None = None  # evidence files' bytes (None: uploads are 503)
    max_evidence_bytes: int = 20 * 1024 * 1024

    @asynccontextmanager
    async def uow(self, *, read_only: bool = False,
                  snapshot: bool = False) -> AsyncIterator[UnitOfWork]:
        """One transaction: committed when the block ends, rolled back when it raises.
        `snapshot` (read only): all its reads see one moment. What it wrote is counted once
        committed."""
        async with self.store(read_only=read_only, snapshot=snapshot) as uow:
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
