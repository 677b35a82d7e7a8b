"""Nonconformances and webhooks under measurement (issue #28), on the fault tests' stack
(faults/stack.py: a Temporal dev server, `worksession api` and `worksession worker` as real
processes; SQLite, or PostgreSQL with --database postgresql):

(a) a failed check on a `nonconformance` step (the check, the NC and its workflow) against a
    failed check on a `retry` step, alternated in one run, each the first failed check of a
    new session: p50/p99 of the HTTP answer;
(b) webhook delivery latency: from the API's 200 for a failed check (the commit that
    recorded `check.failed`) to its receipt by a real receiver (aiohttp on 127.0.0.1);
(c) a backlog after a receiver outage: the receiver down, N events recorded in the outbox by
    the service's own outbox code (persistence/webhooks.py `WebhookRepository.record`, which
    every change records its events with) in S session streams, their streams started as a commit
    starts them (orchestration/webhooks.py `WebhookDeliveries`), so they try, fail and back
    off; the receiver back up: the drain rate (distinct events received per second) and the
    Temporal server's work per delivered event (history events of the delivery workflows,
    read through the Temporal client, divided by the events delivered).

`python -m benchmarks.nonconformance [--samples 100] [--latency 100] [--backlog 10000]
[--streams 100] [--database postgresql]`; the figures go to benchmarks/results/."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

import faults.webhooks
from benchmarks.load import pct
from faults.stack import Stack
from orchestration.webhooks import WebhookDeliveries
from persistence.db import Database
from persistence.webhooks import WebhookRepository

RESULTS = Path(__file__).resolve().parent / "results"
HOOKS = "/api/v1/webhooks"


class Receiver(faults.webhooks.Receiver):
    """The fault run's receiver (127.0.0.1, answers 204), noting when each `webhook-id`
    first came."""

    def __init__(self) -> None:
        super().__init__()
        self.first: dict[str, float] = {}   # webhook-id -> monotonic time of first receipt
        self.by_check: dict[str, float] = {}  # check id of a check.failed -> receipt time
        self.requests = 0
        self.arrived = asyncio.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.monotonic()
        self.requests += 1
        wid = request.headers["webhook-id"]
        if wid not in self.first:
            self.first[wid] = now
            event = json.loads(body)
            cid = (event.get("data") or {}).get("id")
            if event["type"] == "check.failed" and cid:
                self.by_check[str(cid)] = now
        self.arrived.set()
        return web.Response(status=204)


def _ms(xs: list[float]) -> dict[str, Any]:
    return {"n": len(xs), "p50_ms": _r(pct(xs, 50)), "p99_ms": _r(pct(xs, 99)),
            "max_ms": _r(max(xs, default=None))}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


async def _sop(http: httpx.AsyncClient, sup: dict[str, str], title: str,
               on_fail: str) -> dict[str, Any]:
    steps = [{"title": f"Step {i + 1}", "check": {"kind": "confirm", "prompt": "Done?",
                                                 "on_fail": on_fail}} for i in range(2)]
    r = await http.post("/api/v1/sops", headers=sup, json={
        "title": title, "tasks": [{"title": "A", "steps": steps}]})
    r.raise_for_status()
    r = await http.post(f"/api/v1/sops/{r.json()['id']}/confirm", headers=sup)
    r.raise_for_status()
    return r.json()


async def _failed_check(stack: Stack, http: httpx.AsyncClient, sop: dict[str, Any]
                        ) -> tuple[float, float, str]:
    """A new worker starts a session and fails its first step's check: (seconds the check
    took, monotonic time of its 200, check id)."""
    worker = {"Authorization": f"Bearer {stack.token('worker')}"}
    r = await http.post("/api/v1/sessions", headers=worker, json={"sop_id": sop["id"]})
    r.raise_for_status()
    session = r.json()
    cid = str(uuid.uuid4())
    t0 = time.monotonic()
    r = await http.post(f"/api/v1/sessions/{session['id']}/checks", headers=worker, json={
        "step_id": session["current_step"]["id"], "check_id": cid, "result": "failed"})
    t1 = time.monotonic()
    r.raise_for_status()
    return t1 - t0, t1, cid


async def part_a(stack: Stack, http: httpx.AsyncClient, sup: dict[str, str],
                 samples: int) -> dict[str, Any]:
    nc_sop = await _sop(http, sup, "bench nonconformance", "nonconformance")
    retry_sop = await _sop(http, sup, "bench retry", "retry")
    for sop in (nc_sop, retry_sop):  # warm-up, not counted
        await _failed_check(stack, http, sop)
    times: dict[str, list[float]] = {"nonconformance": [], "retry": []}
    for i in range(samples * 2):
        kind = "nonconformance" if i % 2 == 0 else "retry"
        took, _, _ = await _failed_check(stack, http, nc_sop if kind == "nonconformance"
                                         else retry_sop)
        times[kind].append(took)
    r = await http.get("/api/v1/nonconformances", headers=sup, params={"limit": 1})
    r.raise_for_status()
    out = {k: _ms(v) for k, v in times.items()}
    out["ncs_opened"] = r.json()["total"]
    p_nc, p_r = pct(times["nonconformance"], 50), pct(times["retry"], 50)
    out["p50_ratio"] = round(p_nc / p_r, 2) if p_nc and p_r else None
    return out


async def part_b(stack: Stack, http: httpx.AsyncClient, admin: dict[str, str],
                 sup: dict[str, str], samples: int) -> dict[str, Any]:
    receiver = Receiver()
    await receiver.up()
    try:
        r = await http.post(HOOKS, headers=admin, json={
            "url": receiver.url, "events": ["check.failed"], "description": "bench (b)"})
        r.raise_for_status()
        hook = r.json()
        sop = await _sop(http, sup, "bench latency", "retry")
        await _failed_check(stack, http, sop)  # warm-up (the first stream start)
        lat: list[float] = []
        missing = 0
        for _ in range(samples):
            _, acked, cid = await _failed_check(stack, http, sop)
            deadline = time.monotonic() + 30
            while cid not in receiver.by_check and time.monotonic() < deadline:
                receiver.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(receiver.arrived.wait(), 1)
            if cid in receiver.by_check:
                lat.append(receiver.by_check[cid] - acked)
            else:
                missing += 1
        (await http.delete(f"{HOOKS}/{hook['id']}", headers=admin)).raise_for_status()
        return {**_ms(lat), "missing": missing}
    finally:
        await receiver.down()


async def part_c(stack: Stack, http: httpx.AsyncClient, admin: dict[str, str],
                 events: int, streams: int, outage_s: float) -> dict[str, Any]:
    receiver = Receiver()  # not up: its port refuses connections
    r = await http.post(HOOKS, headers=admin, json={
        "url": receiver.url, "events": ["check.failed"], "description": "bench (c)"})
    r.raise_for_status()
    sub_id = uuid.UUID(r.json()["id"])
    sessions = [uuid.uuid4() for _ in range(streams)]
    db = Database(stack.db_url)
    t_rec = time.monotonic()
    ids: set[str] = set()
    started: set[tuple[uuid.UUID, str]] = set()
    try:
        per_tx = 500
        for base in range(0, events, per_tx):
            async with db.write() as conn:
                outbox = WebhookRepository(conn, None)
                for i in range(base, min(base + per_tx, events)):
                    sid = sessions[i % streams]
                    at = datetime.now(UTC)
                    data = {"id": str(uuid.uuid4()), "step_id": str(uuid.uuid4()),
                            "result": "failed", "value": None, "note": None,
                            "submitted_at": at.isoformat(), "session_id": str(sid)}
                    eid = await outbox.record("check.failed", data, sid, at=at,
                                              version=i // streams, index=0)
                    assert eid is not None
                    ids.add(eid)
                started |= outbox.streams
    finally:
        await db.dispose()
    record_s = time.monotonic() - t_rec
    assert stack.client is not None
    deliveries = WebhookDeliveries(stack.client, stack.task_queue, timeout=60,
                                   retry_first=timedelta(seconds=1),
                                   retry_most=timedelta(seconds=2))
    await deliveries.start(started)  # as the commit does: they try and fail (refused)
    await asyncio.sleep(outage_s)
    await receiver.up()
    t_up = time.monotonic()
    deadline = t_up + 600
    while len(ids - receiver.first.keys()) and time.monotonic() < deadline:
        receiver.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver.arrived.wait(), 1)
    got = ids & receiver.first.keys()
    last = max((receiver.first[i] for i in got), default=t_up)
    first = min((receiver.first[i] for i in got), default=t_up)
    drain_s = last - t_up
    # The Temporal server's work: every WebhookDelivery run's history, read back.
    wf_events = runs = 0
    async for wf in stack.client.list_workflows("WorkflowType = 'WebhookDelivery'"):
        if not wf.id.startswith(f"webhook-{sub_id}-"):
            continue
        runs += 1
        history = await stack.client.get_workflow_handle(wf.id, run_id=wf.run_id
                                                         ).fetch_history()
        wf_events += len(history.events)
    await receiver.down()
    return {"events": events, "streams": streams, "recorded_in_s": round(record_s, 1),
            "outage_s": outage_s, "received": len(got), "lost": len(ids) - len(got),
            "requests": receiver.requests, "duplicates": receiver.requests - len(got),
            "first_after_up_s": round(first - t_up, 2), "drain_s": round(drain_s, 2),
            "drain_per_s": round(len(got) / drain_s, 1) if drain_s > 0 else None,
            "drain_from_first_per_s": round(len(got) / (last - first), 1)
            if last > first else None,
            "delivery_runs": runs, "history_events": wf_events,
            "history_events_per_delivery": round(wf_events / max(len(got), 1), 4)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    say = print
    stack = Stack(args.database, say=say, label="bench-nc")
    stack.extra_env.update({
        "WORKSESSION_WEBHOOK_ALLOW_INSECURE": "true",
        # a stream whose receiver was down tries again within 2 s (default: up to 1 h),
        # so that (c) measures the drain, not the backoff's last wait
        "WORKSESSION_WEBHOOK_RETRY_FIRST": "PT1S", "WORKSESSION_WEBHOOK_RETRY_MOST": "PT2S",
    })
    result: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"),
                              "database": args.database, "machine": platform.machine(),
                              "args": vars(args)}
    async with stack:
        sup = {"Authorization": f"Bearer {stack.token('supervisor')}"}
        admin = {"Authorization": f"Bearer {stack.token('admin')}"}
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
            t = time.monotonic()
            result["a_failed_check"] = await part_a(stack, http, sup, args.samples)
            say(f"(a) in {time.monotonic() - t:.0f} s: {result['a_failed_check']}")
            t = time.monotonic()
            result["b_webhook_latency"] = await part_b(stack, http, admin, sup, args.latency)
            say(f"(b) in {time.monotonic() - t:.0f} s: {result['b_webhook_latency']}")
            t = time.monotonic()
            result["c_backlog"] = await part_c(stack, http, admin, args.backlog, args.streams,
                                               args.outage)
            say(f"(c) in {time.monotonic() - t:.0f} s: {result['c_backlog']}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.nonconformance",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--samples", type=int, default=100, help="(a) failed checks of each kind")
    ap.add_argument("--latency", type=int, default=100, help="(b) deliveries timed")
    ap.add_argument("--backlog", type=int, default=10_000, help="(c) events in the backlog")
    ap.add_argument("--streams", type=int, default=100, help="(c) sessions they belong to")
    ap.add_argument("--outage", type=float, default=10.0,
                    help="(c) seconds the receiver stays down after the streams started")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    out = args.out or RESULTS / (f"nonconformance-{datetime.now(UTC):%Y-%m-%d-%H%M}-"
                                 f"{args.database}.json")
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    a, b, c = result["a_failed_check"], result["b_webhook_latency"], result["c_backlog"]
    print(f"\n{args.database}: failed check, nonconformance step p50/p99 "
          f"{a['nonconformance']['p50_ms']}/{a['nonconformance']['p99_ms']} ms against retry "
          f"step {a['retry']['p50_ms']}/{a['retry']['p99_ms']} ms (x{a['p50_ratio']} at p50)")
    print(f"webhook commit -> receipt p50/p99 {b['p50_ms']}/{b['p99_ms']} ms "
          f"({b['n']} deliveries, {b['missing']} missing)")
    print(f"backlog of {c['events']} events in {c['streams']} streams: drained in "
          f"{c['drain_s']} s after the receiver came back = {c['drain_per_s']} events/s; "
          f"{c['lost']} lost, {c['duplicates']} duplicate requests; Temporal: "
          f"{c['history_events']} history events in {c['delivery_runs']} runs = "
          f"{c['history_events_per_delivery']} per delivered event")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
