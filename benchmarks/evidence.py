"""What an evidence upload costs, against writing the same bytes straight to the same store,
and what 20 uploads at once do to the API's memory. Issue #26's figures.

    .venv/bin/python -m benchmarks.evidence [--reps 10] [--database sqlite] [--out F]

On the stack of real subprocesses of faults/stack.py (Temporal dev server, `worksession api`,
`worksession worker`), with the default directory store (DATA_DIR/evidence):

- **upload vs store**: a 10 MiB photo sent to `POST /sessions/{id}/evidence` over loopback
  (client to answer: HTTP, authentication, the session's row, the type sniffed from its first
  bytes, the file spooled and hashed, linked under its hash, the upload's row) against the
  same bytes handed to the same store code in this process (`DirectoryStore.receive` +
  `keep`: spooled, hashed, fsynced, linked), and against a bare `write` + `fsync` + `rename`
  into the same directory. Alternated, each file new random bytes (no idempotent repeat).
  The upload twice: streamed (chunked, no Content-Length) and whole with its Content-Length
  (as the console's fetch() of a Blob sends it). Beside the times, the CPU each side costs:
  the API process's per upload (and the client's, this process), against this process's per
  store write (the API idle meanwhile).
- **memory**: 20 uploads of 20 MiB at once, each body streamed by the client; the API's
  peak resident memory (VmHWM) against its resident memory just before.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.load import RESULTS, _versions, confirm_steps, confirmed_sop
from faults.stack import Stack
from persistence.files import DirectoryStore
from tests.evidence_files import jpeg

MIB = 1024 * 1024
CHUNK = 256 * 1024  # what the client sends at a time, and what the store is handed


def status_kib(pid: int, field: str) -> int:
    m = re.search(rf"{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) if m else 0


async def chunks_of(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), CHUNK):
        yield data[i:i + CHUNK]


def cpu(p: psutil.Process) -> float:
    """A process's CPU time so far, user and system, all its threads."""
    t = p.cpu_times()
    return t.user + t.system


class Cpu:
    """CPU seconds spent by the API's process and by this one (the client, or the store
    code run here) across each measured call."""

    def __init__(self, api_pid: int) -> None:
        self.api, self.here = psutil.Process(api_pid), psutil.Process()
        self.spent: dict[str, dict[str, list[float]]] = {}

    async def measure(self, side: str, call: Any) -> float:
        api0, here0 = cpu(self.api), cpu(self.here)
        elapsed: float = await call
        spent = self.spent.setdefault(side, {"api": [], "here": []})
        spent["api"].append(cpu(self.api) - api0)
        spent["here"].append(cpu(self.here) - here0)
        return elapsed


async def upload(http: httpx.AsyncClient, session: str, headers: dict[str, str],
                 data: bytes, streamed: bool = True) -> float:
    """`streamed`: the body sent as it is read, chunked (no Content-Length); else as the
    console's fetch() of a Blob sends it, whole, with its Content-Length."""
    t0 = time.perf_counter()
    r = await http.post(f"/api/v1/sessions/{session}/evidence?filename=photo.jpg",
                        content=chunks_of(data) if streamed else data,
                        headers={**headers, "Content-Type": "image/jpeg"})
    elapsed = time.perf_counter() - t0
    if r.status_code != 201:
        raise RuntimeError(f"upload answered {r.status_code}: {r.text}")
    return elapsed


async def store_write(store: DirectoryStore, data: bytes) -> float:
    t0 = time.perf_counter()
    async with store.receive(chunks_of(data)) as kept:
        await kept.keep()
    return time.perf_counter() - t0


async def bare_write(directory: Path, data: bytes) -> float:
    def write() -> None:
        part = directory / f".{uuid.uuid4().hex}.part"
        with open(part, "wb") as f:
            for i in range(0, len(data), CHUNK):
                f.write(data[i:i + CHUNK])
            f.flush()
            os.fsync(f.fileno())
        part.rename(directory / uuid.uuid4().hex)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    t0 = time.perf_counter()
    await asyncio.to_thread(write)
    return time.perf_counter() - t0


def ms(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(xs) * 1000, 1),
            "min_ms": round(min(xs) * 1000, 1), "max_ms": round(max(xs) * 1000, 1)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with Stack(args.database, label="evidence-bench") as stack:
        assert stack.api is not None and stack.api.pid is not None
        api_pid = stack.api.pid
        worker = {"Authorization": f"Bearer {stack.token('worker')}"}
        boss = {"Authorization": f"Bearer {stack.token('supervisor')}"}
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=120) as http:
            sop = await confirmed_sop(http, boss, "Evidence benchmark",
                                      [{"title": "A", "steps": confirm_steps(3)}])
            r = await http.post("/api/v1/sessions", json={"sop_id": sop["id"]}, headers=worker)
            r.raise_for_status()
            session = r.json()["id"]

            # Same filesystem, same code as the API's store (DATA_DIR/evidence), a folder
            # of its own so that nothing the API keeps is touched.
            direct = DirectoryStore(stack.dir / "evidence-direct")
            bare = stack.dir / "evidence-bare"
            bare.mkdir()
            size = args.photo_mib * MIB
            await upload(http, session, worker, jpeg(size))  # warm: connections, caches
            sides: dict[str, list[float]] = {
                "upload": [], "upload_with_length": [], "store": [], "bare": []}
            meter = Cpu(api_pid)
            for _ in range(args.reps):
                for side, call in (
                        ("upload", lambda: upload(http, session, worker, jpeg(size))),
                        ("upload_with_length", lambda: upload(
                            http, session, worker, jpeg(size), streamed=False)),
                        ("store", lambda: store_write(direct, jpeg(size))),
                        ("bare", lambda: bare_write(bare, jpeg(size)))):
                    sides[side].append(await meter.measure(side, call()))
            single: dict[str, Any] = {k: ms(v) for k, v in sides.items()}
            up = single["upload"]["p50_ms"]
            single["upload_over_store"] = round(up / single["store"]["p50_ms"], 2)
            single["upload_with_length_over_store"] = round(
                single["upload_with_length"]["p50_ms"] / single["store"]["p50_ms"], 2)
            single["upload_over_bare_write"] = round(up / single["bare"]["p50_ms"], 2)
            # CPU: the API's per upload (the client's is this process's, apart) against the
            # store code's in this process (the API is idle then).
            # (means: the kernel counts CPU time in 10 ms ticks)
            single["cpu_mean_ms"] = {side: {who: round(statistics.mean(xs) * 1000, 1)
                                            for who, xs in spent.items()}
                                     for side, spent in meter.spent.items()}
            single["api_cpu_over_store_cpu"] = round(
                statistics.mean(meter.spent["upload"]["api"])
                / statistics.mean(meter.spent["store"]["here"]), 2)

            # 20 at once, 20 MiB each (just under the default limit), bodies streamed.
            big = args.concurrent_mib * MIB - 4096
            photos = [jpeg(big) for _ in range(args.concurrent)]
            await asyncio.sleep(1)
            rss_before = status_kib(api_pid, "VmRSS")
            hwm_before = status_kib(api_pid, "VmHWM")
            t0 = time.perf_counter()
            times = await asyncio.gather(*(upload(http, session, worker, p) for p in photos))
            wall = time.perf_counter() - t0
            hwm_after = status_kib(api_pid, "VmHWM")
            memory = {
                "uploads": args.concurrent, "bytes_each": big,
                "api_rss_before_mib": round(rss_before / 1024, 1),
                "api_peak_rss_before_mib": round(hwm_before / 1024, 1),
                "api_peak_rss_after_mib": round(hwm_after / 1024, 1),
                "api_growth_mib": round((hwm_after - rss_before) / 1024, 1),
                "wall_s": round(wall, 2), "upload": ms(list(times)),
                "throughput_mib_s": round(args.concurrent * big / MIB / wall, 1),
            }
    return {
        "benchmark": "evidence", "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": args.database, "versions": _versions(),
        "single": {"photo_mib": args.photo_mib, "reps": args.reps, **single},
        "concurrent": memory,
        "targets": {"upload_over_store_max": 1.5, "api_growth_mib_max": 100},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--photo-mib", type=int, default=10)
    ap.add_argument("--concurrent", type=int, default=20)
    ap.add_argument("--concurrent-mib", type=int, default=20)
    ap.add_argument("--database", default="sqlite", choices=("sqlite", "postgresql"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    out = args.out or RESULTS / f"evidence-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
