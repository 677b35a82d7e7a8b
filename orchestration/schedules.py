"""Durable schedules on the Temporal cluster: the hourly evidence cleanup, the backstop of
NCs opened by hand (and, through `ensure_every`, the webhooks' backstop). Made (or brought
up to date) by each worker as it starts and by `worksession setup-temporal`; one per task
queue, so that stacks sharing a namespace keep to their own."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleUpdate,
    ScheduleUpdateInput,
)

from workflows.evidence_cleanup import CleanupInput, EvidenceCleanupWorkflow
from workflows.nonconformance import NonconformanceSweepWorkflow

CLEANUP_EVERY = timedelta(hours=1)


def cleanup_schedule_id(task_queue: str) -> str:
    return f"evidence-cleanup-{task_queue}"


async def ensure_evidence_cleanup(client: Client, task_queue: str, older_than: timedelta,
                                  every: timedelta = CLEANUP_EVERY) -> str:
    """Create the cleanup's schedule, or make the one there say what these settings say.
    Returns its id."""
    return await ensure_every(
        client, cleanup_schedule_id(task_queue), EvidenceCleanupWorkflow.run,
        CleanupInput(older_than_seconds=older_than.total_seconds()), task_queue, every)


def nc_sweep_schedule_id(task_queue: str) -> str:
    return f"nonconformance-sweep-{task_queue}"


async def ensure_nonconformance_sweep(client: Client, task_queue: str,
                                      grace: timedelta = timedelta(minutes=1),
                                      every: timedelta = timedelta(minutes=1)) -> str:
    """The backstop of NCs opened by hand whose workflow was never started: every `every`,
    those recorded more than `grace` ago. Returns its id."""
    return await ensure_every(client, nc_sweep_schedule_id(task_queue),
                              NonconformanceSweepWorkflow.run, grace.total_seconds(),
                              task_queue, every)


async def ensure_every(client: Client, schedule_id: str, run: Any, arg: Any, task_queue: str,
                       every: timedelta) -> str:
    """A schedule starting `run(arg)` every `every` (never two at once): created, or the one
    there brought up to date. One paused by hand stays paused. Returns its id."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(run, arg, id=schedule_id, task_queue=task_queue),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP))
    try:
        await client.create_schedule(schedule_id, schedule)
    except ScheduleAlreadyRunningError:
        def replace(current: ScheduleUpdateInput) -> ScheduleUpdate:
            schedule.state = current.description.schedule.state  # paused by hand: stays so
            return ScheduleUpdate(schedule=schedule)
        await client.get_schedule_handle(schedule_id).update(replace)
    return schedule_id
