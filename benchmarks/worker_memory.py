"""Resident memory of the Temporal worker process alone with N open sessions.

    .venv/bin/python -m benchmarks.worker_memory --sessions 2000

Runs Temporal, `worksession api` and `worksession worker` as separate processes (the fault
harness's stack), opens N sessions through the API and reads the worker's VmRSS."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx

from benchmarks.load import confirm_steps, confirmed_sop
from faults.stack import Stack


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+)", text)
    return int(m.group(1)) / 1024 if m else 0.0


async def run(sessions: int) -> dict[str, Any]:
    async with Stack(label="memory") as stack:
        assert stack.worker is not None and stack.worker.pid is not None
        sup = {"Authorization": f"Bearer {stack.token('supervisor')}"}
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as http:
            sop = await confirmed_sop(http, sup, "Memory probe",
                                      [{"title": "A", "steps": confirm_steps(8)}])
            idle = rss_mb(stack.worker.pid)
            gate = asyncio.Semaphore(20)

            async def one() -> None:
                async with gate:
                    w = {"Authorization": f"Bearer {stack.token('worker', uuid.uuid4())}"}
                    r = await http.post("/api/v1/sessions", json={"sop_id": sop["id"]},
                                        headers=w)
                    r.raise_for_status()
                    s = r.json()
                    r = await http.post(f"/api/v1/sessions/{s['id']}/checks", headers=w,
                                        json={"step_id": s["current_step_id"],
                                              "result": "passed"})
                    r.raise_for_status()

            await asyncio.gather(*(one() for _ in range(sessions)))
            await asyncio.sleep(2)
            return {"open_sessions": sessions, "worker_rss_mb_idle": round(idle, 1),
                    "worker_rss_mb": round(rss_mb(stack.worker.pid), 1),
                    "note": "separate `worksession worker` process, default workflow cache "
                            "(WORKSESSION_WORKFLOW_CACHE_SIZE default)"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args.sessions))
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
