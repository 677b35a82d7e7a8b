"""Webhook events: recorded with the change that causes them (the outbox), and delivered, one
stream (a subscription's events of one session) at a time, in order.

Recording: a written session change's events (domain.webhooks.events_of) go into the outbox in
the change's transaction (`record_change`: called right after `write_change` wrote it, by the
API's unit of work and by the run's write activity). Starting their delivery: once the
transaction commits, by whoever committed it (`start_deliveries`); if that process dies or
cannot reach Temporal in between, the events stay recorded and the backstop
(`start_stranded`, a Temporal schedule) starts them.

Delivering (`deliver_stream`, in a Temporal activity): the stream's pending deliveries in
order, each attempt recorded; the first that fails stops the stream until its next attempt,
unless it has been failing for the whole retry window, when it is `failed` and the stream goes
on."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

from application.ports import Deliveries, SessionWorkflows, Store, StoredSession, UnitOfWork
from domain.changes import SessionChange
from domain.nonconformance import Nonconformance
from domain.signature import Signature
from domain.webhooks import events_of, retry_delay, sign
from domain.work_session import Check

log = logging.getLogger("worksession.webhooks")

DELIVERED, FAILED, PENDING = "delivered", "failed", "pending"


class Render(Protocol):
    """The resources as the API shows them (api/schemas), as JSON-ready dicts."""

    def session(self, stored: StoredSession) -> dict[str, Any]: ...
    def check(self, check: Check) -> dict[str, Any]: ...
    def signature(self, signature: Signature) -> dict[str, Any]: ...
    def nonconformance(self, nc: Nonconformance) -> dict[str, Any]: ...


async def record_change(uow: UnitOfWork, change: SessionChange, render: Render) -> int:
    """Record the events a change just written causes, in its transaction. The session is
    shown as it stands after the change (read in this transaction), only when some
    subscription wants the event. Returns how many events were recorded."""
    recorded, stored = 0, None
    for i, ev in enumerate(events_of(change)):
        if not await uow.events.wanted(ev.type):
            continue
        if isinstance(ev.subject, Check):
            data = {"session_id": str(change.state.id), **render.check(ev.subject)}
        else:
            if stored is None:  # as written: a signature's record_hash is the write's
                stored = await uow.sessions.load(change.state.id)
                assert stored is not None  # written in this very transaction
            if isinstance(ev.subject, Signature):
                sig = ev.subject
                data = render.signature(next(
                    (g for g in stored.state.signatures if g.id == sig.id), sig))
            else:
                data = render.session(stored)
        await uow.events.record(ev.type, data, change.state.id, at=change.at,
                                version=change.version, index=i)
        recorded += 1
    # a measured value that broke a rule of its chart (judged as the change was written)
    for j, c in enumerate(change.checks):
        judged = uow.sessions.out_of_control.get(c.id)
        if judged is None or not await uow.events.wanted("spc.out_of_control"):
            continue
        chart, rules = judged
        data = {"session_id": str(change.state.id), "sop_id": str(change.state.sop_id),
                "chart_id": str(chart), "rules": rules, "check": render.check(c)}
        await uow.events.record("spc.out_of_control", data, change.state.id, at=change.at,
                                version=change.version, index=32 + j)
        recorded += 1
    # the NCs its failed checks opened (written with them: read back with their numbers)
    for opened in change.nonconformances:
        nc = await uow.nonconformances.get(opened.id)
        if nc is not None and await record_nonconformance(
                uow, render, "nonconformance.opened", nc, change.at, change.version):
            recorded += 1
    return recorded


async def record_nonconformance(uow: UnitOfWork, render: Render | None, event_type: str,
                                nc: Nonconformance, at: datetime, version: int = 0) -> bool:
    """An NC's event, in the transaction of its change, on its session's stream (so that
    a session's events and its NCs' go out in one order)."""
    if render is None or not await uow.events.wanted(event_type):
        return False
    await uow.events.record(event_type, render.nonconformance(nc), nc.session_id, at=at,
                            version=version, index=48)
    return True


async def start_deliveries(deliveries: Deliveries | None,
                           streams: Iterable[tuple[UUID, str]]) -> None:
    """After the commit: start (or wake) the delivery of each stream that got events. A
    failure here loses nothing (the events are recorded): the backstop starts them."""
    streams = set(streams)
    if not streams or deliveries is None:
        return
    try:
        await deliveries.start(streams)
    except Exception as e:  # noqa: BLE001 - whatever it is, the backstop covers it
        log.warning("could not start the delivery of %d webhook stream(s) now (%s); the "
                    "backstop will", len(streams), e)


async def tell_out_of_control(workflows: SessionWorkflows | None,
                              written: list[SessionChange],
                              out_of_control: Mapping[UUID, object]) -> None:
    """After the commit: the run of each session whose written checks broke an SPC rule
    (`write_change` judged them) is told, so that the live session and the Temporal UI's
    `NeedsAttention` say what the record says. Best effort: the record has the flag
    whatever happens here (a run that missed it shows it only on the record)."""
    if not out_of_control or workflows is None:
        return
    for change in written:
        if any(c.id in out_of_control for c in change.checks):
            st = change.state
            try:
                await workflows.measured_out_of_control(st.worker_id, st.id)
            except Exception as e:  # noqa: BLE001 - the record holds it either way
                log.warning("session %s measured out of control; its run was not told (%s)",
                            st.id, e)


async def start_stranded(store: Store, deliveries: Deliveries, now: datetime,
                         grace: timedelta) -> int:
    """The backstop: start the streams whose deliveries were recorded more than `grace` ago
    and never started (see persistence WebhookRepository.stranded). Returns how many."""
    async with store(read_only=True) as uow:
        streams = await uow.events.stranded(now - grace)
    if streams:
        log.warning("starting %d webhook stream(s) whose delivery was never started",
                    len(streams))
        await deliveries.start(streams)
    return len(streams)


@dataclass(frozen=True)
class Answer:
    """What one attempt got: the receiver's status code, or the error that kept it from
    answering (refused, timed out, refused address...)."""

    status_code: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# url, headers, body -> what the receiver answered
Send = Callable[[str, dict[str, str], bytes], Awaitable[Answer]]


@dataclass(frozen=True)
class RetryPolicy:
    retry_for: timedelta = timedelta(hours=24)
    first: timedelta = timedelta(seconds=5)
    most: timedelta = timedelta(hours=1)


@dataclass(frozen=True)
class StreamResult:
    delivered: int = 0
    failed: int = 0
    retry_in: timedelta | None = None  # the stream stopped at a delivery to try again then
    more: bool = False  # the batch ended with more pending


# How long one attempt keeps sending: half its activity's start-to-close timeout (10 min,
# workflows/webhooks.py), so that a slow receiver (up to 10 s an event) ends a batch with
# `more` instead of the attempt being timed out and retried beside one still sending.
BATCH_TIME = timedelta(minutes=5)


async def deliver_stream(store: Store, send: Send, subscription_id: UUID, stream: str,
                         policy: RetryPolicy, clock: Callable[[], datetime],
                         batch: int = 200, beat: Callable[[], None] = lambda: None,
                         budget: timedelta = BATCH_TIME) -> StreamResult:
    """Deliver a stream's pending deliveries in order, up to `batch` of them, starting no
    send after `budget`."""
    started = clock()
    async with store(read_only=True) as uow:
        sub = await uow.events.subscription(subscription_id)
        secret = await uow.events.secret(subscription_id) if sub else None
        pending = await uow.events.pending(subscription_id, stream, batch) if sub else []
    if sub is None or secret is None:  # removed: its deliveries went with it, but for those
        # a transaction that read it just before its removal recorded after: dropped too,
        # or the backstop would find them stranded every minute, for good
        async with store() as uow:
            await uow.events.remove_subscription(subscription_id)
        return StreamResult()
    delivered = failed = 0
    for d in pending:
        beat()
        now = clock()
        if now - started >= budget:
            return StreamResult(delivered, failed, more=True)
        ts = int(now.timestamp())
        body = d.body.encode()
        answer = await send(sub.url, {
            "content-type": "application/json", "webhook-id": d.event_id,
            "webhook-timestamp": str(ts), "webhook-signature": sign(secret, d.event_id, ts, body),
        }, body)
        done = clock()
        if answer.ok:
            outcome = DELIVERED
        elif done - d.queued_at >= policy.retry_for:
            outcome = FAILED
        else:
            outcome = PENDING
        error = answer.error if answer.error else (
            None if answer.ok else f"answered {answer.status_code}")
        async with store() as uow:
            current = await uow.events.attempted(d, done, answer.status_code, error, outcome)
        if not current:  # its subscription removed (send no more), or redelivered: read again
            return StreamResult(delivered, failed, more=True)
        if outcome == PENDING:
            log.info("webhook %s to %s: %s; retrying", d.event_id, sub.url, error)
            return StreamResult(delivered, failed, retry_in=retry_delay(
                d.attempts + 1, policy.first, policy.most))
        if outcome == FAILED:
            log.warning("webhook %s to %s failed for good after %d attempts: %s",
                        d.event_id, sub.url, d.attempts + 1, error)
            failed += 1
        else:
            delivered += 1
    return StreamResult(delivered, failed, more=len(pending) == batch)
