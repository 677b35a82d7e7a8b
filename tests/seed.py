"""Sessions played through the domain and written by the one write path (`write_change`),
at times the test chooses: datasets with known answers, without a workflow run each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from domain.changes import AuditFacts, SessionChange
from domain.sop import CheckResult
from domain.work_session import BEGINNING, CheckSubmission, Mark, WorkSession
from workflows.messages import workflow_id_for


@dataclass(frozen=True)
class Step:
    """After `after` seconds: a check on the current step (`passed`/`failed`), or
    `pause`, `resume`, `complete` (manual), `cancel`, `approve`."""

    action: str
    after: float = 0.0


def passed(after: float) -> Step:
    return Step("passed", after)


def failed(after: float) -> Step:
    return Step("failed", after)


async def seed(ctx: Any, sop_id: str | UUID, worker_id: UUID, started_at: datetime,
               *script: Step, escalate_after_failures: int = 0) -> WorkSession:
    """Start a session of the SOP at `started_at` and play `script` on it, each change
    written as the API writes it (with its audit entry)."""
    async with ctx.uow(read_only=True) as uow:
        plan = await uow.sops.plan(UUID(str(sop_id)))
    session = WorkSession.start(uuid4(), worker_id, plan, started_at)
    await _write(ctx, session, BEGINNING, "session_start", started_at)
    now = started_at
    for step in script:
        now += timedelta(seconds=step.after)
        before = session.mark()
        if step.action in ("passed", "failed"):
            current = session.state.current_step_id
            assert current is not None
            spec = plan.step(current)
            assert spec is not None
            measured = spec.check.kind.value == "measurement"
            value = (0.1 if step.action == "passed" else 9.9) if measured else None
            session.add_check(CheckSubmission(
                check_id=uuid4(), step_id=current,
                result=None if measured else CheckResult(step.action), value=value),
                worker_id, now, escalate_after_failures)
            action = "check_submitted"
        elif step.action == "complete":
            session.complete(now, manual=True)
            action = "session_completed"
        elif step.action == "cancel":
            session.cancel("seeded", now)
            action = "session_cancelled"
        elif step.action == "approve":
            session.approve(uuid4(), now)
            action = "session_approved"
        else:
            getattr(session, step.action)(now)
            action = f"session_{step.action}d"
        await _write(ctx, session, before, action, now)
    return session


async def _write(ctx: Any, session: WorkSession, before: Mark, action: str,
                 at: datetime) -> None:
    st = session.state
    change = SessionChange.of(st, before,
                              [AuditFacts(action, st.worker_id, "worker", {}, None)], at,
                              workflow_id_for(st.worker_id), "seeded")
    async with ctx.uow() as uow:
        assert await uow.sessions.write_change(change)
