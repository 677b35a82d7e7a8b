"""What ops need from Temporal: which session workflows cannot make progress, why, and how to
make them try again now."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType, PendingWorkflowTaskState
from temporalio.api.workflowservice.v1 import (
    DescribeWorkflowExecutionResponse,
    ResetActivityRequest,
    ResetWorkflowExecutionRequest,
)
from temporalio.client import Client

from application.ports import ACTIVITY_FAILING, NO_WORKER, WORKFLOW_TASK_FAILING, Stuck
from workflows import search_attributes as sa

# A workflow task nobody picked up for this long means no worker polls the queue.
NO_WORKER_AFTER = timedelta(seconds=30)


def _ts(value: object) -> datetime | None:
    if value is None or not value.seconds:  # type: ignore[attr-defined]
        return None
    return value.ToDatetime(tzinfo=UTC)  # type: ignore[attr-defined]


async def diagnose(client: Client, workflow_id: str, run_id: str | None = None,
                   now: datetime | None = None) -> Stuck | None:
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    desc = await handle.describe()
    raw: DescribeWorkflowExecutionResponse = desc.raw_description
    now = now or datetime.now(UTC)
    attrs = desc.typed_search_attributes

    def stuck(kind: str, reason: str, attempts: int, since: datetime | None,
              last_error: str | None, activity_id: str | None = None,
              next_attempt_at: datetime | None = None) -> Stuck:
        return Stuck(workflow_id, desc.run_id, attrs.get(sa.SESSION_ID),
                     attrs.get(sa.WORKER_ID), attrs.get(sa.SOP_ID), kind, reason, attempts,
                     since, last_error, activity_id, next_attempt_at)

    for act in raw.pending_activities:
        failure = act.last_failure.message if act.HasField("last_failure") else None
        if act.attempt > 1 or failure:
            next_at = _ts(act.next_attempt_schedule_time)
            return stuck(ACTIVITY_FAILING,
                         f"saving the session ({act.activity_type.name}) keeps failing: "
                         f"attempt {act.attempt}, next try {_when(next_at, now)}",
                         act.attempt, _ts(act.scheduled_time), failure, act.activity_id,
                         next_at)
    if raw.HasField("pending_workflow_task"):
        task = raw.pending_workflow_task
        first = _ts(task.original_scheduled_time) or _ts(task.scheduled_time)
        if task.attempt > 1:
            return stuck(WORKFLOW_TASK_FAILING,
                         f"the workflow code keeps failing (workflow task attempt "
                         f"{task.attempt}); a bad deploy or non-determinism",
                         task.attempt, first, await _last_task_failure(handle))
        if (task.state == PendingWorkflowTaskState.PENDING_WORKFLOW_TASK_STATE_SCHEDULED
                and first is not None and now - first > NO_WORKER_AFTER):
            return stuck(NO_WORKER,
                         f"no worker has picked up its work for {(now - first).seconds} s: "
                         f"is a worker polling task queue {desc.task_queue!r}?",
                         task.attempt, first, None)
    return None


def _when(t: datetime | None, now: datetime) -> str:
    if t is None:
        return "when a worker is free"
    return f"in {max(0, round((t - now).total_seconds()))} s"


async def _last_task_failure(handle: object) -> str | None:
    message = None
    async for event in handle.fetch_history_events():  # type: ignore[attr-defined]
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            f = event.workflow_task_failed_event_attributes.failure
            message = f.message or message
    return message


async def find_stuck(client: Client, task_queue: str | None = None,
                     concurrency: int = 8) -> list[Stuck]:
    query = 'WorkflowType = "WorkSession" AND ExecutionStatus = "Running"'
    if task_queue:
        query += f' AND TaskQueue = "{task_queue}"'
    ids = [(w.id, w.run_id) async for w in client.list_workflows(query)]
    gate = asyncio.Semaphore(concurrency)

    async def one(wid: str, rid: str) -> Stuck | None:
        async with gate:
            return await diagnose(client, wid, rid)

    found = await asyncio.gather(*(one(w, r) for w, r in ids))
    return [s for s in found if s is not None]


async def retry(client: Client, stuck: Stuck) -> str:
    """Make a stuck session try again now. Returns what was done, in words."""
    execution = WorkflowExecution(workflow_id=stuck.workflow_id, run_id=stuck.run_id)
    if stuck.kind == ACTIVITY_FAILING:
        await client.workflow_service.reset_activity(ResetActivityRequest(
            namespace=client.namespace, execution=execution, id=stuck.activity_id or "",
            reset_heartbeat=True, identity="worksession-ops"))
        return (f"retried activity {stuck.activity_id} now (it had failed "
                f"{stuck.attempts - 1} time(s); last error: {stuck.last_error})")
    if stuck.kind == WORKFLOW_TASK_FAILING:
        handle = client.get_workflow_handle(stuck.workflow_id, run_id=stuck.run_id)
        last_good = None
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                last_good = event.event_id
        if last_good is None:
            raise RuntimeError("no completed workflow task to reset to")
        resp = await client.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=client.namespace, workflow_execution=execution,
                reason=f"worksession ops retry: {stuck.last_error or stuck.reason}"[:500],
                workflow_task_finish_event_id=last_good, request_id=str(uuid4()),
                identity="worksession-ops"))
        return (f"reset the workflow to its last good point (event {last_good}); "
                f"new run {resp.run_id}")
    raise RuntimeError(stuck.reason)  # no_worker: nothing to re-run
