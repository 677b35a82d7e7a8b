"""What the use cases need, built once per process: the ports (application/ports.py) and
the caches and clock they share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from application.authz import Actor, Role
from application.events import Render, record_change, start_deliveries, tell_out_of_control
from application.metrics import Meter, NoMeter, count_written
from application.ports import Deliveries, EvidenceStore, SessionWorkflows, Store, UnitOfWork
from domain.nonconformance import Deadlines


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


@dataclass(frozen=True)
class Seen:
    name: str | None
    role: Role
    at: datetime


@dataclass
class SeenPeople:
    """What this process last wrote to the directory of people, per person, so that a
    request whose caller it already wrote costs nothing: a write is due only for someone not
    written yet, a role or a name that differs (a token without a name keeps the known
    one), or a `last_seen` older than `every`. Bounded; the oldest go first (and are simply
    written again when seen again)."""

    every: timedelta = timedelta(minutes=1)
    limit: int = 100_000
    seen: dict[UUID, Seen] = field(default_factory=dict)

    def due(self, actor: Actor, now: datetime) -> bool:
        last = self.seen.get(actor.id)
        return (last is None or last.role != actor.role or now - last.at >= self.every
                or (actor.name is not None and actor.name != last.name))

    def written(self, actor: Actor, now: datetime) -> None:
        last = self.seen.pop(actor.id, None)
        if len(self.seen) >= self.limit:
            self.seen.pop(next(iter(self.seen)))
        name = actor.name if actor.name is not None or last is None else last.name
        self.seen[actor.id] = Seen(name, actor.role, now)

    def name_of(self, person_id: UUID) -> str | None:
        """The name this process last wrote for them (the directory's, unless another
        process has written a newer one since)."""
        last = self.seen.get(person_id)
        return last.name if last is not None else None


@dataclass
class Context:
    store: Store
    workflows: SessionWorkflows
    owners: OwnerCache = field(default_factory=OwnerCache)
    people: SeenPeople = field(default_factory=SeenPeople)
    clock: Callable[[], datetime] = utcnow
    meter: Meter = field(default_factory=NoMeter)
    files: EvidenceStore | None = None  # evidence files' bytes (None: uploads are 503)
    max_evidence_bytes: int = 20 * 1024 * 1024
    signature_max_age: int = 300  # seconds since the signer authenticated, at most
    # Webhooks: how events show resources (None: no events are recorded), who delivers them,
    # whether http and private addresses are allowed, and how a host name is resolved.
    render: Render | None = None
    deliveries: Deliveries | None = None
    webhook_allow_insecure: bool = False
    resolve: Callable[[str, int], Awaitable[list[str]]] | None = None
    nc_deadlines: Deadlines = field(default_factory=Deadlines)  # of NCs opened by hand

    @asynccontextmanager
    async def uow(self, *, read_only: bool = False,
                  snapshot: bool = False) -> AsyncIterator[UnitOfWork]:
        """One transaction: committed when the block ends, rolled back when it raises.
        `snapshot` (read only): all its reads see one moment. What it wrote is counted once
        committed. The webhook events of the session changes it wrote are recorded in it, and
        their delivery started once it is committed; the runs of sessions it found out of
        control are told then."""
        async with self.store(read_only=read_only, snapshot=snapshot) as uow:
            yield uow
            if self.render is not None:
                for change in uow.sessions.written:
                    await record_change(uow, change, self.render)
        count_written(self.meter, uow.sessions.written)
        if not read_only:
            await tell_out_of_control(self.workflows, uow.sessions.written,
                                      uow.sessions.out_of_control)
            if self.render is not None:
                await start_deliveries(self.deliveries, uow.events.streams)

    async def owner(self, session_id: UUID) -> UUID | None:
        owner = self.owners.known(session_id)
        if owner is None:
            async with self.uow(read_only=True) as uow:
                owner = await uow.sessions.owner(session_id)
            if owner is not None:
                self.owners.remember(session_id, owner)
        return owner
