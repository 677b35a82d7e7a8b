"""Webhook deliveries' work (workflows/webhooks.py), on the worker's database."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

from temporalio import activity
from temporalio.exceptions import ApplicationError

from application.events import RetryPolicy, Send, deliver_stream, start_stranded
from application.ports import Deliveries, Store
from workflows.webhooks import (
    DELIVER_ACTIVITY,
    SWEEP_ACTIVITY,
    DeliverResult,
    StreamInput,
    SweepInput,
)

NOT_DELIVERED = "webhook-not-delivered"


def _now() -> datetime:
    return datetime.now(UTC)


class WebhookWork:
    def __init__(self, store: Store, send: Send, policy: RetryPolicy,
                 deliveries: Deliveries, clock: Callable[[], datetime] = _now) -> None:
        self._store = store
        self._send = send
        self._policy = policy
        self._deliveries = deliveries
        self._clock = clock

    @activity.defn(name=DELIVER_ACTIVITY)
    async def deliver(self, inp: StreamInput) -> DeliverResult:
        """A run of the stream's pending deliveries, in order. One not delivered (and not yet
        out of retries) fails this attempt, to be tried again after its backoff."""
        r = await deliver_stream(self._store, self._send, UUID(inp.subscription_id),
                                 inp.stream, self._policy, self._clock,
                                 beat=activity.heartbeat)
        if r.retry_in is not None:
            raise ApplicationError(
                f"a webhook of stream {inp.stream} was not delivered (see its deliveries); "
                f"next attempt in {r.retry_in}", type=NOT_DELIVERED,
                next_retry_delay=max(r.retry_in, timedelta(milliseconds=10)))
        return DeliverResult(done=r.delivered + r.failed, more=r.more)

    @activity.defn(name=SWEEP_ACTIVITY)
    async def start_stranded(self, inp: SweepInput) -> int:
        return await start_stranded(self._store, self._deliveries, self._clock(),
                                    timedelta(seconds=inp.grace_seconds))
