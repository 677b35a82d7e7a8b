"""Latency of one check submission (and of GET /sessions/current) through the API on a
running `worksession dev` stack, sequential requests from one worker.

    worksession dev &           # in another shell
    python -m benchmarks.check_latency --data-dir ./data --checks 200
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from uuid import uuid4

import httpx

from worksession.tokens import load_or_create_dev_secret, mint


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", default="http://127.0.0.1:8000")
    ap.add_argument("--data-dir", type=Path, default=Path("./data"))
    ap.add_argument("--checks", type=int, default=200)
    args = ap.parse_args()
    secret = load_or_create_dev_secret(args.data_dir)
    sup = {"Authorization": f"Bearer {mint(secret, 'supervisor', uuid4())}"}
    steps = [{"title": f"Step {i}", "check": {"kind": "confirm", "prompt": "ok?"}}
             for i in range(100)]
    check_ms: list[float] = []
    current_ms: list[float] = []
    with httpx.Client(base_url=args.api, timeout=30) as api:
        sop = api.post("/api/v1/sops", headers=sup, json={
            "title": "Latency probe", "tasks": [{"title": "All", "steps": steps}]}).json()
        api.post(f"/api/v1/sops/{sop['id']}/confirm", headers=sup).raise_for_status()
        while len(check_ms) < args.checks:
            worker = {"Authorization": f"Bearer {mint(secret, 'worker', uuid4())}"}
            s = api.post("/api/v1/sessions", headers=worker,
                         json={"sop_id": sop["id"]}).json()
            for _ in range(min(100, args.checks - len(check_ms))):
                t = time.perf_counter()
                r = api.post(f"/api/v1/sessions/{s['id']}/checks", headers=worker,
                             json={"step_id": s["current_step_id"], "result": "passed",
                                   "check_id": str(uuid4())})
                check_ms.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
                s = r.json()
                if s["status"] != "in_progress":
                    break
                t = time.perf_counter()
                api.get("/api/v1/sessions/current", headers=worker).raise_for_status()
                current_ms.append((time.perf_counter() - t) * 1000)
    for name, xs in (("POST checks", check_ms), ("GET current", current_ms)):
        print(f"{name:12s} n={len(xs)} p50={statistics.median(xs):.1f} ms "
              f"p95={pct(xs, 95):.1f} ms p99={pct(xs, 99):.1f} ms max={max(xs):.1f} ms")


if __name__ == "__main__":
    main()
