"""Do session starts of one SOP queue behind each other? A shift change, measured on
PostgreSQL: two API processes, N devices each starting a session on the same SOP, cancelling
it, and starting the next, for a while. Meanwhile pg_locks and pg_stat_activity are sampled:
lock waits and connections "idle in transaction" (a transaction left open across a Temporal
call shows up there).

    .venv/bin/python -m benchmarks.start_contention            # about a minute

Results go to benchmarks/results/start-contention-<stamp>.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from benchmarks.load import RESULTS, confirm_steps, confirmed_sop, pct
from faults.harness import free_port
from faults.stack import BIN, Proc, Stack


async def sample(dsn: str, database: str, done: asyncio.Event, every_s: float = 0.05
                 ) -> dict[str, Any]:
    """Lock waits and idle-in-transaction connections of the benchmark's database."""
    conn = await asyncpg.connect(dsn)
    samples = waiting = idle_in_tx = 0
    peak_waiting = peak_idle = 0
    try:
        while not done.is_set():
            w = await conn.fetchval(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE NOT l.granted AND d.datname = $1", database)
            i = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                "AND state = 'idle in transaction'", database)
            samples += 1
            waiting += w
            idle_in_tx += i
            peak_waiting, peak_idle = max(peak_waiting, w), max(peak_idle, i)
            await asyncio.sleep(every_s)
    finally:
        await conn.close()
    return {"samples": samples, "lock_waits_seen": waiting, "peak_lock_waits": peak_waiting,
            "idle_in_transaction_seen": idle_in_tx, "peak_idle_in_transaction": peak_idle}


async def device(api_url: str, token: str, sop_id: str, until: float,
                 latencies: list[float], outcomes: dict[str, int]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        while time.monotonic() < until:
            t = time.perf_counter()
            r = await http.post("/api/v1/sessions", json={"sop_id": sop_id}, headers=headers)
            outcomes[str(r.status_code)] = outcomes.get(str(r.status_code), 0) + 1
            if r.status_code != 201:
                await asyncio.sleep(0.1)
                continue
            latencies.append((time.perf_counter() - t) * 1000)
            await http.post(f"/api/v1/sessions/{r.json()['id']}/cancel",
                            json={"reason": "shift change probe"}, headers=headers)


async def run(devices: int, seconds: float) -> dict[str, Any]:
    async with Stack("postgresql", label="starts") as stack:
        second = Proc("api-2", [str(BIN / "worksession"), "api"],
                      {**stack.env, "WORKSESSION_API_PORT": str(port := free_port())},
                      stack.logs / "api-2.log")
        await second.start()
        urls = [stack.api_url, f"http://127.0.0.1:{port}"]
        try:
            async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
                for _ in range(100):  # the second API is up when it answers
                    try:
                        if (await http.get(f"{urls[1]}/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        await asyncio.sleep(0.2)
                sup = {"Authorization": f"Bearer {stack.token('supervisor')}"}
                sop = await confirmed_sop(http, sup, "Shift change",
                                          [{"title": "A", "steps": confirm_steps(5)}])
            assert stack.pg_name is not None
            dsn = stack.db_url.replace("postgresql+asyncpg", "postgresql")
            done = asyncio.Event()
            sampler = asyncio.create_task(sample(dsn, stack.pg_name, done))
            latencies: list[float] = []
            outcomes: dict[str, int] = {}
            until = time.monotonic() + seconds
            await asyncio.gather(*(device(urls[i % 2], stack.token("worker", uuid.uuid4()),
                                          sop["id"], until, latencies, outcomes)
                                   for i in range(devices)))
            done.set()
            locks = await sampler
        finally:
            await second.stop()
    return {"started_at": datetime.now(UTC).isoformat(), "api_processes": 2,
            "devices": devices, "seconds": seconds, "starts": len(latencies),
            "answers": outcomes, "start_p50_ms": round(pct(latencies, 50) or 0, 1),
            "start_p99_ms": round(pct(latencies, 99) or 0, 1), **locks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    result = asyncio.run(run(args.devices, args.seconds))
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"start-contention-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
