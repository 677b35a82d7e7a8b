"""Starting webhook deliveries on Temporal (application/ports.Deliveries) and the backstop's
schedule."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta
from uuid import UUID

from temporalio.client import (
    Client,
)
from temporalio.common import WorkflowIDReusePolicy

from orchestration.schedules import ensure_every
from workflows.webhooks import (
    MORE_SIGNAL,
    StreamInput,
    SweepInput,
    WebhookDeliveryWorkflow,
    WebhookSweepWorkflow,
    stream_workflow_id,
)

SWEEP_EVERY = timedelta(minutes=1)


class WebhookDeliveries:
    """Each stream's WebhookDelivery workflow, signalled with start: started when none runs,
    woken when one does. Bounded in time (TimeoutError past it)."""

    def __init__(self, client: Client, task_queue: str, timeout: float,
                 heartbeat: timedelta = timedelta(seconds=30),
                 retry_first: timedelta = timedelta(seconds=5),
                 retry_most: timedelta = timedelta(hours=1)) -> None:
        self.client = client
        self.task_queue = task_queue
        self.timeout = timeout
        self.heartbeat = heartbeat
        self.retry_first = retry_first
        self.retry_most = retry_most

    async def start(self, streams: Iterable[tuple[UUID, str]]) -> None:
        await asyncio.wait_for(asyncio.gather(*[self._start(str(s), stream)
                                                for s, stream in streams]), self.timeout)

    async def _start(self, subscription_id: str, stream: str) -> None:
        await self.client.start_workflow(
            WebhookDeliveryWorkflow.run,
            StreamInput(subscription_id=subscription_id, stream=stream,
                        heartbeat_seconds=self.heartbeat.total_seconds(),
                        retry_first_seconds=self.retry_first.total_seconds(),
                        retry_most_seconds=self.retry_most.total_seconds()),
            id=stream_workflow_id(subscription_id, stream), task_queue=self.task_queue,
            start_signal=MORE_SIGNAL, id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            static_summary=f"webhook deliveries of stream {stream}",
            rpc_timeout=timedelta(seconds=self.timeout))


def sweep_schedule_id(task_queue: str) -> str:
    return f"webhook-sweep-{task_queue}"


async def ensure_webhook_sweep(client: Client, task_queue: str, grace: timedelta,
                               every: timedelta = SWEEP_EVERY) -> str:
    """Create the backstop's schedule, or make the one there say what these settings say."""
    return await ensure_every(client, sweep_schedule_id(task_queue), WebhookSweepWorkflow.run,
                              SweepInput(grace_seconds=grace.total_seconds()), task_queue,
                              every)
