"""Webhooks (CONTRACT.md, "Webhooks"), against a real Temporal server and worker, a real
database and a real HTTP receiver this test runs on 127.0.0.1 (aiohttp), which checks every
signature the way a receiver would: the Standard Webhooks signature (and the specification's
own test vector), the secret sealed in the database, each event in order per session with its
`webhook-id` stable across retries, a receiver that answers 500, hangs, closes the connection,
redirects or is down for a while, and the worker and the Temporal server restarted while
deliveries are pending."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiohttp import web
from sqlalchemy import select

from api.app import create_app
from api.schemas import RENDER
from application.events import RetryPolicy, deliver_stream
from application.nonconformances import mark_overdue
from domain.nonconformance import Deadline
from domain.webhooks import Subscription, new_secret, ordinal, refused_address, sign
from faults.harness import free_port
from persistence.db import Database
from persistence.migrate import upgrade_async
from persistence.tables import webhook_events, webhook_subscriptions
from persistence.uow import SqlStore
from persistence.webhooks import SecretBox
from tests.conftest import (
    SECRET,
    User,
    check,
    eventually,
    fresh_database,
    make_confirmed_sop,
    pass_step,
    sop_body,
    start,
    step_ids,
)
from tests.test_domain_spc import CONCENTRATION
from tests.test_nonconformances import nc_sop_body
from tests.test_spc_api import spc_sop
from worker import build_worker
from worksession.settings import Settings
from worksession.tokens import mint
from worksession.webhook_http import HttpSender

HOOKS = "/api/v1/webhooks"
ALL_EVENTS = ["session.started", "session.completed", "session.cancelled",
              "session.approved", "session.needs_attention", "check.failed",
              "signature.created"]


# ---- the signature ------------------------------------------------------------------------


def test_events_of_one_workflow_task_keep_their_order_across_versions() -> None:
    """Changes one workflow task took share their time: their order is their version's,
    past any multiple of 16 (it wrapped there), and of the events in each."""
    at = datetime(2026, 12, 6, 11, 0, 0, 123456, tzinfo=UTC)
    got = [ordinal(at, v, i) for v in range(1, 40) for i in range(3)]
    assert got == sorted(got) and len(set(got)) == len(got)
    assert ordinal(at + timedelta(milliseconds=1), 1) > ordinal(at, 10_000, 63)
    assert ordinal(datetime(2248, 1, 1, tzinfo=UTC), 16383, 63) < 2**63
    # above every ordinal of the old form (µs × 1024 + ...), so a pending stream keeps order
    old = int(at.timestamp() * 1_000_000) * 1024 + 15 * 64 + 63
    assert ordinal(at) > old


@pytest.mark.parametrize(("address", "refused"), [
    ("10.0.0.1", True), ("169.254.169.254", True), ("::1", True), ("8.8.8.8", False),
    ("::ffff:10.0.0.1", True), ("2606:4700::1111", False),
    # an IPv4 address inside an IPv6 one, which Python counts as global
    ("64:ff9b::a00:1", True), ("64:ff9b::808:808", False),  # NAT64: 10.0.0.1, 8.8.8.8
    ("2002:a9fe:a9fe::", True), ("2002:808:808::", False),  # 6to4: 169.254.169.254, 8.8.8.8
    ("64:ff9b:1::a00:1", True), ("::a00:1", True), ("fec0::1", True),
])
def test_an_address_inside_a_network_is_refused_however_it_is_written(
        address: str, refused: bool) -> None:
    assert refused_address(address) is refused


def test_signature_matches_the_specifications_test_vector() -> None:
    """standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py,
    test_sign_function."""
    assert sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def verifies(secret: str, headers: Any, body: bytes) -> bool:
    """What a receiver does (docs/webhooks.md), written here without the service's code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(f"v1,{expected}", s)
               for s in headers["webhook-signature"].split())


# ---- a receiver ---------------------------------------------------------------------------


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request; `mode` says how it answers:
    ok (204), 500, hang (never answers), slow (204 after half a second), close (drops the
    connection), redirect (302 to `elsewhere`, a second server that counts what reaches
    it)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.mode = "ok"
        self.got: list[tuple[dict[str, str], bytes]] = []  # every request, as received
        self.elsewhere_hits = 0
        self._runner: web.AppRunner | None = None
        self._other: web.AppRunner | None = None
        self.other_port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?x=1"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.got.append(({k.lower(): v for k, v in request.headers.items()}, body))
        if self.mode == "500":
            return web.Response(status=500, text="no")
        if self.mode == "hang":
            await asyncio.sleep(3600)
        if self.mode == "slow":
            await asyncio.sleep(0.5)
        if self.mode == "close":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=200)
        if self.mode == "redirect":
            raise web.HTTPFound(f"http://127.0.0.1:{self.other_port}/stolen")
        return web.Response(status=204)

    async def _elsewhere(self, request: web.Request) -> web.Response:
        self.elsewhere_hits += 1
        return web.Response(status=200)

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        if self._other is None:
            other = web.Application()
            other.router.add_route("*", "/stolen", self._elsewhere)
            self._other = web.AppRunner(other)
            await self._other.setup()
            await web.TCPSite(self._other, "127.0.0.1", self.other_port).start()

    async def down(self) -> None:
        """Stopped: connections to it are refused."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        await self.down()
        if self._other is not None:
            await self._other.cleanup()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(b) for _, b in self.got]

    def delivered_ids(self) -> list[str]:
        return [h["webhook-id"] for h, _ in self.got]


# ---- an own stack: database, worker (short retries), API --------------------------------


SETTINGS = dict(webhook_allow_insecure=True, webhook_timeout=timedelta(seconds=1.5),
                webhook_retry_first=timedelta(milliseconds=200),
                webhook_retry_most=timedelta(seconds=1),
                webhook_retry_for=timedelta(seconds=20),
                webhook_heartbeat=timedelta(seconds=5))


@pytest.fixture(scope="module")
async def hooks_db() -> AsyncIterator[Database]:
    async with fresh_database("webhooks") as url:
        await upgrade_async(url)
        database = Database(url)
        yield database
        await database.dispose()


@pytest.fixture(scope="module")
async def api(client: Any, hooks_db: Database) -> AsyncIterator[httpx.AsyncClient]:
    queue = f"webhooks-{uuid.uuid4()}"
    settings = Settings(database_url=hooks_db.url, task_queue=queue, **SETTINGS)
    worker = build_worker(client, hooks_db, queue, settings=settings,
                          webhook_key=settings.webhook_key_material(SECRET))
    app = create_app(settings, jwt_secret=SECRET, client=client, db=hooks_db)
    async with worker, app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://api") as c:
            yield c


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.up()
    yield r
    await r.close()


async def subscribe(api: httpx.AsyncClient, admin: User, url: str,
                    events: list[str] | None = None) -> dict[str, Any]:
    r = await api.post(HOOKS, json={"url": url, "events": events or ALL_EVENTS,
                                    "description": "test receiver"}, headers=admin.h)
    assert r.status_code == 201, r.text
    return r.json()


async def deliveries(api: httpx.AsyncClient, admin: User, hook: dict[str, Any]
                     ) -> list[dict[str, Any]]:
    r = await api.get(f"{HOOKS}/{hook['id']}/deliveries", params={"limit": 100},
                      headers=admin.h)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def fresh(user: User) -> dict[str, str]:
    return {"Authorization": "Bearer " + mint(SECRET, user.role, user.id, name="Sam Boss")}


async def unsubscribe_all(api: httpx.AsyncClient, admin: User) -> None:
    for h in (await api.get(HOOKS, headers=admin.h)).json():
        await api.delete(f"{HOOKS}/{h['id']}", headers=admin.h)


# ---- subscriptions ------------------------------------------------------------------------


async def test_bad_subscriptions_are_refused_and_change_nothing(
        api: httpx.AsyncClient, client: Any, hooks_db: Database, admin: User,
        supervisor: User) -> None:
    ok = {"url": "https://example.com/hook", "events": ["session.started"]}
    assert (await api.post(HOOKS, json=ok, headers=supervisor.h)).status_code == 403
    assert (await api.get(HOOKS, headers=supervisor.h)).status_code == 403
    for body in ({**ok, "url": "not a url"}, {**ok, "url": "ftp://example.com/x"},
                 {**ok, "url": "https://"}, {**ok, "events": ["session.exploded"]},
                 {**ok, "events": []}, {"events": ok["events"]},
                 {**ok, "url": "https://no-such-host.invalid/hook"}):
        r = await api.post(HOOKS, json=body, headers=admin.h)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await api.post(HOOKS, json={**ok, "events": ["session.exploded"]}, headers=admin.h)
    assert "session.exploded" in r.json()["detail"]
    # Without WORKSESSION_WEBHOOK_ALLOW_INSECURE: http and loopback/private addresses refused.
    strict = create_app(Settings(database_url=hooks_db.url, task_queue="unused"),
                        jwt_secret=SECRET, client=client, db=hooks_db)
    async with strict.router.lifespan_context(strict), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=strict), base_url="http://api") as c:
        for url in ("http://example.com/hook", "https://127.0.0.1/hook",
                    "https://10.1.2.3/hook", "https://169.254.169.254/latest",
                    "https://[::1]/hook", "https://localhost/hook"):
            r = await c.post(HOOKS, json={**ok, "url": url}, headers=admin.h)
            assert r.status_code == 422, (url, r.text)
    assert (await api.get(HOOKS, headers=admin.h)).json() == []
    assert (await api.delete(f"{HOOKS}/{uuid.uuid4()}", headers=admin.h)).status_code == 404
    assert (await api.get(f"{HOOKS}/{uuid.uuid4()}/deliveries",
                          headers=admin.h)).status_code == 404


async def test_secret_is_shown_once_and_kept_sealed(api: httpx.AsyncClient, hooks_db: Database,
                                                    admin: User) -> None:
    hook = await subscribe(api, admin, "http://127.0.0.1:9/hook", ["session.started"])
    assert hook["secret"].startswith("whsec_")
    assert len(base64.b64decode(hook["secret"][6:])) == 32
    listed = (await api.get(HOOKS, headers=admin.h)).json()
    assert [h["id"] for h in listed] == [hook["id"]] and "secret" not in listed[0]
    async with hooks_db.read() as conn:
        stored = (await conn.execute(select(webhook_subscriptions.c.secret))).scalar_one()
    assert hook["secret"] not in stored and hook["secret"][6:] not in stored
    assert base64.b64decode(hook["secret"][6:]) not in base64.b64decode(stored[3:])
    assert (await api.delete(f"{HOOKS}/{hook['id']}", headers=admin.h)).status_code == 204
    assert (await api.get(HOOKS, headers=admin.h)).json() == []


# ---- delivery -------------------------------------------------------------------------------


async def a_session_with_every_event(api: httpx.AsyncClient, worker: User, boss: User,
                                     sop: dict[str, Any]) -> str:
    """started, check.failed (x3, the third with needs_attention), completed, signature.created
    and approved."""
    s = await start(api, worker, sop)
    step = s["current_step"]["id"]
    for _ in range(3):
        r = await check(api, worker, s["id"], step, result="failed")
        assert r.status_code == 200, r.text
    view = r.json()
    while view["status"] == "in_progress":
        view = await pass_step(api, worker, view)
    r = await api.post(f"/api/v1/sessions/{s['id']}/approve", headers=fresh(boss))
    assert r.status_code == 200, r.text
    return s["id"]


EVERY = ["session.started", "check.failed", "check.failed", "check.failed",
         "session.needs_attention", "session.completed", "signature.created",
         "session.approved"]


async def test_every_event_arrives_signed_in_order(
        api: httpx.AsyncClient, receiver: Receiver, admin: User, worker_user: User,
        supervisor: User) -> None:
    sop = await make_confirmed_sop(api, supervisor, sop_body((2,), measurement_at=None))
    hook = await subscribe(api, admin, receiver.url)
    try:
        sid = await a_session_with_every_event(api, worker_user, supervisor, sop)
        await eventually(lambda: _count(receiver, len(EVERY)), within=20)
        events = receiver.events()
        assert [e["type"] for e in events] == EVERY
        for (headers, body), e in zip(receiver.got, events, strict=True):
            assert verifies(hook["secret"], headers, body)
            assert headers["webhook-id"] == e["id"]
            assert headers["content-type"] == "application/json"
        assert len(set(receiver.delivered_ids())) == len(EVERY)
        # data: the resource as the API shows it
        final = (await api.get(f"/api/v1/sessions/{sid}", headers=supervisor.h)).json()
        assert events[0]["data"]["id"] == sid and events[0]["data"]["status"] == "in_progress"
        assert events[1]["data"]["session_id"] == sid
        assert events[1]["data"]["id"] == final["checks"][0]["id"]
        assert events[1]["data"]["result"] == "failed"
        assert events[4]["data"]["needs_attention"] is True
        assert events[5]["data"]["status"] == "completed"
        assert events[6]["data"] == final["signatures"][0]
        assert events[7]["data"]["locked"] is True
        assert {k: v for k, v in events[7]["data"].items() if k != "worker_name"} == \
            {k: v for k, v in final.items() if k != "worker_name"}
        listed = await deliveries(api, admin, hook)
        assert len(listed) == len(EVERY)
        assert all(d["status"] == "delivered" and d["attempts"] == 1
                   and d["last_status_code"] == 204 for d in listed)
        assert [d["event_type"] for d in listed] == EVERY[::-1]  # newest first
    finally:
        await unsubscribe_all(api, admin)


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.got) >= n


async def test_a_nonconformance_sends_opened_contained_closed_in_its_session_s_order(
        api: httpx.AsyncClient, receiver: Receiver, admin: User, worker_user: User,
        supervisor: User) -> None:
    """A failed check on a `hold` step: check.failed then nonconformance.opened (with its
    number), then contained and closed as the API shows the NC, all on the session's
    stream in order."""
    sop = await make_confirmed_sop(api, supervisor, nc_sop_body())
    hook = await subscribe(api, admin, receiver.url, [
        "check.failed", "nonconformance.opened", "nonconformance.contained",
        "nonconformance.closed"])
    try:
        s = await start(api, worker_user, sop)
        first, held_step = step_ids(sop)[:2]
        assert (await check(api, worker_user, s["id"], first)).status_code == 200
        r = await check(api, worker_user, s["id"], held_step, result="failed")
        assert r.status_code == 200, r.text
        url = f"/api/v1/nonconformances/{r.json()['held']['nonconformance_id']}"
        r = await api.post(f"{url}/contain", json={"containment": "Press locked out"},
                           headers=supervisor.h)
        assert r.status_code == 200, r.text
        r = await api.post(f"{url}/close", headers=fresh(supervisor), json={
            "disposition": "rework", "corrective_action": "Guard switch replaced"})
        assert r.status_code == 200, r.text
        closed = r.json()
        await eventually(lambda: _count(receiver, 4), within=20)
        await asyncio.sleep(1)  # nothing more comes
        events = receiver.events()
        assert [e["type"] for e in events] == [
            "check.failed", "nonconformance.opened", "nonconformance.contained",
            "nonconformance.closed"]
        assert all(verifies(hook["secret"], h, b) for h, b in receiver.got)
        assert events[1]["data"]["number"] == closed["number"]
        assert events[1]["data"]["status"] == "open" and events[1]["data"]["hold"] is True
        assert events[2]["data"]["status"] == "contained"
        assert events[3]["data"] == closed
    finally:
        await unsubscribe_all(api, admin)


async def test_a_missed_deadline_records_nonconformance_overdue_with_the_change(
        api: httpx.AsyncClient, hooks_db: Database, admin: User, worker_user: User,
        supervisor: User, receiver: Receiver) -> None:
    """The NC workflow's overdue activity (application.nonconformances.mark_overdue, run
    here directly: its timer is tested in test_nonconformance_deadlines) records the event in
    the transaction that sets `overdue`, once however often it runs."""
    sop = await make_confirmed_sop(api, supervisor, nc_sop_body())
    hook = await subscribe(api, admin, receiver.url, ["nonconformance.overdue"])
    try:
        s = await start(api, worker_user, sop)
        r = await api.post("/api/v1/nonconformances", headers=supervisor.h, json={
            "session_id": s["id"], "severity": "major", "description": "guard loose"})
        assert r.status_code == 201, r.text
        nc = r.json()
        late = datetime.fromisoformat(nc["containment_due"]) + timedelta(seconds=1)
        for _ in range(2):  # a retried activity
            assert await mark_overdue(SqlStore(hooks_db), uuid.UUID(nc["id"]),
                                      Deadline.CONTAINMENT, late, RENDER) == "open"
        [queued] = await deliveries(api, admin, hook)  # once (its delivery: the backstop's)
        assert queued["event_type"] == "nonconformance.overdue"
        async with hooks_db.read() as conn:
            [body] = (await conn.execute(select(webhook_events.c.body).where(
                webhook_events.c.id == queued["event_id"]))).scalars().all()
        data = json.loads(body)["data"]
        assert data["id"] == nc["id"] and data["overdue"] is True
        # it went overdue at its due time, whenever that was noticed: so a late containment
        # recorded with it (in one transaction, at one time) is sent after it
        assert datetime.fromisoformat(json.loads(body)["timestamp"]) == \
            datetime.fromisoformat(nc["containment_due"])
    finally:
        await unsubscribe_all(api, admin)


async def test_an_out_of_control_value_sends_its_event_once(
        api: httpx.AsyncClient, receiver: Receiver, admin: User, worker_user: User,
        supervisor: User) -> None:
    """A measured value inside min/max but beyond its chart's 3 sigma (contract v1.2,
    "Statistical process control"): one spc.out_of_control, with the check and the rule;
    the values before it send nothing."""
    sop = await make_confirmed_sop(api, supervisor, spc_sop())
    step = step_ids(sop)[0]
    hook = await subscribe(api, admin, receiver.url, ["spc.out_of_control"])
    try:
        # the values of test_spc_api's flagged session: the 12th and 13th in control
        for value in [*CONCENTRATION[:12], 99.0]:
            s = await start(api, worker_user, sop)
            assert (await check(api, worker_user, s["id"], step, value=value)).status_code == 200
            assert (await api.post(f"/api/v1/sessions/{s['id']}/cancel", headers=worker_user.h,
                                   json={"reason": "sample taken"})).status_code == 200
        chart = (await api.get(f"/api/v1/sops/{sop['id']}/steps/{step}/spc",
                               headers=supervisor.h)).json()
        assert chart["n"] == 13 and chart["ucl"] < 108.0, chart
        s = await start(api, worker_user, sop)
        r = await check(api, worker_user, s["id"], step, value=108.0)
        assert r.status_code == 200, r.text
        got = (await api.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)).json()
        assert got["needs_attention"] is True
        await eventually(lambda: _count(receiver, 1), within=20)
        await asyncio.sleep(1)  # nothing more comes
        [(headers, body)] = receiver.got
        assert verifies(hook["secret"], headers, body)
        [event] = receiver.events()
        assert event["type"] == "spc.out_of_control"
        assert event["data"]["session_id"] == s["id"] and event["data"]["rules"] == [1]
        assert event["data"]["check"] == r.json()["checks"][-1]
    finally:
        await unsubscribe_all(api, admin)


@pytest.mark.parametrize("mode", ["500", "hang", "close", "redirect"])
async def test_a_failing_receiver_is_retried_with_the_same_id_never_followed(
        api: httpx.AsyncClient, receiver: Receiver, admin: User, worker_user: User,
        supervisor: User, mode: str) -> None:
    sop = await make_confirmed_sop(api, supervisor, sop_body((2,), measurement_at=None))
    hook = await subscribe(api, admin, receiver.url, ["session.started", "session.completed"])
    try:
        receiver.mode = mode
        s = await start(api, worker_user, sop)
        await eventually(lambda: _count(receiver, 3), within=20)  # tried, and again
        attempts = await deliveries(api, admin, hook)
        assert attempts[0]["status"] == "pending" and attempts[0]["attempts"] >= 2
        assert attempts[0]["last_error"], attempts[0]
        if mode in ("500", "redirect"):
            assert attempts[0]["last_status_code"] == (500 if mode == "500" else 302)
        receiver.mode = "ok"
        view = s
        while view["status"] == "in_progress":  # the next event waits behind the first
            view = await pass_step(api, worker_user, view)
        await eventually(lambda: _delivered(api, admin, hook, 2), within=20)
        ids = receiver.delivered_ids()
        first = [i for i in ids if i == ids[0]]
        assert len(first) >= 3  # every retry: the same webhook-id
        assert [e["type"] for e in receiver.events() if e["id"] != ids[0]] == \
            ["session.completed"]
        assert all(verifies(hook["secret"], h, b) for h, b in receiver.got)
        assert receiver.elsewhere_hits == 0  # a redirect is never followed
    finally:
        await unsubscribe_all(api, admin)


async def _delivered(api: httpx.AsyncClient, admin: User, hook: dict[str, Any],
                     n: int) -> bool:
    return sum(d["status"] == "delivered" for d in await deliveries(api, admin, hook)) >= n


async def test_a_receiver_down_for_a_while_gets_every_event_in_order(
        api: httpx.AsyncClient, receiver: Receiver, admin: User, supervisor: User) -> None:
    sop = await make_confirmed_sop(api, supervisor, sop_body((2,), measurement_at=None))
    hook = await subscribe(api, admin, receiver.url)
    try:
        await receiver.down()
        workers = [User(uuid.uuid4(), "worker") for _ in range(4)]
        sids = await asyncio.gather(*[a_session_with_every_event(api, w, supervisor, sop)
                                      for w in workers])
        await asyncio.sleep(1.5)
        assert receiver.got == []
        pending = await deliveries(api, admin, hook)
        assert len(pending) == len(EVERY) * len(sids)
        assert any(d["attempts"] >= 1 and "connect" in (d["last_error"] or "")
                   for d in pending)
        await receiver.up()
        await eventually(lambda: _delivered(api, admin, hook, len(EVERY) * len(sids)),
                         within=30)
        by_session: dict[str, list[str]] = defaultdict(list)
        for e in receiver.events():
            by_session[e["data"].get("session_id") or e["data"]["id"]].append(e["id"])
        for sid in sids:  # every event, once (first arrival), in order
            types = {e["id"]: e["type"] for e in receiver.events()}
            firsts = list(dict.fromkeys(by_session[sid]))
            assert [types[i] for i in firsts] == EVERY
    finally:
        await unsubscribe_all(api, admin)


async def test_a_webhook_removed_while_its_backlog_goes_out_gets_no_more(
        api: httpx.AsyncClient, receiver: Receiver, admin: User, worker_user: User,
        supervisor: User) -> None:
    """Its pending deliveries are dropped with it (CONTRACT.md): the attempt sending its
    backlog stops at the event in flight, not at the end of the batch it read."""
    sop = await make_confirmed_sop(api, supervisor, sop_body((2,), measurement_at=None))
    hook = await subscribe(api, admin, receiver.url)
    try:
        await receiver.down()
        await a_session_with_every_event(api, worker_user, supervisor, sop)
        assert len(await deliveries(api, admin, hook)) == len(EVERY)
        receiver.mode = "slow"
        await receiver.up()
        async def arriving() -> bool:
            return len(receiver.got) >= 1
        await eventually(arriving, within=20)
        r = await api.delete(f"{HOOKS}/{hook['id']}", headers=admin.h)
        assert r.status_code == 204
        await asyncio.sleep(3)  # what the old batch would have sent by now: all of it
        assert 1 <= len(receiver.got) <= 2, receiver.delivered_ids()
    finally:
        receiver.mode = "ok"
        await unsubscribe_all(api, admin)


@asynccontextmanager
async def outbox_of_one(receiver: Receiver) -> AsyncIterator[tuple[SqlStore, Subscription,
                                                                   uuid.UUID]]:
    """A database of its own with one subscription (to `receiver`, session.started): its
    store, the subscription and a session's id for a stream; no worker delivers from it."""
    async with fresh_database("webhook-outbox") as url:
        await upgrade_async(url)
        db = Database(url)
        try:
            store = SqlStore(db, SecretBox(Settings().webhook_key_material(SECRET)))
            sub = Subscription(uuid.uuid4(), receiver.url, ["session.started"], None,
                               datetime.now(UTC))
            async with store() as uow:
                await uow.events.add_subscription(sub, new_secret(b"k" * 24))
            yield store, sub, uuid.uuid4()
        finally:
            await db.dispose()


async def test_an_attempt_stops_sending_at_its_time_budget_and_says_there_is_more(
        receiver: Receiver) -> None:
    """A slow receiver (half a second an event here, up to 10 s in life) and a backlog: an
    attempt ends its batch at its time budget (5 min in life, half its activity's timeout)
    with `more`, rather than being timed out while still sending; the next goes on, in
    order."""
    async with outbox_of_one(receiver) as (store, sub, session):
        async with store() as uow:
            for i in range(6):
                await uow.events.record("session.started", {"i": i}, session, version=i + 1)
        receiver.mode = "slow"
        sender = HttpSender(5, allow_insecure=True)
        try:
            first = await deliver_stream(store, sender, sub.id, str(session), RetryPolicy(),
                                         lambda: datetime.now(UTC),
                                         budget=timedelta(seconds=1.2))
            assert first.more and 2 <= first.delivered <= 3, first
            rest = await deliver_stream(store, sender, sub.id, str(session), RetryPolicy(),
                                        lambda: datetime.now(UTC))
            assert rest.delivered == 6 - first.delivered and not rest.more
        finally:
            receiver.mode = "ok"
            await sender.close()
    assert [e["data"]["i"] for e in receiver.events()] == list(range(6))


async def test_deliveries_recorded_for_a_webhook_as_it_was_removed_are_dropped(
        receiver: Receiver) -> None:
    """A change that read the subscriptions just before one was removed records its
    deliveries after the removal: the stream's next attempt drops them (nothing is sent),
    so the backstop does not find them stranded every minute for good."""
    async with outbox_of_one(receiver) as (store, sub, session):
        async with store() as uow:
            await uow.events.record("session.started", {}, session)
            # the removal, as it commits while that change's transaction is open
            await uow.events.conn.execute(webhook_subscriptions.delete().where(
                webhook_subscriptions.c.id == sub.id))
        later = datetime.now(UTC) + timedelta(minutes=1)
        async with store(read_only=True) as uow:
            assert await uow.events.stranded(later) == [(sub.id, str(session))]
        r = await deliver_stream(store, HttpSender(5, allow_insecure=True), sub.id,
                                 str(session), RetryPolicy(), lambda: datetime.now(UTC))
        assert (r.delivered, r.more) == (0, False)
        async with store(read_only=True) as uow:
            assert await uow.events.stranded(later) == []
        assert receiver.got == []


async def test_a_delivery_failed_for_its_whole_window_can_be_redelivered(
        api: httpx.AsyncClient, client: Any, receiver: Receiver, admin: User,
        worker_user: User, supervisor: User) -> None:
    """The window is 20 s here (24 h by default). Every attempt of the retried delivery is
    an activity retry: no history event each; the redelivery's run costs 12."""
    sop = await make_confirmed_sop(api, supervisor, sop_body((2,), measurement_at=None))
    hook = await subscribe(api, admin, receiver.url, ["session.started"])
    try:
        receiver.mode = "500"
        s = await start(api, worker_user, sop)

        async def failed() -> Any:
            items = await deliveries(api, admin, hook)
            return items if items[0]["status"] == "failed" else None
        items = await eventually(failed, within=40)
        assert items[0]["attempts"] >= 5 and items[0]["last_status_code"] == 500
        handle = client.get_workflow_handle(f"webhook-{hook['id']}-{s['id']}")
        assert await handle.result() == 1  # its run is over: it completed one (as failed)
        receiver.mode = "ok"
        r = await api.post(f"{HOOKS}/{hook['id']}/deliveries/{items[0]['id']}/redeliver",
                           headers=admin.h)
        assert r.status_code == 202, r.text
        # queued again from scratch: its first failure would wait 5 s again, not an hour
        assert (r.json()["status"], r.json()["attempts"]) == ("pending", 0)
        await eventually(lambda: _delivered(api, admin, hook, 1), within=20)
        assert len(set(receiver.delivered_ids())) == 1  # the same webhook-id throughout
        handle = client.get_workflow_handle(handle.id)  # the redelivery's run
        assert await handle.result() == 1
        history = await handle.fetch_history()
        assert len(history.events) == 12, [e.event_type for e in history.events]
        r = await api.post(f"{HOOKS}/{hook['id']}/deliveries/{uuid.uuid4()}/redeliver",
                           headers=admin.h)
        assert r.status_code == 404
    finally:
        await unsubscribe_all(api, admin)


# ---- restarts: the worker and the Temporal server, a lost start ---------------------------


def stack_for_webhooks() -> Any:
    import os

    from faults.stack import Stack
    stack = Stack(os.environ.get("WORKSESSION_TEST_DATABASE", "sqlite"), label="webhooks")
    stack.extra_env = {
        "WORKSESSION_WEBHOOK_ALLOW_INSECURE": "true",
        "WORKSESSION_WEBHOOK_RETRY_FIRST": "PT0.2S", "WORKSESSION_WEBHOOK_RETRY_MOST": "PT1S",
        "WORKSESSION_WEBHOOK_HEARTBEAT": "PT2S",
        "WORKSESSION_WEBHOOK_SWEEP_EVERY": "PT2S", "WORKSESSION_WEBHOOK_SWEEP_GRACE": "PT1S"}
    return stack


async def test_worker_and_temporal_restarted_while_deliveries_pend_lose_nothing(
        receiver: Receiver) -> None:
    """Real processes (faults/stack.py): the API, the worker and a Temporal dev server on a
    database file. Events recorded while the receiver is down, then the worker killed
    (SIGKILL) and the Temporal server restarted, then the receiver back: every event
    arrives, in order per session. Then an event whose delivery was never started (recorded
    as a process that died right after its commit leaves it): the backstop delivers it."""

    async with stack_for_webhooks() as stack:
        admin = {"Authorization": f"Bearer {stack.token('admin')}"}
        boss = User(uuid.uuid4(), "supervisor")
        boss_h = {"Authorization": f"Bearer {stack.token('supervisor', boss.id)}"}
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as api:
            r = await api.post(HOOKS, json={"url": receiver.url, "events": ALL_EVENTS},
                               headers=admin)
            assert r.status_code == 201, r.text
            hook = r.json()
            r = await api.post("/api/v1/sops", json=sop_body((2,), measurement_at=None),
                               headers=boss_h)
            sop = (await api.post(f"/api/v1/sops/{r.json()['id']}/confirm",
                                  headers=boss_h)).json()
            await receiver.down()
            sids = []
            for _ in range(3):
                w = {"Authorization": f"Bearer {stack.token('worker', uuid.uuid4())}"}
                s = (await api.post("/api/v1/sessions", json={"sop_id": sop["id"]},
                                    headers=w)).json()
                for step in [st["id"] for t in sop["tasks"] for st in t["steps"]]:
                    r = await api.post(f"/api/v1/sessions/{s['id']}/checks",
                                       json={"step_id": step, "result": "passed"}, headers=w)
                    assert r.status_code == 200, r.text
                sids.append(s["id"])
            await asyncio.sleep(1)
            stack.kill_worker()
            await stack.restart_temporal()
            await stack.restart_worker_after_kill()
            await receiver.up()

            async def all_in() -> bool:
                return len(set(receiver.delivered_ids())) >= 2 * len(sids)
            await eventually(all_in, within=90)
            for sid in sids:
                firsts = list(dict.fromkeys(
                    (e["id"], e["type"]) for e in receiver.events() if e["data"]["id"] == sid))
                assert [t for _, t in firsts] == ["session.started", "session.completed"]
            assert all(verifies(hook["secret"], h, b) for h, b in receiver.got)

            # A start lost between the commit and the signal: the backstop finds it.
            db = Database(stack.db_url)
            key = Settings(jwt_secret=stack.secret.decode()).webhook_key_material()
            assert key is not None
            async with SqlStore(db, SecretBox(key))() as uow:
                lost = await uow.events.record("session.cancelled", {"id": "lost"})
            await db.dispose()
            assert lost is not None

            async def found() -> bool:
                return lost in receiver.delivered_ids()
            await eventually(found, within=30)
