"""The API's door to session workflows: starts them, sends updates, asks queries, and turns
Temporal's failures back into domain errors. Every call is bounded in time."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    QueryRejectCondition,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from application.ports import RunClosed, Running, StoredSession, Stuck, WorkflowRunning
from domain.changes import AuditFacts, SessionChange
from domain.errors import Unavailable, error_from_payload
from domain.nonconformance import Deadlines, NcStatus, Nonconformance
from domain.signature import Signature
from domain.sop import SessionPlan
from domain.work_session import CheckSubmission, SessionState, WorkSession
from orchestration import ops
from workflows import search_attributes
from workflows.messages import (
    SESSION_MISMATCH,
    NcInput,
    OutOfControl,
    SessionCommand,
    SessionInput,
    SignVerified,
    SubmitCheck,
    nc_workflow_id,
    workflow_id_for,
)
from workflows.nonconformance import NonconformanceWorkflow
from workflows.work_session import WorkSessionWorkflow

# The run's tunables default to what SessionInput says (one place for each number).
_DEFAULTS = SessionInput.model_fields


class SessionWorkflows:
    """application/ports.SessionWorkflows on a Temporal client."""

    def __init__(self, client: Client, task_queue: str, timeout: float,
                 idle_timeout: timedelta, escalate_after_failures: int,
                 continue_as_new_after_updates: int = _DEFAULTS[
                     "continue_as_new_after_updates"].default,
                 write_behind: timedelta = timedelta(
                     seconds=_DEFAULTS["write_behind_seconds"].default),
                 nc_deadlines: Deadlines | None = None) -> None:
        self.client = client
        self.nc_deadlines = nc_deadlines or Deadlines()
        self.write_behind = write_behind
        self.continue_as_new_after_updates = continue_as_new_after_updates
        self.task_queue = task_queue
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.escalate_after_failures = escalate_after_failures

    async def start(self, plan: SessionPlan, state: SessionState,
                    change: SessionChange | None) -> str:
        """Start the worker's session workflow, holding `change` (the start's or reopening's
        own) until it has written it; returns its run id. Raises WorkflowRunning when the
        worker's workflow ID is taken by an open run."""
        inp = SessionInput(plan=plan, state=state, unwritten=[change] if change else [],
                           idle_timeout_seconds=self.idle_timeout.total_seconds(),
                           escalate_after_failures=self.escalate_after_failures,
                           continue_as_new_after_updates=self.continue_as_new_after_updates,
                           write_behind_seconds=self.write_behind.total_seconds(),
                           nc_deadlines=self.nc_deadlines)
        try:
            handle = await self._bounded(self.client.start_workflow(
                WorkSessionWorkflow.run, inp, id=workflow_id_for(state.worker_id),
                task_queue=self.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                search_attributes=search_attributes.initial(state),
                static_summary=f"{plan.sop_title} (v{plan.sop_version}) by worker "
                               f"{state.worker_id}",
                static_details=f"Session {state.id}: {len(plan.steps)} steps of SOP "
                               f"{plan.sop_id}",
                rpc_timeout=timedelta(seconds=self.timeout)))
        except WorkflowAlreadyStartedError:
            raise WorkflowRunning(await self.running(state.worker_id)) from None
        assert handle.result_run_id is not None
        return handle.result_run_id

    async def running(self, worker_id: UUID) -> Running | None:
        try:
            desc = await self._bounded(self.client.get_workflow_handle(
                workflow_id_for(worker_id)).describe())
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        if desc.status != WorkflowExecutionStatus.RUNNING:
            return None
        value = desc.typed_search_attributes.get(search_attributes.SESSION_ID)
        return Running(UUID(value) if value else None, desc.run_id)

    async def wait_closed(self, worker_id: UUID, run_id: str, within: float) -> bool:
        """Wait for that run of the worker's workflow to close (it does within milliseconds
        of its final update, once its final write is done)."""
        handle = self.client.get_workflow_handle(workflow_id_for(worker_id), run_id=run_id)
        deadline = asyncio.get_running_loop().time() + within
        while asyncio.get_running_loop().time() < deadline:
            desc = await self._bounded(handle.describe())
            if desc.status != WorkflowExecutionStatus.RUNNING:
                return True
            await asyncio.sleep(0.05)
        return False

    async def terminate(self, worker_id: UUID, run_id: str, reason: str) -> None:
        """End a run that must not go on: a start that lost its race with an SOP delete, a
        reopen that lost to an approval. Nothing it took is recorded."""
        await self._bounded(self.client.get_workflow_handle(
            workflow_id_for(worker_id), run_id=run_id).terminate(reason=reason))

    def workflow_id(self, worker_id: UUID) -> str:
        return workflow_id_for(worker_id)

    async def submit_check(self, worker_id: UUID, session_id: UUID, sub: CheckSubmission,
                           facts: AuditFacts) -> SessionChange | None:
        # Idempotency lives in the workflow's state (it survives continue-as-new and worker
        # restarts), not in the update ID: Temporal would answer a reused update ID with the
        # first attempt's (by now stale) result, and a repeat must see the session as it is
        # now. The ID still names the check so it can be found in the history.
        return await self._update(worker_id, WorkSessionWorkflow.submit_check,
                                  SubmitCheck.of(sub, session_id, facts),
                                  f"check-{sub.check_id}-{uuid4().hex[:8]}")

    async def command(self, worker_id: UUID, name: str, session_id: UUID,
                      reason: str | None, facts: AuditFacts) -> SessionChange | None:
        return await self._update(
            worker_id, getattr(WorkSessionWorkflow, name),
            SessionCommand(session_id=session_id, reason=reason, audit=facts),
            f"{name}-{uuid4()}")

    async def verify(self, worker_id: UUID, session_id: UUID, signature: Signature,
                     facts: AuditFacts) -> SessionChange | None:
        """The `verified` signature to the worker's run, which decides it (one of two at
        once: the other is refused, 409)."""
        return await self._update(worker_id, WorkSessionWorkflow.verify,
                                  SignVerified(session_id=session_id, signature=signature,
                                               audit=facts), f"verify-{signature.id}")

    async def ask_to_write(self, worker_id: UUID) -> bool:
        """Ask the worker's run to write what it holds now. Best effort: a run writes an
        unwritten change within `write_behind` anyway, and before it closes."""
        try:
            await self._bounded(self.client.get_workflow_handle(workflow_id_for(worker_id))
                                .signal(WorkSessionWorkflow.write_now))
        except (Unavailable, RPCError):
            return False
        return True

    async def measured_out_of_control(self, worker_id: UUID, session_id: UUID) -> None:
        await self._bounded(self.client.get_workflow_handle(workflow_id_for(worker_id)).signal(
            WorkSessionWorkflow.measured_out_of_control, OutOfControl(session_id=session_id),
            rpc_timeout=timedelta(seconds=self.timeout)))

    async def start_nonconformance(self, nc: Nonconformance, worker_id: UUID, *,
                                   notify_session: bool) -> None:
        await self._start_nc(nc, worker_id, notify_session,
                             id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)

    async def follow_nonconformance(self, nc: Nonconformance, worker_id: UUID) -> bool:
        try:  # a run that ended (the NC closed) is not started again; a terminated one is
            await self._start_nc(
                nc, worker_id, False, id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY)
        except WorkflowAlreadyStartedError:
            return False
        return True

    async def _start_nc(self, nc: Nonconformance, worker_id: UUID, notify_session: bool,
                        **policies: Any) -> None:
        await self._bounded(self.client.start_workflow(
            NonconformanceWorkflow.run, NcInput(
                nc_id=nc.id, session_id=nc.session_id, worker_id=worker_id,
                containment_due=nc.containment_due, close_due=nc.close_due,
                notify_session=notify_session),
            id=nc_workflow_id(nc.id), task_queue=self.task_queue,
            static_summary=f"Nonconformance {nc.number_text or nc.id} ({nc.severity.value}) "
                           f"of session {nc.session_id}",
            rpc_timeout=timedelta(seconds=self.timeout), **policies))

    async def nonconformance_changed(self, nc_id: UUID, status: NcStatus) -> None:
        await self._bounded(self.client.get_workflow_handle(nc_workflow_id(nc_id)).signal(
            NonconformanceWorkflow.changed, status, rpc_timeout=timedelta(seconds=self.timeout)))

    async def nonconformance_behind(self, nc_id: UUID, status: NcStatus) -> bool:
        handle = self.client.get_workflow_handle(nc_workflow_id(nc_id))
        try:
            knows = NcStatus(await self._bounded(handle.query(
                NonconformanceWorkflow.status, rpc_timeout=timedelta(seconds=self.timeout),
                reject_condition=QueryRejectCondition.NOT_OPEN)))
        except WorkflowQueryRejectedError:
            return False  # it ended: it knew the NC closed
        except RPCError as e:
            if e.status is RPCStatusCode.NOT_FOUND:
                return False  # not started (yet): it starts knowing
            raise
        return knows is NcStatus.OPEN and status is not NcStatus.OPEN

    async def live(self, worker_id: UUID) -> StoredSession:
        handle = self.client.get_workflow_handle(workflow_id_for(worker_id))
        try:
            snap = await self._bounded(handle.query(
                WorkSessionWorkflow.snapshot, rpc_timeout=timedelta(seconds=self.timeout),
                reject_condition=QueryRejectCondition.NOT_OPEN))
        except WorkflowQueryRejectedError:
            raise RunClosed() from None
        except WorkflowQueryFailedError as e:  # a worker older than this API (deploy workers
            # first, docs/versioning.md), or a run whose worker cannot answer now
            raise Unavailable(f"the session's run could not answer: {e}") from None
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND:
                raise RunClosed() from None
            raise
        return StoredSession(WorkSession(plan=snap.plan, state=snap.state),
                             workflow_id_for(worker_id), snap.run_id)

    async def _update(self, worker_id: UUID, update: Any, arg: Any, update_id: str) -> Any:
        handle = self.client.get_workflow_handle(workflow_id_for(worker_id))
        try:
            return await self._bounded(handle.execute_update(
                update, arg, id=update_id, rpc_timeout=timedelta(seconds=self.timeout)))
        except WorkflowUpdateFailedError as e:
            cause = e.cause
            if isinstance(cause, ApplicationError) and cause.type == SESSION_MISMATCH:
                raise RunClosed() from None
            if isinstance(cause, ApplicationError) and cause.type:
                payload = cause.details[0] if cause.details else {}
                raise error_from_payload(cause.type, payload) from None
            raise
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            raise Unavailable("the session did not answer in time; resend the same request "
                              "(with the same check_id) to get its outcome") from None
        except RPCError as e:
            if e.status == RPCStatusCode.NOT_FOUND or "already completed" in e.message:
                raise RunClosed() from None
            raise

    async def find_stuck(self) -> list[Stuck]:
        return await self._bounded(ops.find_stuck(self.client, self.task_queue))

    async def diagnose(self, worker_id: UUID) -> Stuck | None:
        return await self._bounded(ops.diagnose(self.client, workflow_id_for(worker_id)))

    async def retry(self, stuck: Stuck) -> str:
        return await self._bounded(ops.retry(self.client, stuck))

    async def _bounded(self, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, self.timeout)
        except TimeoutError:
            raise Unavailable("Temporal did not answer in time") from None
        except RPCError as e:
            if e.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED,
                            RPCStatusCode.CANCELLED):
                raise Unavailable(f"Temporal unavailable: {e.message}") from None
            raise

