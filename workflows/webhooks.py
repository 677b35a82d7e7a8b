"""Webhook delivery (CONTRACT.md, "Webhooks"): durable, at least once, in order per session.

`WebhookDelivery` (`webhook-<subscription>-<stream>`, a stream being one session's events for
one subscription) delivers the stream's pending deliveries, read from the database, by one
activity: a run of them per attempt, in order. A failed attempt is retried by Temporal with the
delay the activity names (exponential, per delivery: domain.webhooks.retry_delay), which costs
no history event; the activity marks a delivery `failed` once it has failed for 24 h and goes
on with the next. New events signal it (`more`, by signal-with-start); it ends when a pass
finds nothing new, and the next event starts it again.

Temporal server work per wake-up, whatever the number of events it delivers: a start (or a
signal), 2 workflow tasks, 1 activity (its retries add no event), the completion: 12 history
events (`docs/webhooks.md`).

`WebhookSweep` (a schedule, orchestration/webhooks.py) is the backstop for the one window
the above does not cover: between the commit that recorded an event and the signal-with-start
of its stream (the committing process died, or Temporal was unreachable)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

DELIVER_ACTIVITY = "deliver_webhooks"
SWEEP_ACTIVITY = "start_stranded_webhooks"
MORE_SIGNAL = "more"


class StreamInput(BaseModel):
    subscription_id: str
    stream: str
    # an attempt that stops beating (its worker died) is tried again after this
    heartbeat_seconds: float = 30.0
    # a worker lost mid-attempt, or an unexpected error: retried after this, doubling
    retry_first_seconds: float = 5.0
    retry_most_seconds: float = 3600.0


class DeliverResult(BaseModel):
    done: int = 0
    more: bool = False  # a full batch: look again


def stream_workflow_id(subscription_id: str, stream: str) -> str:
    return f"webhook-{subscription_id}-{stream}"


@workflow.defn(name="WebhookDelivery")
class WebhookDeliveryWorkflow:
    @workflow.init
    def __init__(self, inp: StreamInput) -> None:
        self._more = True  # being started means there is something to deliver

    @workflow.signal(name=MORE_SIGNAL)
    def more(self) -> None:
        self._more = True

    @workflow.run
    async def run(self, inp: StreamInput) -> int:
        """How many deliveries this run completed (delivered or failed for good)."""
        done = 0
        while self._more:
            self._more = False
            result = await workflow.execute_activity(
                DELIVER_ACTIVITY, inp, result_type=DeliverResult,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=timedelta(seconds=inp.heartbeat_seconds),
                retry_policy=RetryPolicy(
                    initial_interval=timedelta(seconds=inp.retry_first_seconds),
                    backoff_coefficient=2.0,
                    maximum_interval=timedelta(seconds=inp.retry_most_seconds),
                    maximum_attempts=0))  # until delivered, or failed after 24 h
            done += result.done
            self._more = self._more or result.more
            if self._more and workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(inp)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return done


class SweepInput(BaseModel):
    grace_seconds: float = 60.0


@workflow.defn(name="WebhookSweep")
class WebhookSweepWorkflow:
    @workflow.run
    async def run(self, inp: SweepInput) -> int:
        """How many streams it started."""
        return await workflow.execute_activity(
            SWEEP_ACTIVITY, inp, result_type=int,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=3))
