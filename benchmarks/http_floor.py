"""How far an HTTP API in front of Temporal can get at all: whole sessions through a
pass-through API against the raw session floor, the same run.

    .venv/bin/python -m benchmarks.http_floor [--seconds 30] [--devices 20]

The pass-through API (`--serve`, its own process, as the service's API is) runs on the same
uvicorn, httptools and uvloop as the service and does only what any API in front of the
sessions must: read a JSON body, call Temporal (`RawSession`: a start, one update per step)
and answer JSON. No authentication, no database, no audit, no domain. Both sides' workflow
worker runs in the driver, as the load benchmark's raw side does, so the two differ only by
the HTTP hop. Its ratio is the ceiling of `session_throughput_ratio` in
`benchmarks/load.py`: the service's whole write path has to fit in what is left."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from benchmarks.load import RESULTS, Clients, RawLoad, Stats, _send, _session_side, closed_loop
from benchmarks.raw_floor import RawSession
from worksession import aio
from worksession.binaries import temporal_cli

STEPS = 10


class CheckBody(BaseModel):
    check_id: uuid.UUID


def serve(temporal: str, queue: str, fd: int) -> None:
    """The pass-through API, on the socket `fd`."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    state: dict[str, Client] = {}

    @app.post("/sessions", status_code=201)
    async def start() -> dict[str, Any]:
        if "client" not in state:
            state["client"] = await Client.connect(temporal)
        session_id = str(uuid.uuid4())
        await state["client"].start_workflow(RawSession.run, STEPS, id=f"http-{session_id}",
                                             task_queue=queue)
        return {"id": session_id, "checks": 0}

    @app.post("/sessions/{session_id}/checks")
    async def check(session_id: str, body: CheckBody) -> dict[str, Any]:
        handle = state["client"].get_workflow_handle(f"http-{session_id}")
        checks = await handle.execute_update(RawSession.check, str(body.check_id))
        return {"id": session_id, "checks": checks}

    sock = socket.socket(fileno=fd)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


async def _http_session(http: Clients, stats: Stats) -> bool:
    r = await _send(stats, "POST /sessions", time.perf_counter(),
                    lambda: http.post("/sessions", json={}))
    if r is None or r.status_code != 201:
        return False
    sid = r.json()["id"]
    for _ in range(STEPS):
        r = await _send(stats, "POST /checks", time.perf_counter(), lambda: http.post(
            f"/sessions/{sid}/checks", json={"check_id": str(uuid.uuid4())}))
        if r is None or r.status_code != 200:
            return False
    return True


def _cpu(procs: dict[str, psutil.Process], since: dict[str, float] | None = None,
         sessions: int = 1) -> dict[str, float]:
    """CPU seconds (user + system) by process; with `since`, ms per session since then."""
    now = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
    if since is None:
        return now
    out = {k: round((now[k] - since[k]) * 1000 / sessions, 1) for k in now}
    out["all"] = round(sum(out.values()), 1)
    return out


async def run(seconds: float, devices: int) -> dict[str, Any]:
    async with await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_cli(),
            dev_server_extra_args=["--log-level", "warn"]) as env:
        target = env.client.service_client.config.target_host
        queue = f"http-floor-{uuid.uuid4()}"
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        port = sock.getsockname()[1]
        api = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.http_floor", "--serve", target, queue,
            str(sock.fileno()), pass_fds=[sock.fileno()])
        try:
            async with Worker(env.client, task_queue=queue, workflows=[RawSession]), \
                    Clients(f"http://127.0.0.1:{port}") as http:
                raw = RawLoad(env.client, queue)
                # Warm both sides up (imports, connections, the sandbox's first run).
                await closed_loop(devices, 3, lambda i: _http_session(http, Stats()))
                await closed_loop(devices, 3, lambda i: raw.session(Stats(), STEPS))
                procs = {"temporal": next(p for p in psutil.Process().children()
                                     if "temporal" in p.name()),
                         "api": psutil.Process(api.pid), "driver": psutil.Process()}
                h_stats, r_stats = Stats(), Stats()
                cpu = _cpu(procs)
                h = await closed_loop(devices, seconds, lambda i: _http_session(http, h_stats))
                h_cpu, cpu = _cpu(procs, since=cpu, sessions=h[0]), _cpu(procs)
                r = await closed_loop(devices, seconds, lambda i: raw.session(r_stats, STEPS))
                r_cpu = _cpu(procs, since=cpu, sessions=r[0])
        finally:
            api.terminate()
            await api.wait()
    http_side = _session_side(*h, h_stats, "POST /sessions", "POST /checks")
    raw_side = _session_side(*r, r_stats, "raw start", "raw update")
    http_side["cpu_ms_per_session"], raw_side["cpu_ms_per_session"] = h_cpu, r_cpu
    return {"started_at": datetime.now(UTC).isoformat(), "devices": devices,
            "sop_steps": STEPS, "seconds": seconds, "pass_through_api": http_side,
            "raw": raw_side, "ratio_sessions_per_s": round(
                http_side["sessions_per_s"] / raw_side["sessions_per_s"], 2)}


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    result = aio.run(run(args.seconds, args.devices))
    print(json.dumps(result, indent=1))
    out = args.out or RESULTS / f"http-floor-{datetime.now(UTC):%Y-%m-%d}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
