"""The four fault scenarios of "Operations and durability", and how their outcome is judged.

Simulated field devices (each a worker with its own token and session) walk an SOP through the
HTTP API the way a real field app does: every check carries a client-chosen `check_id`; on a
timeout, a connection error or a 503 the same check is resent later (bounded retries with
back-off) until a 200 comes back, and only a 200 makes it *acknowledged*. Meanwhile a fault is
injected. Afterwards the harness reads back what the service kept and compares, per session:

- the read model (the `work_sessions` / `session_checks` rows in the database),
- the workflow state (the workflow's `session` query),
- the audit log (`GET /api/v1/audit?session_id=…` with a supervisor token: entries with action
  `check_submitted` and outcome `accepted`, whose `detail.check_id` is the check id).

Figures: checks sent / acknowledged / persisted (read back from the database), lost (an
acknowledged check missing from any of the three), duplicated (a check id more than once in any
of them, or in a 200 answer), disagreements (the three differ in checks, their order, step or
result, or in the session's status and current step; a stored check no device sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from temporalio.client import WorkflowQueryFailedError

from faults import webhooks
from faults.stack import Stack, StackError, WriteOutage
from persistence.db import Database
from persistence.tables import audit_log, session_checks, work_sessions

SCENARIOS = {
    "worker_kill": "a",
    "temporal_restart": "b",
    "database_outage": "c",
    "resend": "d",
    "webhook": "e",
}
TITLES = {
    "worker_kill": "(a) SIGKILL the worker at random moments",
    "temporal_restart": "(b) restart the Temporal dev server mid-stream",
    "database_outage": "(c) database write outage mid-stream",
    "resend": "(d) same check resent up to 5 times, across worker kills",
    "webhook": "(e) webhooks to a receiver across worker kills and a Temporal restart",
}


@dataclass
class Config:
    devices: int
    duration: float          # seconds of check stream (the faults happen inside it)
    faults: int              # worker kills / Temporal restarts / database outages
    seed: int = 1
    sop_steps: int = 12
    fail_ratio: float = 0.2  # share of checks that are failed (the step stays)
    check_deadline: float = 150.0  # a device resends one check for at most this long
    max_attempts: int = 80
    http_timeout: float = 15.0     # above the API's own 10 s bound
    outage_min: float = 14.0       # (c) the write lock is held at least this long …
    outage_max: float = 40.0       # … and at most this long
    recover_within: float = 90.0   # (c) stuck sessions must be unstuck by then
    temporal_down: tuple[float, float] = (0.0, 3.0)  # (b) extra seconds the server stays down


QUICK = {
    "worker_kill": Config(devices=4, duration=16, faults=3),
    "temporal_restart": Config(devices=4, duration=16, faults=1),
    "database_outage": Config(devices=4, duration=10, faults=1),
    "resend": Config(devices=4, duration=16, faults=2),
    "webhook": Config(devices=4, duration=20, faults=2),
}
LONG = {
    "worker_kill": Config(devices=16, duration=200, faults=20),
    "temporal_restart": Config(devices=12, duration=100, faults=3, temporal_down=(2.0, 15.0)),
    "database_outage": Config(devices=12, duration=60, faults=3),
    "resend": Config(devices=10, duration=100, faults=8),
    "webhook": Config(devices=12, duration=100, faults=6, temporal_down=(2.0, 10.0)),
}


@dataclass
class CheckRecord:
    check_id: str
    device: int
    session_id: str
    step_id: str
    result: str              # what the service must decide: passed / failed
    first_sent: float
    acked_at: float | None = None
    requests: int = 0
    copies: int = 1
    copies_acked: int = 0


@dataclass
class Figures:
    scenario: str
    database: str
    devices: int
    faults: int = 0
    sessions: int = 0
    sent: int = 0
    requests: int = 0
    acknowledged: int = 0
    persisted: int = 0
    lost: int = 0
    duplicated: int = 0
    disagreements: int = 0
    gave_up: int = 0
    unexpected: int = 0
    answers_503: int = 0
    timeouts: int = 0
    conn_errors: int = 0
    across_fault: int = 0    # acknowledged checks whose send/ack window contains a fault
    max_ack_s: float = 0.0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, why: str) -> None:
        self.failures.append(why)


class World:
    """One scenario's stack, SOP, devices, ledger of checks and fault log."""

    def __init__(self, name: str, stack: Stack, cfg: Config,
                 say: Callable[[str], None]) -> None:
        self.name, self.stack, self.cfg, self.say = name, stack, cfg, say
        self.rng = random.Random(cfg.seed)
        self.fig = Figures(name, stack.database, cfg.devices)
        self.ledger: dict[str, CheckRecord] = {}
        self.events: list[tuple[float, float, str]] = []  # (start, end, what) of each fault
        self.stop = asyncio.Event()
        self.kill_happened = asyncio.Condition()
        self.sop: dict[str, Any] = {}
        self.devices: list[Device] = []
        self.supervisor = {"Authorization": f"Bearer {stack.token('supervisor')}"}
        self.samples: list[str] = []

    def note_unexpected(self, what: str) -> None:
        self.fig.unexpected += 1
        if len(self.samples) < 5:
            self.samples.append(what)

    async def wait_for_kill(self, kills_before: int, within: float) -> None:
        """Until the worker has been killed since `kills_before` (or `within` seconds)."""
        async with self.kill_happened:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.kill_happened.wait_for(
                    lambda: self.stack.worker_kills > kills_before), within)

    async def create_sop(self) -> None:
        steps = []
        for i in range(self.cfg.sop_steps):
            if i % 5 == 4:
                check = {"kind": "measurement", "prompt": "Residual voltage", "unit": "V",
                         "min": 0, "max": 0.5}
            else:
                check = {"kind": "confirm", "prompt": f"Step {i + 1} done"}
            steps.append({"title": f"Step {i + 1}", "instructions": f"Do step {i + 1}",
                          "check": check})
        tasks = [{"title": f"Task {t + 1}", "steps": steps[t * 4:(t + 1) * 4]}
                 for t in range((len(steps) + 3) // 4)]
        async with httpx.AsyncClient(base_url=self.stack.api_url, timeout=30) as http:
            r = await http.post("/api/v1/sops", headers=self.supervisor, json={
                "title": f"Fault test {self.name}", "description": "faults harness",
                "tasks": tasks})
            r.raise_for_status()
            r = await http.post(f"/api/v1/sops/{r.json()['id']}/confirm",
                                headers=self.supervisor)
            r.raise_for_status()
            self.sop = r.json()


class Device:
    """A simulated field device: one worker, its own token, one session at a time."""

    def __init__(self, world: World, index: int, copies: tuple[int, int] = (1, 1)) -> None:
        self.world, self.index = world, index
        self.worker_id = uuid.uuid4()
        self.headers = {"Authorization": f"Bearer {world.stack.token('worker', self.worker_id)}"}
        self.rng = random.Random(world.cfg.seed * 1000 + index)
        self.copies = copies  # (min, max) sends of each check, for scenario (d)
        self.session: dict[str, Any] | None = None
        self.sessions: list[str] = []
        self.http: httpx.AsyncClient | None = None
        self.broken: str | None = None

    # ---- transport: resend on timeout / connection error / 503 ------------------------
    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   record: CheckRecord | None = None) -> httpx.Response | None:
        """The request until an answer other than 503 comes back; None when the device
        gives up (bounded attempts and time)."""
        assert self.http is not None
        cfg, fig = self.world.cfg, self.world.fig
        deadline = time.monotonic() + cfg.check_deadline
        attempt = 0
        while True:
            attempt += 1
            if record is not None:
                record.requests += 1
                fig.requests += 1
            try:
                r = await self.http.request(method, path, json=body, headers=self.headers)
                if r.status_code != 503:
                    return r
                fig.answers_503 += 1
            except httpx.TimeoutException:
                fig.timeouts += 1
            except httpx.TransportError:
                fig.conn_errors += 1
            if attempt >= cfg.max_attempts or time.monotonic() > deadline:
                return None
            await asyncio.sleep(min(5.0, 0.25 * 2 ** min(attempt - 1, 5))
                                * self.rng.uniform(0.5, 1.0))

    # ---- the field app -----------------------------------------------------------------
    async def run(self) -> None:
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(base_url=self.world.stack.api_url, limits=limits,
                                     timeout=httpx.Timeout(self.world.cfg.http_timeout,
                                                           connect=5)) as self.http:
            while not self.world.stop.is_set() and self.broken is None:
                if self.session is None or self.session["status"] != "in_progress":
                    await self.start_session()
                else:
                    await self.check_current_step()

    async def start_session(self) -> None:
        r = await self.call("POST", "/api/v1/sessions", {"sop_id": self.world.sop["id"]})
        if r is None:
            self.broken = "could not start a session"
            return
        if r.status_code == 201:
            self.adopt(r.json())
            return
        body = _json(r)
        existing = body.get("existing_session_id")
        if r.status_code == 409 and "existing_session_id" in body:
            # An earlier attempt did start it (its answer was lost): carry on with it.
            path = f"/api/v1/sessions/{existing}" if existing else "/api/v1/sessions/current"
            got = await self.call("GET", path)
            if got is not None and got.status_code == 200:
                self.adopt(got.json())
                return
        self.world.note_unexpected(f"start session: {r.status_code} {r.text[:200]}")
        self.broken = f"start session answered {r.status_code}"

    def adopt(self, session: dict[str, Any]) -> None:
        self.session = session
        if session["id"] not in self.sessions:
            self.sessions.append(session["id"])

    async def check_current_step(self) -> None:
        assert self.session is not None
        step = self.session["current_step"]
        failed = self.rng.random() < self.world.cfg.fail_ratio
        body: dict[str, Any] = {"step_id": step["id"], "check_id": str(uuid.uuid4())}
        if step["check"]["kind"] == "measurement":
            body["value"] = 0.9 if failed else 0.1
        else:
            body["result"] = "failed" if failed else "passed"
        rec = CheckRecord(body["check_id"], self.index, self.session["id"], step["id"],
                          "failed" if failed else "passed", time.monotonic())
        self.world.ledger[rec.check_id] = rec
        self.world.fig.sent += 1
        lo, hi = self.copies
        n = self.rng.randint(lo, hi)
        if n == 1:
            answers = [await self.send_check(body, rec)]
        else:
            answers = await self.send_copies(body, rec, n)
        good = [a for a in answers if a is not None]
        if good:
            rec.acked_at = time.monotonic()
            self.world.fig.acknowledged += 1
            self.session = good[-1]
        elif self.broken is None:
            self.world.fig.gave_up += 1
            self.broken = f"gave up on check {rec.check_id}"

    async def send_copies(self, body: dict[str, Any], rec: CheckRecord,
                          n: int) -> list[dict[str, Any] | None]:
        """Scenario (d): the same check n times (n <= 5): a burst at once, the rest later,
        one of them possibly held back until the next worker kill."""
        rec.copies = n
        burst = self.rng.randint(1, n)
        hold = n > burst and self.rng.random() < 0.35
        kills_before = self.world.stack.worker_kills

        async def copy(i: int) -> dict[str, Any] | None:
            if i >= burst:
                await asyncio.sleep(self.rng.uniform(0.02, 1.5))
            if hold and i == n - 1:
                await self.world.wait_for_kill(kills_before, within=6.0)
            return await self.send_check(body, rec)

        return list(await asyncio.gather(*(copy(i) for i in range(n))))

    async def send_check(self, body: dict[str, Any], rec: CheckRecord
                         ) -> dict[str, Any] | None:
        r = await self.call("POST", f"/api/v1/sessions/{rec.session_id}/checks", body, rec)
        if r is None:
            return None
        if r.status_code != 200:
            self.world.note_unexpected(f"check {rec.check_id}: {r.status_code} {r.text[:300]}")
            self.broken = f"check answered {r.status_code}"
            return None
        view = r.json()
        seen = sum(1 for c in view["checks"] if c["id"] == rec.check_id)
        if view["id"] == rec.session_id and seen != 1:
            self.world.fig.duplicated += seen > 1
            self.world.note_unexpected(f"200 for check {rec.check_id} lists it {seen} times")
        rec.copies_acked += 1
        return view


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# ---- fault injectors ---------------------------------------------------------------------
def _when(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _moments(rng: random.Random, n: int, start: float, end: float, gap: float) -> list[float]:
    """n random moments in [start, end], at least `gap` apart (as far as room allows)."""
    gap = min(gap, (end - start) / max(n, 1))
    for _ in range(1000):
        ts = sorted(rng.uniform(start, end) for _ in range(n))
        if all(b - a >= gap for a, b in zip(ts, ts[1:], strict=False)):
            return ts
    return [start + i * (end - start) / max(n - 1, 1) for i in range(n)]


async def kill_workers(world: World, t0: float) -> None:
    cfg, stack = world.cfg, world.stack
    for at in _moments(world.rng, cfg.faults, 0.1 * cfg.duration, 0.85 * cfg.duration, 1.5):
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        when = time.monotonic()
        pid = stack.kill_worker()
        async with world.kill_happened:
            world.kill_happened.notify_all()
        if pid is None:
            world.fig.notes.append("a kill found no worker running")
            continue
        delay = world.rng.uniform(0.0, 1.5)
        await stack.restart_worker_after_kill(delay)
        world.events.append((when, when, f"SIGKILL worker {pid}"))
        world.say(f"SIGKILL worker pid {pid} at {when - t0:.1f} s; "
                  f"new worker {stack.worker.pid} after {delay:.1f} s")
    world.fig.faults = stack.worker_kills


async def restart_temporal(world: World, t0: float) -> None:
    cfg, stack = world.cfg, world.stack
    downs = []
    for i, at in enumerate(_moments(world.rng, cfg.faults, 0.25 * cfg.duration,
                                     0.7 * cfg.duration, 12.0)):
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        sig = signal.SIGTERM if i % 2 == 0 else signal.SIGKILL
        when = time.monotonic()
        down = await stack.restart_temporal(sig, world.rng.uniform(*cfg.temporal_down))
        downs.append(down)
        world.events.append((when, time.monotonic(), "Temporal restart"))
        world.say(f"Temporal dev server restarted ({signal.Signals(sig).name}) at "
                  f"{when - t0:.1f} s, down {down:.1f} s")
        await asyncio.sleep(3)
        if await stack.ensure_worker():
            world.fig.notes.append("the worker exited while Temporal was down; restarted it")
    world.fig.faults = stack.temporal_restarts
    world.fig.extra["temporal_down_s"] = round(max(downs, default=0.0), 1)


async def _ops_stuck(world: World) -> list[dict[str, Any]]:
    code, out, err = await world.stack.cli("ops", "stuck", "--json")
    if code != 0:
        world.fig.notes.append(f"ops stuck exited {code}: {err.strip()[-200:]}")
        return []
    return json.loads(out)


async def database_outages(world: World, t0: float) -> None:
    cfg, stack = world.cfg, world.stack
    ours = {str(d.worker_id) for d in world.devices}
    listed_total: set[str] = set()
    retried = not_stuck = 0
    recovered_s: list[float] = []
    for i in range(cfg.faults):
        # the first outage once every device is under way, the next ones after a calm spell
        await asyncio.sleep(max(0.0, t0 + 3.0 - time.monotonic()) if i == 0 else 5.0)
        outage = WriteOutage(stack.db_url)
        await outage.begin()
        began = time.monotonic()
        world.say(f"database write outage {i + 1} begins at {began - t0:.1f} s")
        listed: dict[str, dict[str, Any]] = {}
        try:
            while True:
                now = time.monotonic() - began
                if now > cfg.outage_max or (listed and now > cfg.outage_min):
                    break
                for s in await _ops_stuck(world):
                    if s["worker_id"] in ours:
                        listed[s["session_id"]] = s
                await asyncio.sleep(1.0)
        finally:
            await outage.end()
        ended = time.monotonic()
        world.events.append((began, ended, "database outage"))
        kinds = Counter(s["kind"] for s in listed.values())
        for s in list(listed.values())[:3]:
            world.say(f"   e.g. {s['session_id']}: {s['reason']}")
        world.say(f"outage ends after {ended - began:.1f} s; `worksession ops stuck` listed "
                  f"{len(listed)} of our sessions ({dict(kinds)})")
        if not listed:
            world.fig.fail(f"outage {i + 1}: `worksession ops stuck` never listed a session")
        listed_total |= set(listed)
        # Recovery, as an operator would go about it: `worksession ops retry` right away on
        # every listed session whose persist activity is backing off (next attempt seconds
        # away) and on every other one of the rest; the others go on by themselves.
        soon = datetime.now(UTC) + timedelta(seconds=4)
        to_retry = [sid for n, (sid, s) in enumerate(sorted(listed.items())) if n % 2 == 0
                    or (s.get("next_attempt_at") and _when(s["next_attempt_at"]) > soon)]
        for sid, (code, _out, err) in zip(to_retry, await asyncio.gather(
                *(stack.cli("ops", "retry", sid) for sid in to_retry)), strict=True):
            if code == 0:
                retried += 1
            elif code == 1 and "not stuck" in err:
                not_stuck += 1  # it had gone on by itself in the meantime
            else:
                world.fig.fail(f"ops retry {sid} exited {code}: {err.strip()[-200:]}")
        while True:
            still = [s for s in await _ops_stuck(world) if s["worker_id"] in ours]
            if not still:
                recovered_s.append(time.monotonic() - ended)
                world.say(f"no session stuck {recovered_s[-1]:.1f} s after the outage")
                break
            if time.monotonic() - ended > cfg.recover_within:
                world.fig.fail(f"{len(still)} session(s) still stuck {cfg.recover_within:.0f}"
                               f" s after the outage: {[s['session_id'] for s in still]}")
                break
            await asyncio.sleep(1.0)
    world.fig.faults = cfg.faults
    world.fig.extra.update(stuck_listed=len(listed_total), ops_retried=retried,
                           retry_not_stuck=not_stuck,
                           recovered_s=round(max(recovered_s, default=0.0), 1))


# ---- one scenario ------------------------------------------------------------------------
INJECTORS: dict[str, Callable[[World, float], Awaitable[None]]] = {
    "worker_kill": kill_workers,
    "temporal_restart": restart_temporal,
    "database_outage": database_outages,
    "resend": kill_workers,
    "webhook": webhooks.inject,
}


async def run_scenario(name: str, cfg: Config, database: str = "sqlite",
                       say: Callable[[str], None] | None = None,
                       keep: bool = False) -> Figures:
    say = say or (lambda _m: None)
    began = time.monotonic()

    def tell(msg: str) -> None:
        say(f"[{SCENARIOS[name]}:{name} {time.monotonic() - began:6.1f}s] {msg}")

    fig = Figures(name, database, cfg.devices)
    try:
        stack = Stack(database, say=tell, keep=keep, label=name)
        if name == "webhook":
            stack.extra_env.update(webhooks.ENV)
        async with stack, contextlib.AsyncExitStack() as scope:
            world = World(name, stack, cfg, tell)
            fig = world.fig
            await world.create_sop()
            receiver = None
            if name == "webhook":
                receiver = await scope.enter_async_context(webhooks.running_receiver())
                await webhooks.subscribe(world, receiver)
            copies = (2, 5) if name == "resend" else (1, 1)
            world.devices = [Device(world, i, copies) for i in range(cfg.devices)]
            await stream(world)
            await verify(world)
            if receiver is not None:
                await webhooks.verify(world, receiver)
            judge(fig, name)
            if not fig.ok:
                stack.keep = True  # the data and logs are evidence
    except (StackError, OSError, httpx.HTTPError) as e:
        fig.fail(f"the stack failed: {type(e).__name__}: {e}")
    except Exception as e:  # a harness bug or a surprise: report it, never hide it
        fig.fail(f"the scenario crashed: {type(e).__name__}: {e}")
        say("".join(traceback.format_exception(e)))
    fig.seconds = round(time.monotonic() - began, 1)
    judge(fig, name)
    return fig


async def stream(world: World) -> None:
    cfg, stack = world.cfg, world.stack
    t0 = time.monotonic()
    devices = [asyncio.create_task(d.run()) for d in world.devices]
    injector = asyncio.create_task(INJECTORS[world.name](world, t0))
    try:
        await asyncio.sleep(cfg.duration)
        await injector
    finally:
        world.stop.set()
        if not injector.done():
            injector.cancel()
        results = await asyncio.gather(*devices, return_exceptions=True)
    for d, res in zip(world.devices, results, strict=True):
        if isinstance(res, BaseException):
            world.fig.fail(f"device {d.index} crashed: {res!r}")
        elif d.broken:
            world.fig.fail(f"device {d.index}: {d.broken}")
    world.say(f"stream over after {time.monotonic() - t0:.1f} s: {world.fig.sent} checks sent, "
              f"{world.fig.acknowledged} acknowledged")
    await stack.ensure_worker()
    await stack.wait_worker_polling()


async def verify(world: World) -> None:
    """Read back what the service kept and compare it with what the devices were told."""
    stack, fig, ledger = world.stack, world.fig, world.ledger
    worker_ids = [d.worker_id for d in world.devices]
    db = Database(stack.db_url)
    try:
        async with db.read() as conn:
            srows = (await conn.execute(select(work_sessions).where(
                work_sessions.c.worker_id.in_(worker_ids)))).mappings().all()
            crows = (await conn.execute(select(session_checks).where(
                session_checks.c.session_id.in_([r["id"] for r in srows]))
                .order_by(session_checks.c.session_id, session_checks.c.seq))
            ).mappings().all()
            arows = (await conn.execute(select(
                audit_log.c.session_id, audit_log.c.action, audit_log.c.outcome,
                audit_log.c.dedup_key).where(
                audit_log.c.session_id.in_([r["id"] for r in srows])))).mappings().all()
    finally:
        await db.dispose()
    _judge_changes(fig, srows, arows)
    db_checks: dict[str, list[tuple[str, str, str]]] = {str(r["id"]): [] for r in srows}
    for c in crows:
        db_checks[str(c["session_id"])].append((str(c["id"]), str(c["step_id"]), c["result"]))
    fig.sessions = len(srows)
    known = {s for d in world.devices for s in d.sessions}
    if known - set(db_checks):
        fig.disagreements += len(known - set(db_checks))
        fig.notes.append(f"sessions the devices used but the database lacks: "
                         f"{sorted(known - set(db_checks))[:3]}")

    latest = {d.session["id"] for d in world.devices if d.session}
    gate = asyncio.Semaphore(6)

    async def workflow_view(row: Any) -> dict[str, Any] | None:
        run_id = None if str(row["id"]) in latest and row["status"] in (
            "in_progress", "paused") else row["run_id"]
        handle = stack.client.get_workflow_handle(row["workflow_id"], run_id=run_id)
        async with gate:
            for attempt in range(4):
                try:
                    return await asyncio.wait_for(handle.query("session"), 20)
                except WorkflowQueryFailedError as e:  # the worker could not answer: final
                    err: Exception = e
                    break
                except Exception as e:  # noqa: BLE001 - a transient RPC failure: again
                    err = e
                    await asyncio.sleep(1 + attempt)
        fig.notes.append(f"query of session {row['id']} failed: {err!r}"[:400])
        with contextlib.suppress(Exception):  # keep the history for whoever investigates
            history = await handle.fetch_history()
            path = stack.logs / f"history-{row['id']}.json"
            path.write_text(history.to_json())
            fig.notes.append(f"its history: {path}")
        return None

    sup_http = httpx.AsyncClient(base_url=stack.api_url, timeout=30)

    async def audit_ids(sid: str) -> list[str]:
        out: list[str] = []
        offset = 0
        async with gate:
            while True:
                for _ in range(10):
                    r = await sup_http.get("/api/v1/audit", headers=world.supervisor,
                                           params={"session_id": sid, "limit": 100,
                                                   "offset": offset})
                    if r.status_code != 503:
                        break
                    await asyncio.sleep(1)
                r.raise_for_status()
                page = r.json()
                out += [e["detail"]["check_id"] for e in page["items"]
                        if e["action"] == "check_submitted" and e["outcome"] == "accepted"]
                offset += len(page["items"])
                if not page["items"] or offset >= page["total"]:
                    return out

    async with sup_http:
        views = await asyncio.gather(*(workflow_view(r) for r in srows))
        audits = await asyncio.gather(*(audit_ids(str(r["id"])) for r in srows))

    all_db: Counter[str] = Counter()
    all_wf: Counter[str] = Counter()
    all_audit: Counter[str] = Counter()
    bad: list[str] = []
    unreadable: set[str] = set()  # checks of sessions whose workflow state was unreadable
    for row, view, aud in zip(srows, views, audits, strict=True):
        sid = str(row["id"])
        dbl = db_checks[sid]
        all_db.update(c[0] for c in dbl)
        all_audit.update(aud)
        if view is None:
            bad.append(f"session {sid}: its workflow state cannot be read (query failed)")
            unreadable.update(c[0] for c in dbl)
            continue
        wfl = [(c["id"], c["step_id"], c["result"]) for c in view["checks"]]
        all_wf.update(c[0] for c in wfl)
        if view["id"] != sid:
            bad.append(f"session {sid}: the workflow shows session {view['id']}")
        if wfl != dbl:
            bad.append(f"session {sid}: workflow checks {len(wfl)} != database {len(dbl)} "
                       f"(or order/content differ)")
        if sorted(aud) != sorted(c[0] for c in dbl):
            bad.append(f"session {sid}: audit check ids {len(aud)} != database {len(dbl)}")
        db_step = str(row["current_step_id"]) if row["current_step_id"] else None
        if (view["status"], view["current_step_id"]) != (row["status"], db_step):
            bad.append(f"session {sid}: workflow {view['status']}/{view['current_step_id']} "
                       f"!= database {row['status']}/{db_step}")
        for cid, step_id, result in dbl:
            rec = ledger.get(cid)
            if rec is None:
                bad.append(f"session {sid}: stored check {cid} that no device sent")
            elif (rec.session_id, rec.step_id, rec.result) != (sid, step_id, result):
                bad.append(f"check {cid}: stored as {sid}/{step_id}/{result}, sent as "
                           f"{rec.session_id}/{rec.step_id}/{rec.result}")

    acked = [r for r in ledger.values() if r.acked_at is not None]
    lost = [r.check_id for r in acked
            if not (all_db[r.check_id] and all_audit[r.check_id]
                    and (all_wf[r.check_id] or r.check_id in unreadable))]
    dups = {c for src in (all_db, all_wf, all_audit) for c, n in src.items() if n > 1}
    fig.persisted = sum(1 for c in ledger if all_db[c])
    fig.lost = len(lost)
    fig.duplicated += len(dups)
    fig.disagreements += len(bad)
    fig.extra["unacked_persisted"] = sum(1 for r in ledger.values()
                                         if r.acked_at is None and all_db[r.check_id])
    if lost:
        fig.notes.append(f"lost (acknowledged, missing): {lost[:5]} — database "
                         f"{sum(1 for c in lost if not all_db[c])}, workflow "
                         f"{sum(1 for c in lost if not all_wf[c])}, audit "
                         f"{sum(1 for c in lost if not all_audit[c])}")
    if dups:
        fig.notes.append(f"duplicated: {sorted(dups)[:5]}")
    fig.notes += bad[:8]
    fig.notes += world.samples
    # Timing figures
    fig.max_ack_s = round(max((r.acked_at - r.first_sent for r in acked), default=0.0), 1)
    fig.across_fault = sum(1 for r in acked if any(
        r.first_sent <= end and start <= r.acked_at for start, end, _ in world.events))
    if world.name == "resend":
        fig.extra["copies"] = sum(r.copies for r in ledger.values())
        fig.extra["resent_checks"] = sum(1 for r in ledger.values() if r.copies > 1)
        short = [r.check_id for r in acked if r.copies_acked != r.copies]
        if short:
            fig.notes.append(f"{len(short)} check(s) with a copy not answered 200")
            fig.extra["copies_not_200"] = len(short)
    code, out, err = await stack.cli("audit", "verify")
    fig.extra["audit_chain"] = "intact" if code == 0 else "BROKEN"
    if code != 0:
        fig.fail(f"worksession audit verify: {(out + err).strip()[-300:]}")


def _judge_changes(fig: Figures, srows: list[Any], arows: list[Any]) -> None:
    """Every accepted change has exactly one audit entry: each change's entries carry its
    version in their dedup key; no key twice, one start per session, and the stored session
    is the newest change its chain records."""
    keys: dict[str, list[str]] = {str(r["id"]): [] for r in srows}
    starts: Counter[str] = Counter()
    for a in arows:
        sid = str(a["session_id"])
        if a["outcome"] == "accepted" and a["dedup_key"]:
            keys[sid].append(a["dedup_key"])
            starts[sid] += a["action"] == "session_start"
    bad = []
    for row in srows:
        sid, ks = str(row["id"]), keys[str(row["id"])]
        versions = {int(k.split("@")[1].split("#")[0]) for k in ks}
        if len(ks) != len(set(ks)):
            bad.append(f"session {sid}: an accepted change has two audit entries")
        if starts[sid] != 1:
            bad.append(f"session {sid}: {starts[sid]} accepted start entries")
        if not versions or max(versions) != row["version"]:
            bad.append(f"session {sid}: stored version {row['version']}, its chain's newest "
                       f"change {max(versions, default=None)}")
    fig.disagreements += len(bad)
    fig.notes += bad[:5]
    fig.extra["accepted_changes"] = sum(len({k.split("#")[0] for k in ks})
                                        for ks in keys.values())


def judge(fig: Figures, name: str) -> None:
    if fig.sent == 0 or fig.acknowledged == 0:
        fig.fail("no check was acknowledged")
    if fig.lost:
        fig.fail(f"{fig.lost} acknowledged check(s) lost")
    if fig.duplicated:
        fig.fail(f"{fig.duplicated} check(s) duplicated")
    if fig.disagreements:
        fig.fail(f"{fig.disagreements} disagreement(s) between workflow, database and audit")
    if fig.gave_up:
        fig.fail(f"{fig.gave_up} check(s) never acknowledged within the retry bound")
    if fig.unexpected:
        fig.fail(f"{fig.unexpected} unexpected answer(s)")
    if fig.faults == 0:
        fig.fail("no fault was injected")
    if name in ("worker_kill", "resend", "temporal_restart", "webhook") and fig.sent and not \
            fig.across_fault:
        fig.fail("no acknowledged check was in flight across a fault")
    if name == "resend" and not fig.extra.get("resent_checks"):
        fig.fail("no check was resent")
    # de-duplicate failure lines (a device failure may repeat a figure's reason)
    fig.failures = list(dict.fromkeys(fig.failures))
