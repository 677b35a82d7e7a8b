"""Scenario (e) webhook: the usual device stream with a webhook subscription (every event) to
a receiver the harness runs (aiohttp on 127.0.0.1), while the worker is SIGKILLed at random
moments and the Temporal dev server is restarted once. After the stream the harness waits for
the deliveries to drain and compares:

- the events the service acknowledged: every event in the outbox (`webhook_events`, recorded in
  the transaction of the change that caused it) of the devices' sessions, and the events the
  acknowledged changes must cause (`session.started` for every session, `check.failed` for
  every acknowledged failed check, `session.completed` for every completed session);
- the events received: distinct `webhook-id`s, each signature verified.

lost = acknowledged events never received; duplicated = the same event (the same check, or
the same session's start or completion) received under two different `webhook-id`s (a resend
with the same `webhook-id` is a retry, allowed and counted); out of order = a session's
events first received in another order than recorded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import signal
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import httpx
from aiohttp import web
from sqlalchemy import select

from faults.harness import free_port
from persistence.db import Database
from persistence.tables import webhook_events, work_sessions

# Short backoff so that a delivery after a fault is retried within the scenario's time (the
# default backs off up to an hour); the backstop sweep runs every 10 s instead of every minute.
ENV = {
    "WORKSESSION_WEBHOOK_ALLOW_INSECURE": "true",
    "WORKSESSION_WEBHOOK_RETRY_FIRST": "PT1S",
    "WORKSESSION_WEBHOOK_RETRY_MOST": "PT5S",
    "WORKSESSION_WEBHOOK_HEARTBEAT": "PT5S",
    "WORKSESSION_WEBHOOK_SWEEP_EVERY": "PT10S",
    "WORKSESSION_WEBHOOK_SWEEP_GRACE": "PT10S",
}
EVENTS = ["session.started", "session.completed", "session.cancelled", "session.approved",
          "session.needs_attention", "check.failed", "signature.created"]
DRAIN_WITHIN = 180.0


class Receiver:
    """Answers 204 to every POST and keeps every request: (time, webhook-id, signature ok,
    body)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.secret = ""
        self.got: list[tuple[float, str, bool, dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _verifies(self, headers: Any, body: bytes) -> bool:
        key = base64.b64decode(self.secret.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        mac = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        return any(hmac.compare_digest(f"v1,{mac}", s)
                   for s in headers["webhook-signature"].split())

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((time.monotonic(), request.headers["webhook-id"],
                         self._verifies(request.headers, body), json.loads(body)))
        return web.Response(status=204)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def subscribe(world: Any, receiver: Receiver) -> None:
    admin = {"Authorization": f"Bearer {world.stack.token('admin')}"}
    async with httpx.AsyncClient(base_url=world.stack.api_url, timeout=30) as http:
        r = await http.post("/api/v1/webhooks", headers=admin, json={
            "url": receiver.url, "events": EVENTS, "description": "fault run receiver"})
        r.raise_for_status()
        receiver.secret = r.json()["secret"]


async def inject(world: Any, t0: float) -> None:
    """Worker kills at random moments (as in (a)) and one Temporal restart mid-stream."""
    from faults.scenarios import _moments

    cfg, stack = world.cfg, world.stack
    kills = _moments(world.rng, cfg.faults, 0.1 * cfg.duration, 0.85 * cfg.duration, 1.5)
    restart_at = 0.5 * cfg.duration
    plan = sorted([(at, "kill") for at in kills] + [(restart_at, "temporal")])
    for at, what in plan:
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        when = time.monotonic()
        if what == "temporal":
            sig = signal.SIGKILL
            down = await stack.restart_temporal(sig, world.rng.uniform(*cfg.temporal_down))
            world.events.append((when, time.monotonic(), "Temporal restart"))
            world.say(f"Temporal dev server restarted (SIGKILL) at {when - t0:.1f} s, "
                      f"down {down:.1f} s")
            await asyncio.sleep(3)
            if await stack.ensure_worker():
                world.fig.notes.append("the worker exited while Temporal was down")
            continue
        pid = stack.kill_worker()
        if pid is None:
            continue
        delay = world.rng.uniform(0.0, 1.5)
        await stack.restart_worker_after_kill(delay)
        world.events.append((when, when, f"SIGKILL worker {pid}"))
        world.say(f"SIGKILL worker pid {pid} at {when - t0:.1f} s; new worker "
                  f"{stack.worker.pid} after {delay:.1f} s")
    world.fig.faults = stack.worker_kills + stack.temporal_restarts
    world.fig.extra["kills"] = stack.worker_kills
    world.fig.extra["temporal_restarts"] = stack.temporal_restarts


def _key(event: dict[str, Any]) -> str:
    """What makes an event the same event whatever its id."""
    data = event["data"]
    if event["type"] == "check.failed":
        return f"check.failed:{data['id']}"
    if event["type"] == "signature.created":
        return f"signature.created:{data['id']}"
    return f"{event['type']}:{data.get('id')}:{event['timestamp']}"


async def verify(world: Any, receiver: Receiver) -> None:
    """Wait for the outbox to drain to the receiver, then compare (see the module's doc)."""
    fig, stack = world.fig, world.stack
    sessions = [uuid.UUID(s) for d in world.devices for s in d.sessions]
    db = Database(stack.db_url)
    try:
        async with db.read() as conn:
            rows = (await conn.execute(select(
                webhook_events.c.id, webhook_events.c.type, webhook_events.c.session_id,
                webhook_events.c.ordinal).where(webhook_events.c.session_id.in_(sessions))
            )).all()
            status = {str(k): v for k, v in (await conn.execute(select(
                work_sessions.c.id, work_sessions.c.status).where(
                work_sessions.c.id.in_(sessions)))).all()}
    finally:
        await db.dispose()
    outbox = {r.id: r for r in rows}
    t_end = time.monotonic()
    while set(outbox) - {g[1] for g in receiver.got}:
        if time.monotonic() - t_end > DRAIN_WITHIN:
            break
        await asyncio.sleep(0.5)
    drained_s = time.monotonic() - t_end
    await asyncio.sleep(2)  # a late retry of something delivered would show as a duplicate
    received: dict[str, dict[str, Any]] = {}
    first_at: dict[str, float] = {}
    for at, wid, _ok, body in receiver.got:
        received.setdefault(wid, body)
        first_at.setdefault(wid, at)
    bad_sig = sum(1 for g in receiver.got if not g[2])
    # the events the acknowledged changes must cause
    must: set[str] = set()
    for rec in world.ledger.values():
        if rec.acked_at is not None and rec.result == "failed":
            must.add(f"check.failed:{rec.check_id}")
    keys_received = Counter(_key(b) for b in received.values())
    types_received = Counter((b["type"], str(b["data"].get("session_id") or b["data"]["id"]))
                             for b in received.values() if b["type"].startswith("session."))
    missing_must = [k for k in must if not keys_received[k]]
    for sid in map(str, sessions):
        if not types_received[("session.started", str(sid))]:
            missing_must.append(f"session.started:{sid}")
        if status.get(sid) == "completed" and not types_received[("session.completed",
                                                                  str(sid))]:
            missing_must.append(f"session.completed:{sid}")
    lost_outbox = [e for e in outbox if e not in received]
    same_event_twice = [k for k, n in keys_received.items() if n > 1]
    retries = len(receiver.got) - len(received)
    # order per session: first receipts in the order the outbox recorded them
    per_session: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for eid, r in outbox.items():
        if eid in first_at:
            per_session[str(r.session_id)].append((r.ordinal, first_at[eid]))
    out_of_order = sum(1 for evs in per_session.values()
                       if [t for _, t in sorted(evs)] != sorted(t for _, t in evs))
    foreign = [w for w in received if w not in outbox]
    fig.extra.update(wh_outbox=len(outbox), wh_received=len(received),
                     wh_requests=len(receiver.got), wh_retries_same_id=retries,
                     wh_lost=len(lost_outbox) + len(missing_must),
                     wh_dup=len(same_event_twice), wh_out_of_order=out_of_order,
                     wh_bad_signature=bad_sig, wh_acked_failed_checks=len(must),
                     wh_drained_s=round(drained_s, 1),
                     wh_by_type=dict(Counter(b["type"] for b in received.values())))
    if lost_outbox:
        fig.fail(f"{len(lost_outbox)} outbox event(s) never received: {lost_outbox[:3]}")
    if missing_must:
        fig.fail(f"{len(missing_must)} event(s) an acknowledged change causes never "
                 f"received: {missing_must[:3]}")
    if same_event_twice:
        fig.fail(f"{len(same_event_twice)} event(s) received under two webhook-ids: "
                 f"{same_event_twice[:3]}")
    if out_of_order:
        fig.fail(f"{out_of_order} session(s) whose events arrived out of order")
    if bad_sig:
        fig.fail(f"{bad_sig} request(s) whose signature does not verify")
    if foreign:
        fig.notes.append(f"{len(foreign)} event(s) received for sessions of no device")
    if not outbox:
        fig.fail("no event was recorded")


@contextlib.asynccontextmanager
async def running_receiver() -> Any:
    receiver = Receiver()
    await receiver.up()
    try:
        yield receiver
    finally:
        await receiver.down()
