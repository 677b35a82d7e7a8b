"""The WorkSession aggregate: a worker walking an SOP's steps, one safety check at a time.

Time and ids come in as arguments, so the same code runs deterministically inside a
Temporal workflow and in the API against the read model."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from domain.errors import (
    Forbidden,
    InvalidInput,
    SessionHeld,
    SessionLocked,
    StepAwaitsVerification,
    StepNotAwaitingVerification,
    StepNotCurrent,
    WrongState,
)
from domain.evidence import EvidenceFile
from domain.nonconformance import Deadlines, OpenNc, nc_id_for
from domain.signature import Meaning, Signature
from domain.sop import CheckResult, OnFail, PlanStep, SessionPlan


class SessionStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (SessionStatus.IN_PROGRESS, SessionStatus.PAUSED)
CLOSED_STATUSES = (SessionStatus.COMPLETED, SessionStatus.CANCELLED)


@dataclass(frozen=True, kw_only=True)
class CheckContent:
    """What a worker states in a safety check, kept as stated. A check's new field goes here
    (and in the request model and the table that map to it by name), nowhere else."""

    step_id: UUID
    value: float | None = None
    notes: str | None = None
    evidence_uri: str | None = None
    # Files uploaded to the session (CONTRACT.md, "Evidence files"), in the order named.
    evidence: tuple[EvidenceFile, ...] = ()

    def content(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(CheckContent)}


@dataclass(frozen=True, kw_only=True)
class CheckSubmission(CheckContent):
    """A check as submitted: built once from the request, carried whole to `add_check`.
    The files it names (`evidence_ids`) are looked up among the session's uploads before it
    goes to the session (`with_files`), which needs the record: `evidence` holds them."""

    check_id: UUID
    result: CheckResult | None = None  # a measurement's result is decided from its value
    evidence_ids: tuple[UUID, ...] = ()

    def with_files(self, uploads: Iterable[EvidenceFile]) -> CheckSubmission:
        """The submission with the files it names, found among its session's `uploads`: an
        id that is not one of them (unknown, or another session's file) is refused."""
        found = {f.id: f for f in uploads}
        if len(set(self.evidence_ids)) != len(self.evidence_ids):
            raise InvalidInput("evidence_ids names a file twice", errors=[
                {"field": "evidence_ids", "message": "a file named twice"}])
        missing = [str(i) for i in self.evidence_ids if i not in found]
        if missing:
            raise InvalidInput(
                f"not uploaded to this session: {', '.join(missing)}", unknown_ids=missing,
                errors=[{"field": "evidence_ids", "message": "not an upload of this session"}])
        return replace(self, evidence=tuple(found[i] for i in self.evidence_ids))


@dataclass(frozen=True, kw_only=True)
class Check(CheckContent):
    """A recorded check."""

    id: UUID
    result: CheckResult
    checked_at: datetime
    checked_by: UUID


@dataclass
class StepTime:
    """Time on one step of a session (`step_times`), kept as the session changes. While the
    step is current, `since` is when its current stretch began and `paused_mark` the
    session's `paused_seconds` then; when it stops being current (passed, or the session
    closed) that stretch is added to `active_seconds`. A reopening starts a new stretch."""

    step_id: UUID
    started_at: datetime
    passed_at: datetime | None = None
    attempts: int = 0
    failed_checks: int = 0
    first_passed: bool | None = None  # whether the first check on it passed
    active_seconds: float = 0.0
    since: datetime | None = None
    paused_mark: float = 0.0
    changed_in: int = 0  # the session's version when it last changed


@dataclass(frozen=True)
class VerificationWait:
    """A passed check on a step that needs second-person verification, waiting for it."""

    step_id: UUID
    check_id: UUID
    since: datetime


@dataclass(frozen=True)
class Mark:
    """Where a session stood before an action: what the change it makes adds is after it."""

    checks: int
    version: int
    signatures: int = 0


BEGINNING = Mark(checks=0, version=-1)  # before a session's start


@dataclass
class SessionState:
    """Everything about a session except the SOP's steps: what the read model stores."""

    id: UUID
    worker_id: UUID
    sop_id: UUID
    sop_title: str
    sop_version: int
    status: SessionStatus
    current_step_id: UUID | None
    started_at: datetime
    checks: list[Check] = field(default_factory=list)
    paused_at: datetime | None = None
    paused_seconds: float = 0.0
    paused_reason: str | None = None
    completed_at: datetime | None = None
    cancelled_at: datetime | None = None
    cancel_reason: str | None = None
    unchecked_step_ids: list[UUID] | None = None
    needs_attention: bool = False  # its own rule: failed checks in a row on one step
    # A measured value of it broke an SPC rule (judged where its check is recorded, and on
    # the record from then): it needs attention until it is approved. The record has it in
    # its row's `needs_attention` (and `attention_reason`), and a state read from the row
    # has it here, so that a reopened session's run keeps it.
    out_of_control: bool = False
    locked: bool = False
    approved_by: UUID | None = None
    approved_at: datetime | None = None
    version: int = 0
    step_times: list[StepTime] = field(default_factory=list)
    signatures: list[Signature] = field(default_factory=list)  # in signing order
    awaiting_verification: VerificationWait | None = None
    # The nonconformances its failed checks opened that are still `open` (CONTRACT.md,
    # "Nonconformances"): at most one per step; a `hold` one stops its checks.
    nonconformances: list[OpenNc] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        """Whether it needs a supervisor's attention, for whatever reason."""
        return self.needs_attention or self.out_of_control

    @property
    def held_by(self) -> OpenNc | None:
        return next((n for n in self.nonconformances if n.hold), None)

    @property
    def duration_seconds(self) -> float | None:
        """From start to close, pauses not counted; None while open."""
        closed_at = self.completed_at or self.cancelled_at
        if closed_at is None:
            return None
        return (closed_at - self.started_at).total_seconds() - self.paused_seconds

    def active_seconds(self, t: StepTime, now: datetime | None) -> float:
        """Time on the step, paused time not counted: up to `now` while it is current (up
        to its last change when `now` is None)."""
        if t.since is None or now is None:
            return t.active_seconds
        paused = self.paused_seconds
        if self.paused_at is not None:
            paused += max(0.0, (now - self.paused_at).total_seconds())
        stretch = (now - t.since).total_seconds() - (paused - t.paused_mark)
        return t.active_seconds + max(0.0, stretch)


@dataclass(frozen=True)
class SessionFilter:
    """Which sessions a list shows; every field set narrows it (all combine with AND).
    `started_after` is inclusive, `started_before` exclusive."""

    status: SessionStatus | None = None
    sop_id: UUID | None = None
    sop_family_id: UUID | None = None
    worker_id: UUID | None = None
    needs_attention: bool | None = None
    locked: bool | None = None
    awaiting_verification: bool | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None


@dataclass
class WorkSession:
    plan: SessionPlan
    state: SessionState

    # ---- creation --------------------------------------------------------------------------
    @classmethod
    def start(cls, session_id: UUID, worker_id: UUID, plan: SessionPlan,
              now: datetime) -> WorkSession:
        state = SessionState(
            id=session_id, worker_id=worker_id, sop_id=plan.sop_id, sop_title=plan.sop_title,
            sop_version=plan.sop_version, status=SessionStatus.IN_PROGRESS,
            current_step_id=plan.steps[0].id, started_at=now,
        )
        session = cls(plan=plan, state=state)
        session._begin_step(plan.steps[0].id, now)
        return session

    def copy(self) -> WorkSession:
        """A copy to try an action on. Checks are immutable and the plan is never changed,
        so only the state's lists are copied, not what they hold (a validator copies the
        session on every request)."""
        s = self.state
        return WorkSession(plan=self.plan, state=replace(
            s, checks=list(s.checks),
            unchecked_step_ids=None if s.unchecked_step_ids is None
            else list(s.unchecked_step_ids),
            step_times=[replace(t) for t in s.step_times], signatures=list(s.signatures),
            nonconformances=list(s.nonconformances)))

    def mark(self) -> Mark:
        return Mark(len(self.state.checks), self.state.version, len(self.state.signatures))

    # ---- queries ---------------------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        return self.state.status in ACTIVE_STATUSES

    @property
    def is_closed(self) -> bool:
        return self.state.status in CLOSED_STATUSES

    def find_check(self, check_id: UUID) -> Check | None:
        return next((c for c in self.state.checks if c.id == check_id), None)

    def passed_step_ids(self) -> set[UUID]:
        """The steps done: a passed check, and on a step with `check.verify` a second
        person's `verified` signature too (a passed check alone awaits it)."""
        verified = {g.step_id for g in self.state.signatures if g.meaning is Meaning.VERIFIED}
        return {c.step_id for c in self.state.checks if c.result is CheckResult.PASSED
                and (c.step_id in verified or not self._wants_verification(c.step_id))}

    def _wants_verification(self, step_id: UUID) -> bool:
        i = self.plan.index_of(step_id)
        return i is not None and self.plan.steps[i].check.verify

    def failures_in_a_row(self, step_id: UUID) -> int:
        n = 0
        for c in reversed(self.state.checks):
            if c.step_id != step_id:
                break
            if c.result is CheckResult.PASSED:
                break
            n += 1
        return n

    # ---- guards ----------------------------------------------------------------------------
    def _ensure_unlocked(self) -> None:
        if self.state.locked:
            raise SessionLocked("session is approved and locked: it can no longer be changed")

    def _ensure_status(self, *allowed: SessionStatus, doing: str) -> None:
        self._ensure_unlocked()
        if self.state.status not in allowed:
            wanted = " or ".join(s.value for s in allowed)
            raise WrongState(f"cannot {doing}: session is {self.state.status.value}, "
                             f"not {wanted}", session_status=self.state.status.value)

    def ensure_takes_evidence(self) -> None:
        """Files are uploaded to a session while it is worked on: in progress or paused."""
        self._ensure_status(*ACTIVE_STATUSES, doing="upload evidence")

    def _changed(self) -> None:
        self.state.version += 1

    # ---- step times: every rule that moves the current step ends or begins one -------------
    def _step_time(self, step_id: UUID, now: datetime) -> StepTime:
        t = next((t for t in self.state.step_times if t.step_id == step_id), None)
        if t is None:  # first reached (or a run from before step times were kept)
            t = StepTime(step_id=step_id, started_at=now)
            self.state.step_times.append(t)
        t.changed_in = self.state.version + 1  # every rule ends with `_changed`
        return t

    def _begin_step(self, step_id: UUID, now: datetime) -> None:
        t = self._step_time(step_id, now)
        t.since, t.paused_mark, t.passed_at = now, self.state.paused_seconds, None

    def _end_step(self, now: datetime, passed: bool) -> None:
        if self.state.current_step_id is None:
            return
        t = self._step_time(self.state.current_step_id, now)
        t.active_seconds = self.state.active_seconds(t, now)
        t.since = None
        if passed:
            t.passed_at = now

    # ---- rules -----------------------------------------------------------------------------
    def add_check(self, sub: CheckSubmission, by: UUID, now: datetime,
                  escalate_after_failures: int = 0,
                  deadlines: Deadlines | None = None) -> Check | None:
        """Record a safety check on the current step. A passed check advances the session;
        a failed one is recorded and the step stays, and on a step whose `on_fail` is not
        `retry` it opens a nonconformance (with these `deadlines`; none given: it is only
        tried) unless one is open for the step. Returns None for a repeated `check_id`
        with the same content (recorded once); a different content is rejected."""
        seen = self.find_check(sub.check_id)
        if seen is not None:
            self._ensure_same_submission(seen, sub)
            return None
        step = self.plan.step(sub.step_id)
        # A body that cannot be a check of that step is invalid (422) whatever the state.
        result = step.check.decide(sub.result, sub.value) if step is not None else None
        if step is not None and result is not None:
            step.check.ensure_evidence(result, len(sub.evidence))
        self._ensure_files_free(sub)
        self._ensure_status(SessionStatus.IN_PROGRESS, doing="record a check")
        held = self.state.held_by
        if held is not None:
            raise SessionHeld("the session is held until a supervisor contains its "
                              "nonconformance: no check until then",
                              nonconformance_id=str(held.id), step_id=str(held.step_id))
        if step is None or sub.step_id != self.state.current_step_id:
            raise StepNotCurrent(
                "checks are accepted only for the current step",
                current_step_id=_str(self.state.current_step_id),
            )
        assert result is not None
        if self.state.awaiting_verification is not None:
            raise StepAwaitsVerification(
                "this step's passed check awaits a second person's verification: no further "
                "check until it is verified", step_id=str(step.id))
        check = Check(id=sub.check_id, result=result, checked_at=now, checked_by=by,
                      **sub.content())
        self.state.checks.append(check)
        t = self._step_time(step.id, now)
        t.attempts += 1
        t.failed_checks += result is CheckResult.FAILED
        if t.first_passed is None:
            t.first_passed = result is CheckResult.PASSED
        self._changed()
        if result is CheckResult.PASSED:
            self.state.needs_attention = False  # the step that needed attention is done
            if step.check.verify:  # done, but not released until a second person signs
                self.state.awaiting_verification = VerificationWait(step.id, check.id, now)
            else:
                self.advance_to_next_step(now)
        else:
            if escalate_after_failures and \
                    self.failures_in_a_row(sub.step_id) >= escalate_after_failures:
                self.state.needs_attention = True
            if deadlines is not None and step.check.on_fail is not OnFail.RETRY and not any(
                    n.step_id == step.id for n in self.state.nonconformances):
                self._open_nonconformance(step, check, deadlines)
        return check

    def _open_nonconformance(self, step: PlanStep, check: Check, deadlines: Deadlines) -> None:
        """A failed check on a step whose failure matters (escalation being one more failed
        check: it opens one too, when none is open)."""
        spec, i = step.check, (self.plan.index_of(step.id) or 0) + 1
        measured = f": {check.value:g}{' ' + spec.unit if spec.unit else ''}" \
            if check.value is not None else ""
        self.state.nonconformances.append(OpenNc(
            id=nc_id_for(check.id), step_id=step.id, hold=spec.on_fail is OnFail.HOLD,
            check_id=check.id, severity=spec.severity, opened_at=check.checked_at,
            containment_due=deadlines.containment_due(spec.severity, check.checked_at),
            close_due=deadlines.close_due(check.checked_at),
            description=f"Failed check on step {i} ({step.title}): {spec.prompt}{measured}",
            evidence=check.evidence, opened_in=self.state.version))

    def measured_out_of_control(self) -> bool:
        """A value it measured broke an SPC rule (the writer of its check judged it, on the
        record). Whether that is news."""
        if self.state.out_of_control:
            return False
        self.state.out_of_control = True
        return True

    def nonconformance_contained(self, nc_id: UUID) -> bool:
        """One of its nonconformances was contained: no longer open (a hold on the session
        ends). Whether the session held it."""
        before = len(self.state.nonconformances)
        self.state.nonconformances = [n for n in self.state.nonconformances if n.id != nc_id]
        return len(self.state.nonconformances) != before

    def _ensure_files_free(self, sub: CheckSubmission) -> None:
        """A file is evidence of one check only (decided here, on the session's own checks,
        so two checks naming one file cannot both be taken)."""
        taken = {f.id: c.id for c in self.state.checks for f in c.evidence}
        on_other = [f"{f.id} (on check {taken[f.id]})" for f in sub.evidence if f.id in taken]
        if on_other:
            raise InvalidInput(f"already attached to another check: {', '.join(on_other)}",
                               errors=[{"field": "evidence_ids",
                                        "message": "attached to another check"}])

    def _ensure_same_submission(self, seen: Check, sub: CheckSubmission) -> None:
        same = (seen.step_id == sub.step_id and seen.value == sub.value
                and (sub.result is None or sub.result is seen.result)
                and {f.id for f in seen.evidence} == set(sub.evidence_ids))
        if not same:
            raise InvalidInput(
                "this check_id was already used for a different check",
                errors=[{"field": "check_id", "message": "reused with different content"}],
            )

    def advance_to_next_step(self, now: datetime) -> None:
        assert self.state.current_step_id is not None
        nxt = self.plan.step_after(self.state.current_step_id)
        self._end_step(now, passed=True)
        if nxt is None:
            self.complete(now)
        else:
            self.state.current_step_id = nxt.id
            self._begin_step(nxt.id, now)
            self._changed()

    def complete(self, now: datetime, manual: bool = False) -> None:
        """Close the session as done: after the last passed check, or by the owner's choice
        (then the steps left without a passed check are listed)."""
        self._ensure_status(SessionStatus.IN_PROGRESS, doing="complete the session")
        if manual:
            passed = self.passed_step_ids()
            self.state.unchecked_step_ids = [s.id for s in self.plan.steps if s.id not in passed]
        self._end_step(now, passed=False)
        self.state.awaiting_verification = None  # ended early: the step stays unverified
        self.state.status = SessionStatus.COMPLETED
        self.state.completed_at = now
        self.state.current_step_id = None
        self._changed()

    def pause(self, now: datetime, reason: str | None = None) -> None:
        self._ensure_status(SessionStatus.IN_PROGRESS, doing="pause")
        self.state.status = SessionStatus.PAUSED
        self.state.paused_at = now
        self.state.paused_reason = reason
        self._changed()

    def resume(self, now: datetime) -> None:
        self._ensure_status(SessionStatus.PAUSED, doing="resume")
        assert self.state.paused_at is not None
        self.state.paused_seconds += max(0.0, (now - self.state.paused_at).total_seconds())
        self.state.status = SessionStatus.IN_PROGRESS
        self.state.paused_at = None
        self.state.paused_reason = None
        self._changed()

    def cancel(self, reason: str, now: datetime) -> None:
        self._ensure_status(*ACTIVE_STATUSES, doing="cancel")
        if self.state.status is SessionStatus.PAUSED:
            self.resume(now)
        self._end_step(now, passed=False)
        self.state.awaiting_verification = None
        self.state.status = SessionStatus.CANCELLED
        self.state.cancelled_at = now
        self.state.cancel_reason = reason
        self.state.current_step_id = None
        self._changed()

    def approve(self, by: UUID, now: datetime, signature: Signature | None = None) -> None:
        """Lock the completed session. With the approver's `approved` signature (every
        approval through the API has one: it is the approval), `by` and `now` are its."""
        if signature is not None:
            self._ensure_signature(signature, Meaning.APPROVED)
        self._ensure_status(SessionStatus.COMPLETED, doing="approve")
        if signature is not None:
            self.state.signatures.append(signature)
        self.state.locked = True
        self.state.approved_by = by
        self.state.approved_at = now
        self._changed()

    # ---- signatures (CONTRACT.md, "Electronic signatures") ---------------------------------
    def sign_performed(self, signature: Signature) -> None:
        """The session's own worker signs the work done, once the session is completed."""
        self._ensure_signature(signature, Meaning.PERFORMED)
        self._ensure_status(SessionStatus.COMPLETED, doing="sign it as performed")
        if signature.signer_id != self.state.worker_id:
            raise Forbidden("only the session's own worker signs it as performed")
        self.state.signatures.append(signature)
        self._changed()

    def verify(self, signature: Signature) -> None:
        """A second person (not the session's worker) verifies the step whose passed check
        awaits it; the session then moves on exactly as that check would have moved it."""
        self._ensure_signature(signature, Meaning.VERIFIED)
        wait = self.state.awaiting_verification
        if (wait is None or wait.step_id != signature.step_id) and \
                self.signature_like(signature) is not None:
            return  # verified already, by them: a resend (its answer lost), taken once
        self._ensure_status(SessionStatus.IN_PROGRESS, doing="verify a step")
        if signature.signer_id == self.state.worker_id:
            raise Forbidden("the worker who performed the step cannot verify it: a second "
                            "person signs it")
        if wait is None or wait.step_id != signature.step_id:
            raise StepNotAwaitingVerification(
                "this step is not awaiting verification",
                awaiting_step_id=_str(wait.step_id if wait else None))
        self.state.signatures.append(signature)
        self.state.awaiting_verification = None
        self._changed()
        self.advance_to_next_step(signature.signed_at)

    def signature_like(self, signature: Signature) -> Signature | None:
        """The session's signature that `signature` repeats (`Signature.repeats`), if any."""
        return next((g for g in reversed(self.state.signatures) if g.repeats(signature)),
                    None)

    def _ensure_signature(self, signature: Signature, meaning: Meaning) -> None:
        """A signature of this session, with this meaning, naming a step only for `verified`
        (and then one of the session's steps)."""
        if signature.session_id != self.state.id or signature.meaning is not meaning:
            raise InvalidInput(f"not a {meaning.value} signature of this session")
        if meaning is Meaning.VERIFIED:
            if signature.step_id is None or self.plan.index_of(signature.step_id) is None:
                raise InvalidInput("a verified signature names one of the session's steps",
                                   errors=[{"field": "step_id", "message": "unknown step"
                                            if signature.step_id else "required"}])
        elif signature.step_id is not None:
            raise InvalidInput(f"a {meaning.value} signature names no step",
                               errors=[{"field": "step_id", "message": "not allowed"}])

    def reopen(self, now: datetime, step_id: UUID | None = None) -> None:
        """Supervisor override: a closed, unapproved session goes back to work at a step
        (by default the first step without a passed check)."""
        if step_id is not None and self.plan.index_of(step_id) is None:
            raise InvalidInput("step_id is not a step of this session's SOP",
                               errors=[{"field": "step_id", "message": "unknown step"}])
        self._ensure_status(*CLOSED_STATUSES, doing="reopen")
        if step_id is None:
            passed = self.passed_step_ids()
            target = next((s.id for s in self.plan.steps if s.id not in passed),
                          self.plan.steps[-1].id)
        else:
            target = step_id
        self.state.status = SessionStatus.IN_PROGRESS
        self.state.current_step_id = target
        self._begin_step(target, now)
        self.state.completed_at = None
        self.state.cancelled_at = None
        self.state.cancel_reason = None
        self.state.unchecked_step_ids = None
        self.state.needs_attention = False
        self._changed()


def _str(v: UUID | None) -> str | None:
    return None if v is None else str(v)
