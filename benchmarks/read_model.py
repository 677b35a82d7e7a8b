"""Read-model benchmark: the session list's filters at 100,000 sessions and an SOP's
statistics over 20,000 of them, through HTTP on the `worksession dev` stack.

    .venv/bin/python -m benchmarks.read_model [--database postgresql] [--sessions N]

The sessions are inserted straight into the database (the write path is not under test
here): 40 SOPs (20 families of two versions), 2,000 workers of whom 1,000 have a session
open, started over 90 days; 1 % need attention, half of the completed ones are approved.
One 10-step SOP has 20,000 of them, each with its step times. Every request is sent 60
times, one at a time; the floor is `GET /healthz` on the same API in the same run (an HTTP
round trip with no database work)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.load import RESULTS, Clients, DevStack, bearer, benchmark_sop, pct
from persistence.db import Database
from persistence.tables import session_steps, work_sessions
from worksession.tokens import load_or_create_dev_secret

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BIG_SOP_SESSIONS = 20_000
SAMPLES = 60


async def _seed(url: str, sops: list[dict[str, Any]], big: dict[str, Any], total: int,
                rng: random.Random) -> dict[str, Any]:
    now = datetime.now(UTC)
    workers = [uuid.uuid4() for _ in range(2000)]
    open_workers = set(workers[:1000])
    big_steps = [s["id"] for t in big["tasks"] for s in t["steps"]]
    sessions, steps = [], []
    for i in range(total):
        sop = big if i < BIG_SOP_SESSIONS else sops[i % len(sops)]
        worker = workers[i % len(workers)]
        started = now - timedelta(seconds=rng.uniform(0, 90 * 86400))
        if worker in open_workers:
            open_workers.discard(worker)
            status = rng.choice(["in_progress", "paused"])
        else:
            status = "completed" if rng.random() < 0.85 else "cancelled"
        sid = uuid.uuid4()
        reached = len(big_steps) if status == "completed" else rng.randint(1, len(big_steps))
        at, active = started, 0.0
        if sop is big:
            for k in range(reached):
                seconds = rng.lognormvariate(4, 0.6)
                fails = 0 if rng.random() < 0.8 else rng.randint(1, 3)
                done = k < reached - 1 or status == "completed"
                steps.append({
                    "session_id": sid, "step_id": uuid.UUID(big_steps[k]), "started_at": at,
                    "sop_id": uuid.UUID(big["id"]), "session_started_at": started,
                    "passed_at": at + timedelta(seconds=seconds) if done else None,
                    "attempts": fails + done, "failed_checks": fails,
                    "first_passed": (fails == 0 and done) if fails + done else None,
                    "active_seconds": seconds, "since": None if done else at,
                    "paused_mark": 0.0, "version": k + 1})
                at += timedelta(seconds=seconds)
                active += seconds
        closed = status in ("completed", "cancelled")
        sessions.append({
            "id": sid, "worker_id": worker, "sop_id": uuid.UUID(sop["id"]),
            "sop_title": sop["title"], "sop_version": sop["version"], "status": status,
            "current_step_id": None, "started_at": started,
            "paused_at": now if status == "paused" else None, "paused_seconds": 0.0,
            "completed_at": at if status == "completed" else None,
            "cancelled_at": at if status == "cancelled" else None,
            "duration_seconds": (at - started).total_seconds() if closed else None,
            "needs_attention": rng.random() < 0.01,
            "locked": status == "completed" and rng.random() < 0.5,
            "workflow_id": f"work-session-{worker}", "run_id": None if closed else "bench",
            "version": reached + 1, "updated_at": at, "audit_seq": 0, "audit_hash": "0" * 64})
    db = Database(url)
    try:
        for table, rows in ((work_sessions, sessions), (session_steps, steps)):
            for k in range(0, len(rows), 5000):
                async with db.write() as conn:
                    await conn.execute(table.insert(), rows[k:k + 5000])
        # the planner's statistics and (PostgreSQL) the visibility map, as a live database
        # has them: the API's own refresh on SQLite (see api.app), autovacuum on PostgreSQL
        if db.is_sqlite:
            await db.refresh_planner_statistics()
        else:
            import asyncpg

            conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            await conn.execute("VACUUM ANALYZE")
            await conn.close()
    finally:
        await db.dispose()
    some = sessions[BIG_SOP_SESSIONS + 7]
    return {"worker": some["worker_id"], "sop": str(some["sop_id"]), "steps": len(steps)}


async def _time(http: Clients, url: str, headers: dict[str, str]) -> dict[str, Any]:
    xs = []
    body = None
    for _ in range(SAMPLES):
        t = time.perf_counter()
        r = await http.get(url, headers=headers)
        xs.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
        body = r.json()
    out = {"p50_ms": round(pct(xs, 50) or 0, 2), "p99_ms": round(pct(xs, 99) or 0, 2)}
    if isinstance(body, dict) and "total" in body:
        out["total"] = body["total"]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="ws-read-model-"))
    pg_name = None
    if args.database == "postgresql":
        import asyncpg

        pg_name = f"ws_read_model_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'CREATE DATABASE "{pg_name}"')
        await admin.close()
        os.environ["WORKSESSION_DATABASE_URL"] = \
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}"
    result: dict[str, Any] = {"database": args.database, "sessions": args.sessions,
                              "samples": SAMPLES, "at": datetime.now(UTC).isoformat()}
    try:
        with DevStack(tmp) as stack:
            url = os.environ.get("WORKSESSION_DATABASE_URL") or \
                f"sqlite+aiosqlite:///{stack.data_dir / 'worksession.db'}"
            secret = load_or_create_dev_secret(stack.data_dir)
            sup = bearer(secret, "supervisor")
            async with Clients(stack.api) as http:
                big = await benchmark_sop(http, sup, "Statistics SOP", 10)
                sops = [await benchmark_sop(http, sup, f"SOP {i}", 6) for i in range(39)]
                t = time.perf_counter()
                seeded = await _seed(url, sops, big, args.sessions, rng)
                result["seed_seconds"] = round(time.perf_counter() - t, 1)
                print(f"seeded {args.sessions} sessions and {seeded['steps']} step times in "
                      f"{result['seed_seconds']} s", flush=True)
                family = sops[3]["family_id"]
                week = (datetime.now(UTC) - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
                day = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%d")
                day_end = (datetime.now(UTC) - timedelta(days=29)).strftime("%Y-%m-%d")
                s = "/api/v1/sessions?limit=20"
                wh = bearer(secret, "worker", seeded["worker"])
                requests = {
                    "floor: GET /healthz": ("/healthz", sup),
                    "no filter": (s, sup),
                    "no filter, page 100": (f"{s}&offset=2000", sup),
                    "status=in_progress": (f"{s}&status=in_progress", sup),
                    "sop_id": (f"{s}&sop_id={seeded['sop']}", sup),
                    "sop_id (the 20,000-session SOP)": (f"{s}&sop_id={big['id']}", sup),
                    "sop_family_id": (f"{s}&sop_family_id={family}", sup),
                    "worker_id": (f"{s}&worker_id={seeded['worker']}", sup),
                    "needs_attention=true": (f"{s}&needs_attention=true", sup),
                    "needs_attention=false": (f"{s}&needs_attention=false", sup),
                    "locked=true": (f"{s}&locked=true", sup),
                    "locked=false": (f"{s}&locked=false", sup),
                    "started_after (last 7 days)": (f"{s}&started_after={week}", sup),
                    "started window (one day)":
                        (f"{s}&started_after={day}&started_before={day_end}", sup),
                    "sop_id + needs_attention=true":
                        (f"{s}&sop_id={big['id']}&needs_attention=true", sup),
                    "sop_family_id + status=completed + locked=false":
                        (f"{s}&sop_family_id={family}&status=completed&locked=false", sup),
                    "status=completed + started_after":
                        (f"{s}&status=completed&started_after={week}", sup),
                    "worker's own list": (s, wh),
                    "worker's own list + status=completed": (f"{s}&status=completed", wh),
                    "stats, 20,000 sessions": (f"/api/v1/sops/{big['id']}/stats", sup),
                    "stats, 20,000 sessions, since 30 days":
                        (f"/api/v1/sops/{big['id']}/stats?since={day}", sup),
                }
                timings = {}
                for name, (path, headers) in requests.items():
                    timings[name] = await _time(http, path, headers)
                    print(f"{name:50} p50 {timings[name]['p50_ms']:7.2f} ms   "
                          f"p99 {timings[name]['p99_ms']:7.2f} ms   "
                          f"{timings[name].get('total', '')}", flush=True)
                result["requests"] = timings
                floor = timings["floor: GET /healthz"]["p50_ms"]
                lists = {k: v for k, v in timings.items()
                         if not k.startswith(("floor", "stats"))}
                stats = {k: v for k, v in timings.items() if k.startswith("stats")}
                result["summary"] = {
                    "floor_p50_ms": floor,
                    "slowest_filter": max(lists, key=lambda k: lists[k]["p50_ms"]),
                    "slowest_filter_p50_ms": max(v["p50_ms"] for v in lists.values()),
                    "stats_p50_ms": max(v["p50_ms"] for v in stats.values()),
                    "filters_at_most_15ms": all(v["p50_ms"] <= 15 for v in lists.values()),
                    "stats_at_most_100ms": all(v["p50_ms"] <= 100 for v in stats.values()),
                }
    finally:
        if pg_name and args.keep:
            print(f"kept: postgresql://postgres@127.0.0.1:5432/{pg_name}")
        elif pg_name:
            import asyncpg

            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            await admin.close()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", action="store_true",
                    help="keep the PostgreSQL database afterwards (to study its plans)")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    out = args.out or RESULTS / f"read-model-{datetime.now(UTC):%Y-%m-%d}-{args.database}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
