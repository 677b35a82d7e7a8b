"""Every message into or out of the session workflow: one input model each, so fields can be
added without breaking running workflows. Shared by the worker and the API."""

from __future__ import annotations

from uuid import UUID

from pydantic import BaseModel

from domain.sop import CheckResult, SessionPlan
from domain.work_session import SessionState

TASK_QUEUE_DEFAULT = "work-sessions"
PERSIST_ACTIVITY = "persist_session"
# Update failure type when a command names another session than the run holds: the
# worker's workflow ID now runs a newer session, so the named one is closed.
SESSION_MISMATCH = "session-mismatch"


def workflow_id_for(worker_id: UUID) -> str:
    """One workflow ID per worker: Temporal itself refuses a second concurrent session."""
    return f"work-session-{worker_id}"


class SessionInput(BaseModel):
    plan: SessionPlan
    state: SessionState
    idle_timeout_seconds: float = 8 * 3600
    escalate_after_failures: int = 3
    # Temporal caps one run at 2,000 updates; roll over well before that.
    continue_as_new_after_updates: int = 1000
    # How long a change may go unwritten by the run itself (the API writes each one it
    # answers, and a device resends what got no 200; this bounds the lag when an API died
    # before its write and the device never resent). Each expiry costs a workflow task and an
    # activity: at one minute, every check of a session worked at field pace had one.
    write_behind_seconds: float = 600.0


class SubmitCheck(BaseModel):
    actor_id: UUID
    session_id: UUID | None = None  # the session the client means (None: whatever runs)
    check_id: UUID
    step_id: UUID
    result: CheckResult | None = None
    value: float | None = None
    notes: str | None = None
    evidence_uri: str | None = None


class SessionCommand(BaseModel):
    actor_id: UUID
    session_id: UUID | None = None
    reason: str | None = None


class PersistSession(BaseModel):
    """A session state to write to the read model, and where it stands in its run. Both the
    persist activity's input and every worker action's answer (which the API writes)."""

    state: SessionState
    workflow_id: str
    run_id: str
    # Where the state's last change stands in its run (see persistence.sessions.save): the
    # number of changes the run has made, or in runs from before COMMITTED_WRITES_PATCH the
    # history length then (0 in histories from before that).
    run_position: int = 0
    # The run wrote it itself before answering (runs from before COMMITTED_WRITES_PATCH).
    written: bool = False
