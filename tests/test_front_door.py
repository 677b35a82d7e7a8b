"""The front door (CONTRACT.md, "Health" and "Authentication", v1.1): load shed with a fast
503 and Retry-After while health checks and admitted requests go on; a refused upload the
client can read; request ids as the contract allows them; HEAD wherever GET; a JWT date
that is not a number."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from temporalio.testing import WorkflowEnvironment

from tests.conftest import (
    SECRET,
    User,
    WriteOutage,
    eventually,
    make_confirmed_sop,
    start,
)
from tests.evidence_files import jpeg
from tests.live_server import LiveServer
from workflows.work_session import WorkSessionWorkflow

SESSIONS = "/api/v1/sessions"
LIMIT = 2  # requests let in at once by the server under test
WAIT = 1.5  # how long one waits there for a place before it is shed


@pytest.fixture(scope="module")
def small_door(temporal_env: WorkflowEnvironment) -> Iterator[LiveServer]:
    server = LiveServer(temporal_env.client.service_client.config.target_host, "door",
                        max_in_flight=LIMIT, admission_wait=timedelta(seconds=WAIT),
                        retry_after_seconds=2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _overloaded(r: httpx.Response) -> bool:
    return (r.status_code == 503 and r.headers.get("content-type", "").startswith(
        "application/problem+json") and r.json()["type"].endswith("/overloaded"))


async def _holds_a_check(run: Any) -> bool:
    return len((await run.query(WorkSessionWorkflow.session))["checks"]) == 1


async def _fill_every_place(http: httpx.AsyncClient, workers: list[User],
                            sessions: list[dict[str, Any]],
                            temporal_env: WorkflowEnvironment) -> list[asyncio.Task[Any]]:
    """With the database's writes held: a check per session, each taken by its run and then
    waiting on the database, so that they hold every place there is."""
    admitted = [asyncio.create_task(http.post(
        f"{SESSIONS}/{s['id']}/checks", headers=w.h,
        json={"step_id": s["current_step_id"], "result": "passed"}))
        for w, s in zip(workers, sessions, strict=True)]
    # all inside: their runs hold the check (asked of Temporal, not of the API)
    for s in sessions:
        run = temporal_env.client.get_workflow_handle(s["workflow_id"])
        await eventually(lambda run=run: _holds_a_check(run))
    assert not any(t.done() for t in admitted)
    return admitted


async def test_a_flood_is_shed_at_once_while_health_and_admitted_checks_go_on(
        small_door: LiveServer, supervisor: User, temporal_env: WorkflowEnvironment):
    async with httpx.AsyncClient(base_url=small_door.base_url, timeout=60) as http:
        sop = await make_confirmed_sop(http, supervisor)
        workers = [User(uuid.uuid4(), "worker") for _ in range(LIMIT)]
        sessions = [await start(http, w, sop) for w in workers]
        async with WriteOutage(small_door.database_url):
            admitted = await _fill_every_place(http, workers, sessions, temporal_env)
            flood = await asyncio.gather(*(
                http.post(SESSIONS, headers=w.h, json={"sop_id": sop["id"]})
                for w in [User(uuid.uuid4(), "worker") for _ in range(30)]))
            assert all(_overloaded(r) for r in flood), [r.status_code for r in flood]
            assert {r.headers["retry-after"] for r in flood} == {"2"}
            assert all(r.headers["x-request-id"] for r in flood)
            # shed at once: answered while the admitted ones are still waiting
            assert not any(t.done() for t in admitted)
            health = await http.get("/healthz")
            assert health.status_code == 200, health.text
        answered = await asyncio.gather(*admitted)
        assert [r.status_code for r in answered] == [200] * LIMIT, [r.text for r in answered]
        assert all(len(r.json()["checks"]) == 1 for r in answered)
        # and nothing the flood sent was started
        for w, s in zip(workers, sessions, strict=True):
            current = await http.get(f"{SESSIONS}/current", headers=w.h)
            assert current.json()["id"] == s["id"]
        listed = await http.get(SESSIONS, headers=supervisor.h, params={"limit": 100})
        assert listed.status_code == 200 and listed.json()["total"] == LIMIT


async def test_a_request_that_finds_no_place_waits_for_one_before_it_is_shed(
        small_door: LiveServer, supervisor: User, temporal_env: WorkflowEnvironment):
    """A burst is smoothed, not shed: a request arriving while every place is taken gets
    the first one that frees within the admission wait, in arrival order."""
    async with httpx.AsyncClient(base_url=small_door.base_url, timeout=60) as http:
        sop = await make_confirmed_sop(http, supervisor)
        workers = [User(uuid.uuid4(), "worker") for _ in range(LIMIT)]
        sessions = [await start(http, w, sop) for w in workers]
        outage = WriteOutage(small_door.database_url)
        await outage.__aenter__()
        try:
            admitted = await _fill_every_place(http, workers, sessions, temporal_env)
            waiting = asyncio.create_task(http.get(SESSIONS, headers=supervisor.h))
            await asyncio.sleep(WAIT / 3)
            assert not waiting.done()
        finally:
            await outage.__aexit__(None, None, None)  # the held checks finish, places free
        listed = await waiting
        assert listed.status_code == 200, listed.text
        assert [r.status_code for r in await asyncio.gather(*admitted)] == [200] * LIMIT


async def test_uploads_on_slow_links_do_not_turn_a_check_away(small_door: LiveServer,
                                                             supervisor: User):
    """Evidence uploads take their places from a pool of their own: more photos than there
    are places, each stalled halfway as on a slow link, and a check still goes straight in;
    then every upload finishes."""
    async with httpx.AsyncClient(base_url=small_door.base_url, timeout=60) as http:
        sop = await make_confirmed_sop(http, supervisor)
        worker = User(uuid.uuid4(), "worker")
        session = await start(http, worker, sop)
        link_back = asyncio.Event()

        async def slow(data: bytes) -> Any:
            yield data[:len(data) // 2]
            await link_back.wait()
            yield data[len(data) // 2:]

        uploads = [asyncio.create_task(http.post(
            f"{SESSIONS}/{session['id']}/evidence", content=slow(jpeg(200_000)),
            headers={**worker.h, "Content-Type": "image/jpeg"})) for _ in range(LIMIT + 1)]
        await asyncio.sleep(0.5)  # each inside, reading its body (they would hold every place)
        t0 = time.monotonic()
        r = await http.post(f"{SESSIONS}/{session['id']}/checks", headers=worker.h,
                            json={"step_id": session["current_step_id"], "result": "passed"})
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < WAIT  # let in at once, not after a wait for a place
        assert not any(u.done() for u in uploads)
        link_back.set()
        answered = await asyncio.gather(*uploads)
        assert [u.status_code for u in answered] == [201] * (LIMIT + 1), \
            [u.text for u in answered]


def test_a_body_over_the_limit_is_a_413_the_client_can_read(small_door: LiveServer,
                                                            supervisor: User):
    """A plain client that sends its whole body before it reads (urllib) gets the problem,
    not a reset connection; so does one that declares a length it never sends."""
    for size in (300_000, 5_000_000):
        req = urllib.request.Request(f"{small_door.base_url}/api/v1/sops",
                                     data=b"x" * size, method="POST",
                                     headers={**supervisor.h,
                                              "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=60)
        assert caught.value.code == 413
        assert caught.value.headers["content-type"] == "application/problem+json"
        assert json.loads(caught.value.read())["status"] == 413


def test_a_client_waiting_for_100_continue_gets_the_413_without_sending_its_body(
        small_door: LiveServer, supervisor: User):
    """As curl does for a large body: headers only, then it waits. The answer is the 413,
    at once; the body is never asked for."""
    host, port = small_door.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall((f"POST /api/v1/sops HTTP/1.1\r\nHost: {host}\r\n"
                      f"Authorization: {supervisor.h['Authorization']}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 5000000\r\n"
                      "Expect: 100-continue\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(65536)
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large", answer[:300]
    assert b"application/problem+json" in answer.split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    b"POST /api/v1/sops HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
], ids=["request-line", "header-without-colon", "nul-in-header", "chunk-size", "length"])
def test_a_request_that_is_not_http_is_a_problem_too(small_door: LiveServer,
                                                     request_bytes: bytes):
    """Refused by the HTTP parser before the app runs, and still an RFC 9457 problem."""
    host, port = small_door.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request_bytes)
        answer = b""
        while chunk := conn.recv(65536):  # the server closes the connection
            answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request", answer[:300]
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["title"] == "Bad Request"
    assert "not an HTTP/1.1 request this service can read" in problem["detail"]
    assert int(re.search(rb"content-length: (\d+)", head.lower()).group(1)) == len(body)


@pytest.mark.parametrize("sent,kept", [
    ("field-app:7f3a.b_c-9", True),
    ("x" * 128, True),
    ("x" * 129, False),
    ("", False),
    ("<script>alert(1)</script>", False),
    ("a b", False),
    ("caf\u00e9", False),
])
async def test_a_request_id_is_kept_only_when_the_contract_allows_it(
        http: httpx.AsyncClient, supervisor: User, confirmed_sop: dict[str, Any], sent: str,
        kept: bool):
    worker = User(uuid.uuid4(), "worker")
    headers = {**worker.h, "X-Request-ID": sent.encode()}
    r = await http.post(SESSIONS, headers=headers, json={"sop_id": confirmed_sop["id"]})
    assert r.status_code == 201, r.text
    used = r.headers["x-request-id"]
    if kept:
        assert used == sent
    else:
        assert used != sent and len(used) == 32 and used.isalnum()
    audit = await http.get("/api/v1/audit", headers=supervisor.h,
                           params={"session_id": r.json()["id"]})
    assert audit.status_code == 200, audit.text
    assert [e["request_id"] for e in audit.json()["items"]] == [used]


@pytest.mark.parametrize("path,role", [
    ("/healthz", None), ("/api/v1/sessions", "supervisor"), ("/api/v1/sops", "worker"),
    ("/openapi.json", None), ("/app/", None)])
async def test_head_is_answered_wherever_get_is(http: httpx.AsyncClient, path: str,
                                                role: str | None, supervisor: User,
                                                worker_user: User):
    headers = {"supervisor": supervisor.h, "worker": worker_user.h, None: {}}[role]
    got = await http.get(path, headers=headers)
    head = await http.head(path, headers=headers)
    assert got.status_code == 200 and head.status_code == 200, head.text
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers.get("content-length") == got.headers.get("content-length")


async def test_head_where_get_is_not_served_is_405_like_get(http: httpx.AsyncClient,
                                                            supervisor: User):
    r = await http.head("/api/v1/sessions/00000000-0000-0000-0000-000000000000/checks",
                        headers=supervisor.h)
    assert r.status_code == 405 and r.content == b""
    assert "POST" in r.headers["allow"]


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_a_jwt_date_that_is_a_string_is_401(http: httpx.AsyncClient, claim: str):
    now = int(time.time())
    claims: dict[str, Any] = {"sub": str(uuid.uuid4()), "role": "supervisor",
                              "exp": now + 3600, "iat": now - 10, "nbf": now - 10}
    claims[claim] = str(claims[claim]) if claim != "exp" else "9999999999"
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    r = await http.get("/api/v1/sops", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert f"'{claim}' must be a number" in r.json()["detail"]
