"""Every message into or out of the session workflow: one input model each, so fields can be
added without breaking running workflows. Shared by the worker and the API."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from uuid import UUID

from pydantic import BaseModel

from domain.changes import AuditFacts, SessionChange
from domain.nonconformance import Deadline, Deadlines
from domain.signature import Signature
from domain.sop import SessionPlan
from domain.work_session import CheckSubmission, SessionState

WRITE_CHANGES_ACTIVITY = "write_changes"
# Update failure type when a command names another session than the run holds: the
# worker's workflow ID now runs a newer session, so the named one is closed.
SESSION_MISMATCH = "session-mismatch"
NC_OVERDUE_ACTIVITY = "mark_nonconformance_overdue"
NC_FOLLOW_ACTIVITY = "follow_up_nonconformances"
# The session workflow's signal that one of its nonconformances was contained.
NC_CONTAINED_SIGNAL = "nonconformance_contained"
OUT_OF_CONTROL_SIGNAL = "measured_out_of_control"


def workflow_id_for(worker_id: UUID) -> str:
    """One workflow ID per worker: Temporal itself refuses a second concurrent session."""
    return f"work-session-{worker_id}"


class SessionInput(BaseModel):
    plan: SessionPlan
    state: SessionState
    # Changes this run holds that it has not written itself yet (the start's or reopening's
    # own change; what the run before a continue-as-new had not written).
    unwritten: list[SessionChange] = []
    idle_timeout_seconds: float = 8 * 3600
    escalate_after_failures: int = 3
    # Temporal caps one run at 2,000 updates; roll over well before that.
    continue_as_new_after_updates: int = 1000
    # How long a change may go unwritten by the run itself. The API writes each change it
    # answers and a device resends what got no answer, so this bounds the read model's lag
    # only when an API died before its write and the device never came back. Each expiry
    # costs a timer and an activity per session.
    write_behind_seconds: float = 600.0
    # The deadlines of the nonconformances its failed checks open (CONTRACT.md).
    nc_deadlines: Deadlines = Deadlines()


@dataclass(frozen=True, kw_only=True)
class SubmitCheck(CheckSubmission):
    """The submission itself, for the session the client means, with its audit entry's
    facts. On the wire its fields sit beside these two, as they always have."""

    session_id: UUID
    audit: AuditFacts

    @classmethod
    def of(cls, sub: CheckSubmission, session_id: UUID, audit: AuditFacts) -> SubmitCheck:
        return cls(**{f.name: getattr(sub, f.name) for f in fields(sub)},
                   session_id=session_id, audit=audit)


class SessionCommand(BaseModel):
    session_id: UUID
    reason: str | None = None
    audit: AuditFacts


class SignVerified(BaseModel):
    """A second person's `verified` signature of the step awaiting it (its `signed_at` is
    the run's time when it takes it)."""

    session_id: UUID
    signature: Signature
    audit: AuditFacts


class SessionSnapshot(BaseModel):
    """The session as its run holds it (the `snapshot` query): what the API answers from."""

    plan: SessionPlan
    state: SessionState
    run_id: str


def nc_workflow_id(nc_id: UUID) -> str:
    return f"nonconformance-{nc_id}"


class NcInput(BaseModel):
    """A nonconformance's workflow: its deadlines, and the session to tell when it is
    contained (one its failed check opened: the session holds it while it is open)."""

    nc_id: UUID
    session_id: UUID
    worker_id: UUID
    containment_due: datetime
    close_due: datetime
    notify_session: bool = False


class OutOfControl(BaseModel):
    """A measured value of this session broke an SPC rule (on the record)."""

    session_id: UUID


class NcContained(BaseModel):
    session_id: UUID
    nc_id: UUID


class NcOverdue(BaseModel):
    """A deadline passed (at the workflow's time `at`): the record decides whether it was
    missed, and says where the NC stands (None: not recorded yet)."""

    nc_id: UUID
    deadline: Deadline
    at: datetime

