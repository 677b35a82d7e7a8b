"""CPU time per operation, per process: what each request costs the API process, the worker,
the Temporal server and the client, against a raw Temporal update.

    .venv/bin/python -m benchmarks.cpu_cost            # about a minute

On a machine with everything on it, sustained throughput is bounded by CPU, not by latency:
this tells where a check's CPU goes and what the raw floor needs for the same. Operations run
one at a time (no queueing, so the figures do not depend on the load); each phase's CPU is
read from /proc before and after, a settling second included, minus the idle rate.
Results go to benchmarks/results/cpu-<stamp>.json."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from benchmarks.load import RESULTS, DevStack, _versions, confirm_steps, confirmed_sop
from benchmarks.raw_floor import RawSessionFloor
from worksession.tokens import load_or_create_dev_secret, mint

SETTLE_S = 1.0


class Meter:
    """CPU seconds (user + system) of the API processes, the worker, the Temporal server and
    this process (the client, and the raw floor's worker)."""

    def __init__(self, stack: DevStack) -> None:
        parts = stack.children()
        self.procs = {"api": [psutil.Process(p) for p in parts["api"]],
                      "worker": [psutil.Process(p) for p in parts["worker"]],
                      "temporal": [psutil.Process(p) for p in parts["temporal"]],
                      "client": [psutil.Process()]}
        self.idle_per_s = {k: 0.0 for k in self.procs}

    def read(self) -> dict[str, float]:
        return {k: sum(sum(p.cpu_times()[:2]) for p in ps) for k, ps in self.procs.items()}

    async def calibrate(self, seconds: float = 3.0) -> None:
        a = self.read()
        await asyncio.sleep(seconds)
        b = self.read()
        self.idle_per_s = {k: (b[k] - a[k]) / seconds for k in a}

    async def per_op(self, n: int, run: Callable[[], Awaitable[None]]) -> dict[str, float]:
        await asyncio.sleep(SETTLE_S)
        a, t = self.read(), time.perf_counter()
        await run()
        await asyncio.sleep(SETTLE_S)  # what the operation leaves to do in the background
        b, elapsed = self.read(), time.perf_counter() - t
        out = {k: round(max(0.0, b[k] - a[k] - self.idle_per_s[k] * elapsed) * 1000 / n, 2)
               for k in a}
        out["server_side"] = round(out["api"] + out["worker"] + out["temporal"], 2)
        return out


async def run(n: int) -> dict[str, Any]:
    import tempfile
    result: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(), "ops_per_phase": n,
                              "versions": _versions(), "cpus": psutil.cpu_count(),
                              "unit": "ms of CPU per operation", "phases": {}}
    with DevStack(Path(tempfile.mkdtemp(prefix="ws-cpu-"))) as stack:
        meter = Meter(stack)
        secret = load_or_create_dev_secret(stack.data_dir)
        sup = {"Authorization": f"Bearer {mint(secret, 'supervisor', uuid.uuid4())}"}
        async with httpx.AsyncClient(base_url=stack.api, timeout=30) as http:
            sop = await confirmed_sop(http, sup, "CPU probe",
                                      [{"title": "A", "steps": confirm_steps(40)}])
            workers = [{"Authorization": f"Bearer {mint(secret, 'worker', uuid.uuid4())}"}
                       for _ in range(n)]
            sessions: list[dict[str, Any]] = [{} for _ in range(n)]

            async def ok(r: Awaitable[httpx.Response], status: int = 200) -> httpx.Response:
                response = await r
                if response.status_code != status:
                    raise RuntimeError(f"{response.status_code}: {response.text}")
                return response

            async def start() -> None:
                for i, w in enumerate(workers):
                    sessions[i] = (await ok(http.post("/api/v1/sessions", headers=w, json={
                        "sop_id": sop["id"]}), 201)).json()

            def check(result: str) -> Callable[[], Awaitable[None]]:
                async def go() -> None:
                    for i, w in enumerate(workers):
                        s = sessions[i]
                        sessions[i] = (await ok(http.post(
                            f"/api/v1/sessions/{s['id']}/checks", headers=w, json={
                                "step_id": s["current_step"]["id"], "result": result,
                                "check_id": str(uuid.uuid4())}))).json()
                return go

            async def current() -> None:
                for w in workers:
                    await ok(http.get("/api/v1/sessions/current", headers=w))

            async def listing() -> None:
                for _ in workers:
                    await ok(http.get("/api/v1/sessions?limit=20", headers=sup))

            async def complete() -> None:
                for i, w in enumerate(workers):
                    await ok(http.post(f"/api/v1/sessions/{sessions[i]['id']}/complete",
                                       headers=w))

            await meter.calibrate()
            phases = result["phases"]
            phases["POST /sessions (start)"] = await meter.per_op(n, start)
            await meter.per_op(n, check("passed"))  # warm: first checks start write-behind timers
            phases["POST /checks (passed)"] = await meter.per_op(n, check("passed"))
            phases["POST /checks (failed)"] = await meter.per_op(n, check("failed"))
            phases["GET /sessions/current"] = await meter.per_op(n, current)
            phases["GET /sessions"] = await meter.per_op(n, listing)
            phases["POST /complete (session closes)"] = await meter.per_op(n, complete)

            client = await Client.connect(f"127.0.0.1:{stack.temporal_port}",
                                          data_converter=pydantic_data_converter)
            queue = f"raw-floor-{uuid.uuid4()}"
            async with Worker(client, task_queue=queue, workflows=[RawSessionFloor]):
                handles = [await client.start_workflow(RawSessionFloor.run, 8,
                                                       id=f"raw-floor-{uuid.uuid4()}",
                                                       task_queue=queue) for _ in range(n)]

                async def raw() -> None:
                    for h in handles:
                        await h.execute_update(RawSessionFloor.check, str(uuid.uuid4()))
                await meter.per_op(n, raw)  # warm
                phases["raw update (worker in the client process)"] = await meter.per_op(n, raw)
                for h in handles:
                    await h.signal(RawSessionFloor.finish)
    for name, figures in result["phases"].items():
        print(f"{name:45s} api {figures['api']:6.2f}  worker {figures['worker']:6.2f}  "
              f"temporal {figures['temporal']:6.2f}  client {figures['client']:6.2f}  ms CPU/op",
              flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=50, help="operations per phase")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    result = asyncio.run(run(args.ops))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = Path(f"{args.out or RESULTS / f'cpu-{datetime.now(UTC):%Y%m%dT%H%M%SZ}'}.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
