"""What the use cases need from the outside, said in their own terms: a unit of work with its
repositories (implemented in persistence/), and the session workflows (in orchestration/).
Use cases import these, never an implementation, so each can run against fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from domain.changes import AuditFacts, SessionChange
from domain.evidence import Evidence
from domain.nonconformance import NcFilter, NcStatus, Nonconformance, OpenNc
from domain.people import Person
from domain.signature import Signature
from domain.sop import SessionPlan, Sop, SopStatus
from domain.spc import Baseline, ChartState
from domain.webhooks import Pending, Subscription
from domain.work_session import CheckSubmission, SessionFilter, SessionState, WorkSession

# ---- the database --------------------------------------------------------------------------


@dataclass
class StoredSession:
    """A session as recorded: the aggregate (its row and its SOP's plan) and its run, and its
    worker's name as the directory of people has it (None when it has none)."""

    session: WorkSession
    workflow_id: str
    run_id: str | None
    worker_name: str | None = None

    @property
    def state(self) -> SessionState:
        return self.session.state


@dataclass
class ActiveSessionRef:
    id: UUID
    worker_id: UUID
    started_at: datetime


@dataclass
class Percentiles:
    median: float | None = None
    p90: float | None = None


@dataclass
class StepStats:
    reached: int = 0
    passed: int = 0
    first_try_passed: int = 0
    tried: int = 0  # reached and checked at least once
    failed_checks: int = 0
    seconds: Percentiles | None = None  # of the passed ones: time until passed


@dataclass
class SopStats:
    sessions: dict[str, int]  # by status
    session_seconds: Percentiles  # completed sessions: active time, pauses not counted
    steps: dict[UUID, StepStats]


class SessionRepository(Protocol):
    written: list[SessionChange]  # what this unit of work wrote (counted once committed)
    # the written checks whose value broke a rule of its SPC chart: check id -> (chart, rules)
    out_of_control: dict[UUID, tuple[UUID, list[int]]]

    async def write_change(self, change: SessionChange) -> bool: ...
    async def record_rejection(self, session_id: UUID, facts: AuditFacts,
                               at: datetime) -> None: ...
    async def record_entry(self, session_id: UUID, facts: AuditFacts,
                           at: datetime) -> None: ...
    async def load(self, session_id: UUID, *, with_checks: bool = True,
                   for_update: bool = False) -> StoredSession | None: ...
    async def active_for_worker(self, worker_id: UUID, *,
                                with_checks: bool = True) -> StoredSession | None: ...
    async def owner(self, session_id: UUID) -> UUID | None: ...
    async def chain_head(self, session_id: UUID) -> tuple[int, str]: ...
    async def list_page(self, owner: UUID | None, f: SessionFilter, limit: int,
                        offset: int) -> tuple[list[dict], int]: ...
    async def active_not_updated_since(self, before: datetime,
                                       limit: int = 1000) -> list[StoredSession]: ...
    async def count_needing_attention(self) -> int: ...
    async def active_for_sop(self, sop_id: UUID) -> list[ActiveSessionRef]: ...


class SopRepository(Protocol):
    async def get(self, sop_id: UUID, *, lock: str | None = None,
                  with_content: bool = True) -> Sop | None: ...
    async def plan(self, sop_id: UUID) -> SessionPlan: ...
    async def add(self, sop: Sop, created_by: UUID | None = None) -> None: ...
    async def replace_content(self, sop: Sop) -> None: ...
    async def save_status(self, sop: Sop) -> None: ...
    async def list_page(self, status: SopStatus | None, limit: int,
                        offset: int) -> tuple[list[Sop], int]: ...
    async def latest_version(self, family_id: UUID) -> int: ...
    async def is_referenced(self, sop_id: UUID) -> bool: ...
    async def delete_sop(self, sop_id: UUID) -> None: ...


class AuditRepository(Protocol):
    async def append_to_sop_family(self, family_id: UUID, facts: AuditFacts,
                                   at: datetime) -> None: ...
    async def list_page(self, session_id: UUID | None, limit: int,
                        offset: int, chain: str | None = None) -> tuple[list[dict], int]: ...
    async def of_session(self, session_id: UUID) -> list[dict[str, Any]]: ...
    async def of_chain(self, chain: str) -> list[dict[str, Any]]: ...
    async def verify(self, anchor: dict[str, Any] | None = None
                     ) -> tuple[int, list[str]]: ...
    async def anchor(self, now: datetime) -> dict[str, Any]: ...


class EvidenceRepository(Protocol):
    async def hold_bytes(self, sha256: str) -> None: ...
    async def add(self, e: Evidence) -> None: ...
    async def get(self, evidence_id: UUID) -> Evidence | None: ...
    async def find(self, session_id: UUID, sha256: str) -> Evidence | None: ...
    async def of_session(self, session_id: UUID) -> list[Evidence]: ...
    async def named(self, session_id: UUID, ids: Iterable[UUID],
                    at: datetime) -> list[Evidence]: ...
    async def unattached_before(self, before: datetime, limit: int) -> list[str]: ...
    async def remove_unattached(self, sha256: str, before: datetime) -> int: ...
    async def names_bytes(self, sha256: str) -> bool: ...


class StatsQuery(Protocol):
    async def of(self, sop_id: UUID, since: datetime | None,
                 until: datetime | None) -> SopStats: ...


@dataclass(frozen=True)
class SpcPoint:
    check_id: UUID
    session_id: UUID
    value: float
    at: datetime


@dataclass
class SpcChart:
    """A chart as the read model has it: its state (baseline), how many values the window
    holds, the last of them (oldest first) and the values just before those."""

    state: ChartState
    n: int
    points: list[SpcPoint]
    before: list[float]


class SpcCharts(Protocol):
    async def read(self, family_id: UUID, chart: UUID, since: datetime | None,
                   until: datetime | None, limit: int) -> SpcChart: ...
    async def set_baseline(self, family_id: UUID, chart: UUID, start: datetime,
                           end: datetime, now: datetime) -> Baseline: ...


class PeopleRepository(Protocol):
    async def seen(self, person_id: UUID, name: str | None, role: str, at: datetime, *,
                   stale_before: datetime) -> None: ...
    async def get(self, person_id: UUID) -> Person | None: ...
    async def list_page(self, q: str | None, role: str | None, limit: int,
                        offset: int) -> tuple[list[Person], int]: ...


class EventRepository(Protocol):
    """Webhooks: the outbox and the subscriptions (CONTRACT.md, "Webhooks").

    `record` is how any use case sends an event: call it in the transaction of the change that
    causes it (`uow.events.record("nonconformance.opened", data, session_id=...)`), with `data`
    the resource as the API shows it. It records the event with a pending delivery to each
    subscription that wants it (nothing when none does); whoever opened the unit of work
    starts their delivery once it commits (application/context.Context.uow), and a backstop
    finds any whose start was lost. Events of one session are delivered in order."""

    streams: set[tuple[UUID, str]]  # (subscription, stream) that got work: start them

    async def wanted(self, event_type: str) -> bool: ...
    async def record(self, event_type: str, data: dict[str, Any],
                     session_id: UUID | None = None, *, at: datetime | None = None,
                     version: int = 0, index: int = 0) -> str | None: ...
    async def add_subscription(self, sub: Subscription, secret: str) -> None: ...
    async def subscriptions(self) -> list[Subscription]: ...
    async def subscription(self, subscription_id: UUID) -> Subscription | None: ...
    async def secret(self, subscription_id: UUID) -> str | None: ...
    async def remove_subscription(self, subscription_id: UUID) -> bool: ...
    async def deliveries(self, subscription_id: UUID, limit: int, offset: int, *,
                         delivery_id: UUID | None = None
                         ) -> tuple[list[dict[str, Any]], int]: ...
    async def redeliver(self, subscription_id: UUID, delivery_id: UUID,
                        at: datetime) -> bool: ...
    async def pending(self, subscription_id: UUID, stream: str,
                      limit: int) -> list[Pending]: ...
    async def attempted(self, delivery: Pending, at: datetime, status_code: int | None,
                        error: str | None, outcome: str) -> bool: ...
    async def stranded(self, queued_before: datetime,
                       limit: int = 1000) -> list[tuple[UUID, str]]: ...


class NonconformanceRepository(Protocol):
    async def add(self, nc: Nonconformance, entries: list[AuditFacts],
                  at: datetime) -> None: ...
    async def save(self, nc: Nonconformance, entries: list[AuditFacts], at: datetime,
                   dedup_key: str | None = None) -> bool: ...
    async def get(self, nc_id: UUID, *, for_update: bool = False
                  ) -> Nonconformance | None: ...
    async def worker_of(self, nc_id: UUID) -> tuple[bool, UUID | None]: ...
    async def open_of_session(self, session_id: UUID) -> list[OpenNc]: ...
    async def of_session(self, session_id: UUID) -> list[Nonconformance]: ...
    async def released_between(self, since: datetime, before: datetime, limit: int = 1000
                               ) -> list[Nonconformance]: ...
    async def chain_head(self, nc_id: UUID) -> tuple[int, str]: ...
    async def opened_by_hand_before(self, before: datetime, limit: int = 1000
                                    ) -> list[tuple[Nonconformance, UUID]]: ...
    async def list_page(self, worker: UUID | None, f: NcFilter, limit: int,
                        offset: int) -> tuple[list[Nonconformance], int]: ...


class UnitOfWork(Protocol):
    """One transaction: committed when its block ends, rolled back when it raises."""

    sessions: SessionRepository
    sops: SopRepository
    audit: AuditRepository
    stats: StatsQuery
    people: PeopleRepository
    evidence: EvidenceRepository
    spc: SpcCharts
    events: EventRepository
    nonconformances: NonconformanceRepository


class Store(Protocol):
    """Where units of work come from. `snapshot` (read only): all reads see one moment."""

    def __call__(self, *, read_only: bool = False,
                 snapshot: bool = False) -> AbstractAsyncContextManager[UnitOfWork]: ...
    async def ping(self) -> None: ...


# ---- the evidence store --------------------------------------------------------------------


class Incoming(Protocol):
    """A file received whole into the store's scratch space, hashed on its way in, under no
    name anyone reads. It is gone when its `receive` block ends, unless kept."""

    sha256: str
    bytes: int

    async def keep(self) -> None:
        """Make it visible under its sha256, all at once (never a partial file under the
        hash). Bytes already there under that hash stay as they are."""


class EvidenceStore(Protocol):
    """Where evidence files' bytes are kept, each under its sha256 (persistence/files.py: a
    directory, or S3-compatible object storage)."""

    def receive(self, chunks: AsyncIterator[bytes]
                ) -> AbstractAsyncContextManager[Incoming]: ...
    async def open(self, sha256: str) -> AsyncIterator[bytes]:
        """The bytes, streamed; FileNotFoundError (before any byte) when there are none."""
    async def exists(self, sha256: str) -> bool: ...
    async def delete(self, sha256: str) -> None: ...
    async def sweep(self) -> int:
        """Remove scratch files a killed process left (where they can have a name)."""


# ---- the session workflows -----------------------------------------------------------------


class RunClosed(Exception):
    """The worker's workflow run has closed (or is not there): the database is the record."""


@dataclass(frozen=True)
class Running:
    """The open run of a worker's workflow, and the session it holds."""

    session_id: UUID | None
    run_id: str


class WorkflowRunning(Exception):
    """The worker's workflow ID is taken by a run that is still open."""

    def __init__(self, running: Running | None) -> None:
        super().__init__(f"running {running}")
        self.running = running


ACTIVITY_FAILING = "activity_failing"
WORKFLOW_TASK_FAILING = "workflow_task_failing"
NO_WORKER = "no_worker"


@dataclass
class Stuck:
    """A session workflow that cannot make progress, and why (`kind`, one of the above)."""

    workflow_id: str
    run_id: str
    session_id: str | None
    worker_id: str | None
    sop_id: str | None
    kind: str
    reason: str
    attempts: int
    since: datetime | None
    last_error: str | None
    activity_id: str | None = None
    next_attempt_at: datetime | None = None


class SessionWorkflows(Protocol):
    """Each worker's session workflow. Every call is bounded in time (Unavailable past it);
    a domain rule the run refuses comes back as the same domain error."""

    async def start(self, plan: SessionPlan, state: SessionState,
                    change: SessionChange | None) -> str: ...
    async def running(self, worker_id: UUID) -> Running | None: ...
    async def wait_closed(self, worker_id: UUID, run_id: str, within: float) -> bool: ...
    async def terminate(self, worker_id: UUID, run_id: str, reason: str) -> None: ...
    def workflow_id(self, worker_id: UUID) -> str: ...
    async def submit_check(self, worker_id: UUID, session_id: UUID, sub: CheckSubmission,
                           facts: AuditFacts) -> SessionChange | None: ...
    async def command(self, worker_id: UUID, name: str, session_id: UUID,
                      reason: str | None, facts: AuditFacts) -> SessionChange | None: ...
    async def verify(self, worker_id: UUID, session_id: UUID, signature: Signature,
                     facts: AuditFacts) -> SessionChange | None: ...
    async def ask_to_write(self, worker_id: UUID) -> bool: ...
    async def measured_out_of_control(self, worker_id: UUID, session_id: UUID) -> None:
        """Tell the worker's run that a measured value of the session broke an SPC rule."""
    async def start_nonconformance(self, nc: Nonconformance, worker_id: UUID, *,
                                   notify_session: bool) -> None:
        """The NC's own workflow (idempotent: one already running is kept)."""
    async def follow_nonconformance(self, nc: Nonconformance, worker_id: UUID) -> bool:
        """Start the NC's workflow (as opened by hand) unless one runs, or one ran to its
        end: whether it started one."""
    async def nonconformance_changed(self, nc_id: UUID, status: NcStatus) -> None:
        """Tell the NC's workflow where its record stands now."""
    async def nonconformance_behind(self, nc_id: UUID, status: NcStatus) -> bool:
        """Whether the NC's running workflow still takes it for open while its record has
        moved on to `status` (a `changed` signal lost)."""
    async def live(self, worker_id: UUID) -> StoredSession:
        """The session the worker's open run holds (RunClosed when none is open)."""
    async def find_stuck(self) -> list[Stuck]: ...
    async def diagnose(self, worker_id: UUID) -> Stuck | None: ...
    async def retry(self, stuck: Stuck) -> str: ...



# ---- webhook deliveries --------------------------------------------------------------------


class Deliveries(Protocol):
    """The durable delivery of recorded events (orchestration/webhooks.py): `start` makes
    sure each stream's pending deliveries are being delivered (bounded in time; it raises
    when it cannot reach Temporal: the events stay recorded, the backstop starts them)."""

    async def start(self, streams: Iterable[tuple[UUID, str]]) -> None: ...
