"""Nonconformances (CONTRACT.md, "Nonconformances"): the follow-up of a failed check that
matters, so that someone contains the problem and decides what to do about it, on time.

An NC is opened by a failed check on a step whose `check.on_fail` is `nonconformance` or
`hold` (the session's rule decides it: `WorkSession.add_check`), or by hand by a
supervisor, and goes open → contained → closed. Two deadlines run from its opening:
containment (`Deadlines.contain`, `contain_critical` for a critical one) and closure; a
deadline passed unmet makes it `overdue` (for good: it was late). Time and ids come in as
arguments, as everywhere in the domain."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID, uuid5

from domain.errors import InvalidInput, NcWrongState
from domain.evidence import EvidenceFile
from domain.signature import Meaning, Signature
from domain.sop import Severity

TEXT_MAX = 5000  # containment, corrective action, description
_IDS = UUID("6f1d2c1e-4f4a-4c56-9a55-4e6f6e636f6e")  # names NCs opened by checks


class NcStatus(StrEnum):
    OPEN = "open"
    CONTAINED = "contained"
    CLOSED = "closed"


class Disposition(StrEnum):
    USE_AS_IS = "use_as_is"
    REWORK = "rework"
    SCRAP = "scrap"
    RETURN = "return"
    OTHER = "other"


class Deadline(StrEnum):
    CONTAINMENT = "containment"
    CLOSURE = "closure"


@dataclass(frozen=True)
class Deadlines:
    """How long an NC may stay open (WORKSESSION_NC_CONTAIN_WITHIN, 15 min for a critical
    one) and unclosed (WORKSESSION_NC_CLOSE_WITHIN), from its opening."""

    contain: timedelta = timedelta(hours=1)
    contain_critical: timedelta = timedelta(minutes=15)
    close: timedelta = timedelta(days=7)

    def containment_due(self, severity: Severity, opened_at: datetime) -> datetime:
        within = self.contain_critical if severity is Severity.CRITICAL else self.contain
        return opened_at + within

    def close_due(self, opened_at: datetime) -> datetime:
        return opened_at + self.close


def nc_id_for(check_id: UUID) -> UUID:
    """The id of the NC a failed check opens: named by the check, so that the same check
    taken twice (a replay, a resend) names the same NC."""
    return uuid5(_IDS, str(check_id))


def number_text(number: int | None) -> str | None:
    return None if number is None else f"NC-{number:06d}"


@dataclass(frozen=True)
class OpenNc:
    """An NC a session's failed check opened, held by the session while it is `open` (one
    per step at most; a `hold` one stops the session's checks). The change that opens it
    carries everything its record starts with; `opened_in` is that change's version."""

    id: UUID
    step_id: UUID
    hold: bool
    check_id: UUID | None = None
    severity: Severity = Severity.MAJOR
    opened_at: datetime | None = None
    containment_due: datetime | None = None
    close_due: datetime | None = None
    description: str = ""
    evidence: tuple[EvidenceFile, ...] = ()
    opened_in: int = 0


@dataclass
class Nonconformance:
    id: UUID
    status: NcStatus
    severity: Severity
    session_id: UUID
    sop_id: UUID
    step_id: UUID | None
    check_id: UUID | None
    description: str
    opened_at: datetime
    opened_by: UUID | None  # None: opened by the service (a failed check)
    owner_id: UUID | None
    containment_due: datetime
    close_due: datetime
    number: int | None = None  # given when it is recorded (gap-free, per service)
    hold: bool = False
    containment: str | None = None
    contained_at: datetime | None = None
    contained_by: UUID | None = None
    disposition: Disposition | None = None
    corrective_action: str | None = None
    closed_at: datetime | None = None
    closed_by: UUID | None = None
    overdue: bool = False
    overdue_deadlines: list[Deadline] = field(default_factory=list)
    evidence: tuple[EvidenceFile, ...] = ()
    signature: Signature | None = None  # the closing `approved` signature

    # ---- opening ---------------------------------------------------------------------------
    @classmethod
    def opened_by_check(cls, nc: OpenNc, session_id: UUID, sop_id: UUID) -> Nonconformance:
        assert nc.opened_at and nc.containment_due and nc.close_due
        return cls(id=nc.id, status=NcStatus.OPEN, severity=nc.severity,
                   session_id=session_id, sop_id=sop_id, step_id=nc.step_id,
                   check_id=nc.check_id, description=nc.description, opened_at=nc.opened_at,
                   opened_by=None, owner_id=None, containment_due=nc.containment_due,
                   close_due=nc.close_due, hold=nc.hold, evidence=nc.evidence)

    @classmethod
    def open_by_hand(cls, nc_id: UUID, session_id: UUID, sop_id: UUID,
                     step_id: UUID | None, severity: Severity, description: str, by: UUID,
                     now: datetime, deadlines: Deadlines) -> Nonconformance:
        _text(description, "description")
        return cls(id=nc_id, status=NcStatus.OPEN, severity=severity, session_id=session_id,
                   sop_id=sop_id, step_id=step_id, check_id=None, description=description,
                   opened_at=now, opened_by=by, owner_id=by,
                   containment_due=deadlines.containment_due(severity, now),
                   close_due=deadlines.close_due(now))

    # ---- the lifecycle ---------------------------------------------------------------------
    def contain(self, containment: str, by: UUID, now: datetime) -> None:
        """open → contained: what was done to keep the problem from spreading."""
        _text(containment, "containment")
        self._ensure(NcStatus.OPEN, "contain")
        self.status = NcStatus.CONTAINED
        self.containment, self.contained_at, self.contained_by = containment, now, by
        if self.owner_id is None:
            self.owner_id = by

    def close(self, disposition: Disposition, corrective_action: str,
              signature: Signature) -> None:
        """contained → closed, with the closer's `approved` signature."""
        _text(corrective_action, "corrective_action")
        if signature.meaning is not Meaning.APPROVED or signature.session_id != self.session_id:
            raise InvalidInput("an NC is closed with an approved signature")
        self._ensure(NcStatus.CONTAINED, "close")
        self.status = NcStatus.CLOSED
        self.disposition, self.corrective_action = disposition, corrective_action
        self.closed_at, self.closed_by = signature.signed_at, signature.signer_id
        self.signature = signature

    def missed(self, deadline: Deadline, now: datetime) -> bool:
        """Whether that deadline has passed (by `now`) with its step not done by then: not
        done yet, or done late (a containment recorded after its due time was missed, even
        when no timer saw it pass, e.g. while no worker ran)."""
        due, done_at = ((self.containment_due, self.contained_at)
                        if deadline is Deadline.CONTAINMENT else (self.close_due, self.closed_at))
        return now >= due and (done_at is None or done_at > due)

    def mark_overdue(self, deadline: Deadline, now: datetime) -> bool:
        """A deadline has passed: overdue if it was missed, once per deadline. Whether this
        made a change (to be audited)."""
        if deadline in self.overdue_deadlines or not self.missed(deadline, now):
            return False
        self.overdue = True
        self.overdue_deadlines = [*self.overdue_deadlines, deadline]
        return True

    def _ensure(self, status: NcStatus, doing: str) -> None:
        if self.status is not status:
            raise NcWrongState(f"cannot {doing} this nonconformance: it is "
                               f"{self.status.value}, not {status.value}",
                               nonconformance_status=self.status.value)

    def copy(self) -> Nonconformance:
        return replace(self, overdue_deadlines=list(self.overdue_deadlines))

    @property
    def number_text(self) -> str | None:
        return number_text(self.number)


def _text(value: str, name: str) -> None:
    if not value or not value.strip():
        raise InvalidInput(f"{name} must not be empty",
                           errors=[{"field": name, "message": "must not be empty"}])
    if len(value) > TEXT_MAX:
        raise InvalidInput(f"{name} is longer than {TEXT_MAX} characters",
                           errors=[{"field": name, "message": "too long"}])


@dataclass(frozen=True)
class NcFilter:
    status: NcStatus | None = None
    session_id: UUID | None = None
    sop_id: UUID | None = None
    overdue: bool | None = None
