"""Request and response bodies. Every string and list is bounded."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter

from domain.evidence import MAX_FILES_PER_CHECK, Evidence, EvidenceFile
from domain.nonconformance import Disposition, Nonconformance
from domain.signature import STATEMENT_MAX, Meaning, Signature
from domain.sop import CheckKind, CheckResult, EvidenceRule, OnFail, Severity
from domain.work_session import Check, CheckSubmission, VerificationWait, WorkSession

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold U+0000: refused at the door
NOT_BLANK = r"^[^\x00]*[^\s\x00][^\x00]*$"  # …and at least one non-space character


def Text(max_length: int, min_length: int = 0, strip: bool = False) -> Any:  # noqa: N802
    """A bounded string; `min_length=1` also means "not only spaces" (stripped first)."""
    return Annotated[str, StringConstraints(
        strip_whitespace=strip, min_length=min_length, max_length=max_length,
        pattern=NOT_BLANK if min_length else NO_NUL)]


Title = Text(200, 1, strip=True)
LongText = Text(5000)
Finite = Annotated[float, Field(allow_inf_nan=False, strict=True)]  # no true -> 1.0
Reason = Text(500, 1, strip=True)


VERIFY = ("a passed check on the step waits for a second person's `verified` signature "
          "(a supervisor or admin other than the worker) before the session moves on")
StrictBool = Annotated[bool, Field(strict=True)]
ON_FAIL = ("what a failed check on the step leads to: `retry` (the worker tries again), "
           "`nonconformance` (it opens a nonconformance; the worker may retry), `hold` (it "
           "opens one and the session takes no check until a supervisor contains it)")
SEVERITY = "the severity of the nonconformance a failed check on the step opens"

EVIDENCE_RULE = ("which checks on the step need an evidence file: `none` (no file may be "
                 "attached), `optional`, `required` (every check), `required_on_fail` (a "
                 "failed check)")


class ConfirmCheckIn(BaseModel):
    """The worker states passed or failed."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["confirm"]
    prompt: Text(500, 1, strip=True)  # type: ignore[valid-type]
    evidence: EvidenceRule = Field(EvidenceRule.OPTIONAL, description=EVIDENCE_RULE)
    verify: StrictBool = Field(False, description=VERIFY)
    on_fail: OnFail = Field(OnFail.RETRY, description=ON_FAIL)
    severity: Severity = Field(Severity.MAJOR, description=SEVERITY)


class MeasurementCheckIn(BaseModel):
    """The worker sends a number; the service decides from `min`/`max` (at least one;
    `min` <= `max`)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["min"], "properties": {"min": {"type": "number"}}},
        {"required": ["max"], "properties": {"max": {"type": "number"}}}]})
    kind: Literal["measurement"]
    prompt: Text(500, 1, strip=True)  # type: ignore[valid-type]
    unit: Text(32) | None = None  # type: ignore[valid-type]
    min: Finite | None = None
    max: Finite | None = None
    evidence: EvidenceRule = Field(EvidenceRule.OPTIONAL, description=EVIDENCE_RULE)
    verify: StrictBool = Field(False, description=VERIFY)
    on_fail: OnFail = Field(OnFail.RETRY, description=ON_FAIL)
    severity: Severity = Field(Severity.MAJOR, description=SEVERITY)


CheckSpecIn = Annotated[ConfirmCheckIn | MeasurementCheckIn, Field(discriminator="kind")]


class StepIn(BaseModel):
    title: Title
    instructions: LongText | None = None
    check: CheckSpecIn


class TaskIn(BaseModel):
    title: Title
    steps: list[StepIn] = Field(min_length=1, max_length=200)


class SopIn(BaseModel):
    title: Title
    description: LongText | None = None
    tasks: list[TaskIn] = Field(min_length=1, max_length=100)


class CheckSpecOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)  # built from domain.sop.CheckSpec
    kind: CheckKind
    prompt: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    evidence: EvidenceRule = EvidenceRule.OPTIONAL
    verify: bool = False
    on_fail: OnFail = OnFail.RETRY
    severity: Severity = Severity.MAJOR


class StepOut(BaseModel):
    id: UUID
    position: int
    title: str
    instructions: str | None
    check: CheckSpecOut


class TaskOut(BaseModel):
    id: UUID
    position: int
    title: str
    steps: list[StepOut]


class SopOut(BaseModel):
    id: UUID
    family_id: UUID
    version: int
    status: Literal["draft", "confirmed", "archived"]
    title: str
    description: str | None
    tasks: list[TaskOut]
    created_at: datetime
    updated_at: datetime
    confirmed_at: datetime | None


class StartSessionIn(BaseModel):
    sop_id: UUID


class CheckIn(BaseModel):
    step_id: UUID
    result: CheckResult | None = None
    value: Finite | None = None
    notes: Text(2000) | None = None  # type: ignore[valid-type]
    evidence_uri: Text(2048) | None = None  # type: ignore[valid-type]
    check_id: UUID | None = Field(
        default=None, description="client-chosen UUID: resending it records the check once")
    evidence_ids: tuple[UUID, ...] = Field(
        default=(), max_length=MAX_FILES_PER_CHECK,
        description="files uploaded to this session (`POST .../evidence`) that are evidence of "
                    "this check, each at most on one check")

    def submission(self) -> CheckSubmission:
        """The one shape of a check from here on: every field as the request has it."""
        return CheckSubmission(**self.model_dump(exclude={"check_id"}),
                               check_id=self.check_id or uuid4())


class EvidenceOut(BaseModel):
    """An upload: the file's bytes are at `GET /api/v1/evidence/{id}`."""

    id: UUID
    sha256: str = Field(description="of the file's bytes, hex; the name it is stored under")
    content_type: str = Field(description="decided from the file's first bytes")
    bytes: int
    filename: str | None
    uploaded_at: datetime
    uploaded_by: UUID
    session_id: UUID

    @classmethod
    def of(cls, e: Evidence) -> EvidenceOut:
        return cls.model_validate(e, from_attributes=True)


class EvidenceRecordOut(EvidenceOut):
    """An upload as the audit export lists it: with the check it is evidence of."""

    check_id: UUID | None
    attached_at: datetime | None


Statement = Text(STATEMENT_MAX)


class SignatureIn(BaseModel):
    meaning: Meaning = Field(description="`performed` (the session's worker, once it is "
                             "completed), `verified` (a second person, of the step awaiting "
                             "it) or `approved` (a supervisor or admin: locks the session)")
    step_id: UUID | None = Field(None, description="the step verified; only for `verified`")
    statement: Statement | None = None  # type: ignore[valid-type]


class ApproveIn(BaseModel):
    statement: Statement | None = None  # type: ignore[valid-type]


class CancelIn(BaseModel):
    reason: Reason


class ReopenIn(BaseModel):
    reason: Reason
    step_id: UUID | None = None


class TaskRef(BaseModel):
    id: UUID
    title: str


class CurrentStep(BaseModel):
    id: UUID
    title: str
    instructions: str | None
    check: CheckSpecOut
    task: TaskRef
    index: int
    total: int


class StepRef(BaseModel):
    id: UUID
    title: str


class SopRef(BaseModel):
    id: UUID
    title: str
    version: int


SessionStatusName = Literal["in_progress", "paused", "completed", "cancelled"]
WORKER_NAME = "the worker's name in the directory of people; null when it has none"


class StepTimeOut(BaseModel):
    step_id: UUID
    started_at: datetime
    passed_at: datetime | None
    active_seconds: float = Field(description="time on the step, paused time not counted; "
                                  "up to now while it is the current step")
    attempts: int = Field(description="checks submitted on it")


class HeldOut(BaseModel):
    nonconformance_id: UUID
    step_id: UUID


class SessionOut(BaseModel):
    id: UUID
    status: SessionStatusName
    sop: SopRef
    worker_id: UUID
    worker_name: str | None = Field(None, description=WORKER_NAME)
    current_step_id: UUID | None
    current_step: CurrentStep | None
    next_step: StepRef | None
    # The domain's record of a check is its shape here too: a field added to a check
    # (domain.work_session.CheckContent) shows without a line here.
    checks: list[Check] = Field(description="every check, in the order recorded")
    started_at: datetime
    paused_at: datetime | None
    paused_reason: str | None = None
    paused_seconds: float
    completed_at: datetime | None
    cancelled_at: datetime | None
    cancel_reason: str | None = None
    unchecked_step_ids: list[UUID] | None = None
    needs_attention: bool
    locked: bool
    approved_by: UUID | None
    approved_at: datetime | None
    workflow_id: str | None
    run_id: str | None
    step_times: list[StepTimeOut] = Field(
        description="one entry per step the session reached, in SOP order")
    awaiting_verification: VerificationWait | None = Field(
        None, description="the passed check on the current step that waits for a second "
        "person's `verified` signature; null when none does")
    signatures: list[Signature] = Field(
        default_factory=list, description="in signing order; never changed or removed")
    held: HeldOut | None = Field(
        None, description="the nonconformance that holds the session (a failed check on a "
        "`hold` step): no check is taken until a supervisor contains it; null when none")

    @classmethod
    def of(cls, session: WorkSession, *, workflow_id: str | None, run_id: str | None,
           now: datetime | None, worker_name: str | None = None) -> SessionOut:
        """The session in the contract's shape (the API's answers, the workflow's query and
        the audit export all use it); `now` counts the current step's time up to then;
        `worker_name` as the stored session has it (the workflow's query has none)."""
        s, plan = session.state, session.plan
        current = next_step = None
        if s.current_step_id is not None:
            i = plan.index_of(s.current_step_id)
            assert i is not None
            step = plan.steps[i]
            current = CurrentStep(
                id=step.id, title=step.title, instructions=step.instructions,
                check=CheckSpecOut.model_validate(step.check),
                task=TaskRef(id=step.task_id, title=step.task_title), index=i,
                total=len(plan.steps))
            if i + 1 < len(plan.steps):
                next_step = StepRef(id=plan.steps[i + 1].id, title=plan.steps[i + 1].title)
        order = {step.id: i for i, step in enumerate(plan.steps)}
        return cls(
            id=s.id, status=s.status.value,
            sop=SopRef(id=s.sop_id, title=s.sop_title, version=s.sop_version),
            worker_id=s.worker_id, worker_name=worker_name,
            current_step_id=s.current_step_id, current_step=current,
            next_step=next_step, checks=s.checks,
            started_at=s.started_at, paused_at=s.paused_at, paused_reason=s.paused_reason,
            paused_seconds=round(s.paused_seconds, 3), completed_at=s.completed_at,
            cancelled_at=s.cancelled_at, cancel_reason=s.cancel_reason,
            unchecked_step_ids=s.unchecked_step_ids, needs_attention=s.flagged,
            locked=s.locked, approved_by=s.approved_by, approved_at=s.approved_at,
            workflow_id=workflow_id, run_id=run_id,
            awaiting_verification=s.awaiting_verification, signatures=s.signatures,
            held=None if s.held_by is None else HeldOut(nonconformance_id=s.held_by.id,
                                                        step_id=s.held_by.step_id),
            step_times=[StepTimeOut(
                step_id=t.step_id, started_at=t.started_at, passed_at=t.passed_at,
                active_seconds=round(s.active_seconds(t, now), 3), attempts=t.attempts)
                for t in sorted(s.step_times, key=lambda t: order.get(t.step_id, 0))])


class _Render:
    """The resources webhook events carry, as the API shows them (application/events.Render)."""

    _check = TypeAdapter(Check)
    _signature = TypeAdapter(Signature)

    def session(self, stored: Any) -> dict[str, Any]:
        return SessionOut.of(stored.session, workflow_id=stored.workflow_id,
                             run_id=stored.run_id, now=None,
                             worker_name=stored.worker_name).model_dump(mode="json")

    def check(self, check: Check) -> dict[str, Any]:
        return self._check.dump_python(check, mode="json")

    def signature(self, signature: Signature) -> dict[str, Any]:
        return self._signature.dump_python(signature, mode="json")

    def nonconformance(self, nc: Nonconformance) -> dict[str, Any]:
        return NonconformanceOut.of(nc).model_dump(mode="json")


RENDER = _Render()


class SessionCounts(BaseModel):
    started: int
    completed: int
    cancelled: int
    in_progress: int = Field(description="in progress or paused")
    median_seconds: float | None = Field(
        description="completed sessions: time from start to completion, pauses not counted")
    p90_seconds: float | None


class StepStatsOut(BaseModel):
    step_id: UUID
    title: str
    reached: int
    passed: int
    first_try_pass_rate: float | None = Field(
        description="of the sessions that checked this step, the share whose first check "
        "passed; null when none did")
    failed_checks: int
    median_seconds: float | None = Field(
        description="of the sessions that passed it: time on it until passed, pauses not "
        "counted")
    p90_seconds: float | None


class SopStatsOut(BaseModel):
    """Percentiles interpolate linearly between the closest ranks (as PostgreSQL's
    percentile_cont): the median of 10, 20, 30, 40 is 25."""

    sop_id: UUID
    version: int
    sessions: SessionCounts
    steps: list[StepStatsOut] = Field(description="every step, in SOP order")


class SpcPointOut(BaseModel):
    check_id: UUID
    session_id: UUID
    value: float
    at: datetime
    rules: list[int] = Field(description="the Western Electric rules the value breaks: 1 one "
                             "point beyond 3 sigma; 2 two of three beyond 2 sigma on one side; "
                             "3 four of five beyond 1 sigma on one side; 4 eight in a row on "
                             "one side of the mean")


class SpcBaselineOut(BaseModel):
    n: int
    from_: datetime | None = Field(alias="from")
    to: datetime | None
    set_by: Literal["first values", "supervisor"]

    model_config = ConfigDict(populate_by_name=True)


class SpcOut(BaseModel):
    """An individuals and moving-range chart. Limits come from the baseline (the step's first
    25 values until a supervisor sets one); below 10 baseline values they are null."""

    step_id: UUID
    unit: str | None
    lsl: float | None
    usl: float | None
    n: int = Field(description="values in the window")
    mean: float | None
    sigma: float | None = Field(description="moving range / 1.128")
    ucl: float | None
    lcl: float | None
    mr_bar: float | None
    mr_ucl: float | None
    cp: float | None
    cpk: float | None
    baseline: SpcBaselineOut
    points: list[SpcPointOut] = Field(description="the window's last `limit` values, oldest "
                                      "first")


class SpcBaselineIn(BaseModel):
    """The window of values (both ends included) the chart's limits are to come from."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)
    from_: AwareDatetime = Field(alias="from")
    to: AwareDatetime


class SessionSummary(BaseModel):
    id: UUID
    status: SessionStatusName
    sop: SopRef
    worker_id: UUID
    worker_name: str | None = Field(None, description=WORKER_NAME)
    started_at: datetime
    completed_at: datetime | None
    cancelled_at: datetime | None
    locked: bool
    needs_attention: bool
    awaiting_verification: VerificationWait | None = None


class PersonOut(BaseModel):
    """Someone whose token the service has accepted, as their latest token showed them."""

    id: UUID
    name: str | None = Field(description="the token's `name`, else `preferred_username`; "
                             "null when no token of theirs carried one")
    role: Literal["worker", "supervisor", "admin"]
    first_seen: datetime
    last_seen: datetime = Field(description="their latest request, to within a minute")


class MeOut(BaseModel):
    """The caller as the API sees them: the role is the one the API decides on (an identity
    provider's claim after `WORKSESSION_ROLE_MAP`), not whatever the token's `role` says."""

    id: UUID
    name: str | None = Field(description="the name the caller's token carries, if any")
    role: Literal["worker", "supervisor", "admin"]


class AuditEntryOut(BaseModel):
    """Exactly the fields the hash covers, serialised as hashed: `hash` is
    sha256(prev_hash + JSON of every other field, keys sorted, separators (",", ":"),
    UTF-8 unescaped). `prev_hash` is the previous entry's hash in the same chain."""

    id: UUID
    chain: str = Field(description="session:<session id>, sop:<SOP family id> or "
                       "nc:<nonconformance id>")
    seq: int = Field(description="position in the chain, from 1")
    at: str = Field(description="ISO 8601 UTC, as hashed (e.g. 2026-11-25T21:00:00+00:00)")
    actor_id: UUID | None
    actor_role: str | None
    action: str
    session_id: UUID | None
    outcome: str
    detail: dict[str, Any] | None
    request_id: str | None
    hash: str
    prev_hash: str


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class Problem(BaseModel):
    """RFC 9457 problem details; extension members vary by problem."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str


# ---- nonconformances (CONTRACT.md, "Nonconformances") ------------------------------------
NcText = Text(5000, 1, strip=True)


class NcOpenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    session_id: UUID
    step_id: UUID | None = None
    severity: Severity
    description: NcText  # type: ignore[valid-type]


class ContainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    containment: NcText = Field(description="what was done to contain the problem")  # type: ignore[valid-type]


class CloseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disposition: Disposition
    corrective_action: NcText  # type: ignore[valid-type]
    statement: Text(STATEMENT_MAX) | None = Field(  # type: ignore[valid-type]
        None, description="the signer's statement on the closing `approved` signature")


class NonconformanceOut(BaseModel):
    id: UUID
    number: str = Field(description="NC-000001, …: gap-free across the service")
    status: Literal["open", "contained", "closed"]
    severity: Severity
    session_id: UUID
    sop_id: UUID
    step_id: UUID | None
    check_id: UUID | None
    description: str
    hold: bool = Field(description="whether it holds its session (a `hold` step's failed "
                       "check) until it is contained")
    opened_at: datetime
    opened_by: UUID | None = Field(description="null: opened by the service (a failed check)")
    owner_id: UUID | None
    containment: str | None
    contained_at: datetime | None
    contained_by: UUID | None
    disposition: Disposition | None
    corrective_action: str | None
    closed_at: datetime | None
    closed_by: UUID | None
    containment_due: datetime
    close_due: datetime
    overdue: bool
    evidence: list[EvidenceFile] = Field(description="the failed check's files")
    signature: Signature | None = Field(description="the closing `approved` signature")

    @classmethod
    def of(cls, nc: Nonconformance) -> NonconformanceOut:
        return cls(**{k: getattr(nc, k) for k in cls.model_fields if k != "number"},
                   number=nc.number_text or "")

