"""SPC benchmark (issue #29), on the `worksession dev` stack through HTTP:

1. `GET /sops/{id}/steps/{step_id}/spc` p50 at 10,000 and 100,000 values of one step (the
   values' checks and their sessions inserted straight into the database; the chart's row
   is left to the first read, as after migration 0010), default window (the last 500).
2. A measurement check's p50 (judged on its chart in `write_change`) against a confirm
   check's (no chart: the same path without SPC), in the same run, alternating: each session
   of a three-step SOP checks one measurement and one confirm step before a last confirm
   (not timed); half the sessions have the measurement first, half second.

    .venv/bin/python -m benchmarks.spc [--database postgresql] [--sessions 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.load import RESULTS, Clients, DevStack, bearer, confirmed_sop, pct
from benchmarks.read_model import PG_ADMIN
from persistence.db import Database
from persistence.tables import session_checks, work_sessions
from worksession.tokens import load_or_create_dev_secret

SAMPLES = 60
MEASURE = {"kind": "measurement", "prompt": "Concentration", "unit": "g/l", "min": 90,
           "max": 110}
CONFIRM = {"kind": "confirm", "prompt": "Done?"}


async def _seed_values(url: str, sop: dict[str, Any], n: int, rng: random.Random) -> None:
    """`n` values of the SOP's first step, 100 checks to a session, one a minute."""
    step = uuid.UUID(sop["tasks"][0]["steps"][0]["id"])
    start = datetime.now(UTC) - timedelta(minutes=n + 10)
    db = Database(url)
    try:
        for s0 in range(0, n, 10_000):
            sessions, checks = [], []
            for i in range(s0, min(n, s0 + 10_000), 100):
                sid, worker = uuid.uuid4(), uuid.uuid4()
                at = start + timedelta(minutes=i)
                sessions.append({
                    "id": sid, "worker_id": worker, "sop_id": uuid.UUID(sop["id"]),
                    "sop_title": sop["title"], "sop_version": 1, "status": "completed",
                    "current_step_id": None, "started_at": at, "completed_at": at,
                    "paused_seconds": 0.0, "duration_seconds": 60.0, "needs_attention": False,
                    "locked": False, "workflow_id": f"work-session-{worker}", "run_id": None,
                    "version": 100, "updated_at": at, "audit_seq": 0, "audit_hash": "0" * 64})
                checks += [{"session_id": sid, "id": uuid.uuid4(), "seq": k, "step_id": step,
                            "result": "passed", "value": rng.gauss(100, 1.5),
                            "checked_at": at + timedelta(minutes=k), "checked_by": worker}
                           for k in range(min(100, n - i))]
            async with db.write() as conn:
                await conn.execute(work_sessions.insert(), sessions)
                await conn.execute(session_checks.insert(), checks)
        if db.is_sqlite:
            await db.refresh_planner_statistics()
        else:
            import asyncpg

            conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            await conn.execute("VACUUM ANALYZE")
            await conn.close()
    finally:
        await db.dispose()


async def _time_get(http: Clients, path: str, headers: dict[str, str]) -> dict[str, Any]:
    xs, body = [], None
    for _ in range(SAMPLES):
        t = time.perf_counter()
        r = await http.get(path, headers=headers)
        xs.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        body = r.json()
    assert body is not None
    return {"p50_ms": round(statistics.median(xs), 2), "p99_ms": round(pct(xs, 99) or 0, 2),
            "n": body["n"], "points": len(body["points"]), "ucl": body["ucl"]}


async def _checks(http: Clients, secret: bytes, sup: dict[str, str], sessions: int,
                  rng: random.Random) -> dict[str, Any]:
    first = await confirmed_sop(http, sup, "SPC check A", [{"title": "T", "steps": [
        {"title": "Measure", "check": MEASURE}, {"title": "Confirm", "check": CONFIRM},
        {"title": "Last", "check": CONFIRM}]}])
    second = await confirmed_sop(http, sup, "SPC check B", [{"title": "T", "steps": [
        {"title": "Confirm", "check": CONFIRM}, {"title": "Measure", "check": MEASURE},
        {"title": "Last", "check": CONFIRM}]}])
    times: dict[str, list[float]] = {"measurement (SPC)": [], "confirm (no SPC)": []}
    warm = 10
    for i in range(sessions + warm):
        worker = bearer(secret, "worker")
        r = await http.post("/api/v1/sessions", headers=worker,
                            json={"sop_id": (first if i % 2 else second)["id"]})
        s = r.json()
        while s["status"] == "in_progress":
            step = s["current_step"]
            measured = step["check"]["kind"] == "measurement"
            body = {"value": round(rng.gauss(100, 1.5), 3)} if measured else {"result": "passed"}
            last = step["title"] == "Last"
            t = time.perf_counter()
            r = await http.post(f"/api/v1/sessions/{s['id']}/checks", headers=worker,
                                json={"step_id": step["id"], "check_id": str(uuid.uuid4()),
                                      **body})
            ms = (time.perf_counter() - t) * 1000
            r.raise_for_status()
            s = r.json()
            if i >= warm and not last:
                times["measurement (SPC)" if measured else "confirm (no SPC)"].append(ms)
    out = {k: {"n": len(v), "p50_ms": round(statistics.median(v), 2),
               "p99_ms": round(pct(v, 99) or 0, 2)} for k, v in times.items()}
    with_spc = out["measurement (SPC)"]["p50_ms"]
    without = out["confirm (no SPC)"]["p50_ms"]
    out["p50_ratio"] = round(with_spc / without, 3)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="ws-spc-"))
    pg_name = None
    if args.database == "postgresql":
        import asyncpg

        pg_name = f"ws_spc_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'CREATE DATABASE "{pg_name}"')
        await admin.close()
        os.environ["WORKSESSION_DATABASE_URL"] = \
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}"
    result: dict[str, Any] = {"database": args.database, "samples": SAMPLES,
                              "at": datetime.now(UTC).isoformat()}
    try:
        with DevStack(tmp) as stack:
            url = os.environ.get("WORKSESSION_DATABASE_URL") or \
                f"sqlite+aiosqlite:///{stack.data_dir / 'worksession.db'}"
            secret = load_or_create_dev_secret(stack.data_dir)
            sup = bearer(secret, "supervisor")
            async with Clients(stack.api) as http:
                result["floor: GET /healthz"] = await _time_healthz(http)
                for n in (10_000, 100_000):
                    sop = await confirmed_sop(http, sup, f"SPC {n}", [{"title": "T", "steps": [
                        {"title": "Measure", "check": MEASURE}]}])
                    t = time.perf_counter()
                    await _seed_values(url, sop, n, rng)
                    print(f"seeded {n} values in {time.perf_counter() - t:.1f} s", flush=True)
                    path = f"/api/v1/sops/{sop['id']}/steps/{sop['tasks'][0]['steps'][0]['id']}/spc"
                    result[f"GET spc, {n} values"] = got = await _time_get(http, path, sup)
                    print(f"GET spc, {n:7} values: {got}", flush=True)
                result["checks"] = got = await _checks(http, secret, sup, args.sessions, rng)
                print(f"checks: {got}", flush=True)
    finally:
        if pg_name:
            import asyncpg

            admin = await asyncpg.connect(PG_ADMIN)
            await admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
            await admin.close()
    return result


async def _time_healthz(http: Clients) -> dict[str, float]:
    xs = []
    for _ in range(SAMPLES):
        t = time.perf_counter()
        (await http.get("/healthz")).raise_for_status()
        xs.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(statistics.median(xs), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--sessions", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    out = args.out or RESULTS / f"spc-{datetime.now(UTC):%Y-%m-%d}-{args.database}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
