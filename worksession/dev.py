"""`worksession dev`: a Temporal dev server (persisted to SQLite under the data dir), the
worker and the API, each in its own process as production runs them, supervised by this one;
SIGINT/SIGTERM stop all of it in order (API, worker, Temporal) and leave no child."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
from datetime import timedelta
from pathlib import Path
from uuid import UUID, uuid4

import httpx
from temporalio.client import Client

from persistence.migrate import upgrade_async
from worksession.binaries import temporal_cli
from worksession.settings import Settings
from worksession.temporal import (
    DEV_SERVER_STORE_FLAGS,
    TLS_SETTINGS,
    connect,
    register_search_attributes,
    worker_polls,
)
from worksession.tokens import load_or_create_dev_secret, mint

HOST = "127.0.0.1"
TEMPORAL_START_TIMEOUT = 60.0
CHILD_START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
# A child that dies is started again after this pause, doubled while it keeps dying soon
# after its start (up to the maximum); one that ran a minute starts again at once.
RESTART_PAUSE, RESTART_PAUSE_MAX, STEADY_S = 1.0, 30.0, 60.0


class DevStackError(Exception):
    pass


def _in_use(port: int) -> bool:
    """Whether a server could not bind `port` now: one listens there, or a connection is open
    from it or closing (TIME_WAIT), which asking for a connection does not see."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            s.bind((HOST, port))
        except OSError:
            return True
        return False


def _die_with_parent() -> None:
    """Linux: a child gets SIGTERM if this process dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """One supervised process of the stack: started, restarted when it dies on its own,
    stopped with SIGTERM (SIGKILL after STOP_TIMEOUT)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str],
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.name, self.argv, self.env, self.pass_fds = name, argv, env, pass_fds
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, env=self.env, pass_fds=self.pass_fds, stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True, preexec_fn=_die_with_parent)
        self._supervisor = asyncio.create_task(self._supervise())

    @property
    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def _supervise(self) -> None:
        pause = RESTART_PAUSE
        while True:
            assert self.proc is not None
            started = asyncio.get_running_loop().time()
            code = await self.proc.wait()
            if self.stopping:
                return
            if asyncio.get_running_loop().time() - started > STEADY_S:
                pause = RESTART_PAUSE
            print(f"worksession dev: the {self.name} exited ({code}); starting it again in "
                  f"{pause:.0f} s", file=sys.stderr, flush=True)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_PAUSE_MAX)
            if self.stopping:
                return
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, pass_fds=self.pass_fds,
                stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent)

    async def stop(self) -> None:
        self.stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await _stop_process(self.proc)


async def _wait_for_temporal(proc: asyncio.subprocess.Process, settings: Settings,
                             log: Path) -> Client:
    deadline = asyncio.get_running_loop().time() + TEMPORAL_START_TIMEOUT
    while True:
        if proc.returncode is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise DevStackError(f"the Temporal dev server exited ({proc.returncode}); "
                                f"see {log}:\n{tail}")
        try:
            client = await connect(settings)
            await client.service_client.check_health()
            return client
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise DevStackError("the Temporal dev server did not come up in "
                                    f"{TEMPORAL_START_TIMEOUT:.0f} s; see {log}") from None
            await asyncio.sleep(0.25)


def _listen(port: int) -> socket.socket:
    """The API's socket, bound here once and shared by every API process (each accepts on
    it): a busy port is found before anything starts, and no process races another to bind."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise DevStackError(f"port {port} (API) is already in use; stop what listens there "
                            "or pick another with --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def run_dev(data_dir: Path, port: int, temporal_port: int, ui_port: int,
                  api_processes: int = 1, metrics_port: int = 9464,
                  worker_metrics_port: int = 9465) -> int:
    # API process i serves its metrics on the i-th port from `metrics_port` on, the
    # worker's port skipped; 0 turns them off.
    api_metrics = [p for p in range(metrics_port, metrics_port + api_processes + 1)
                   if p != worker_metrics_port][:api_processes] if metrics_port else \
        [0] * api_processes
    for name, p in (("API", port), ("Temporal", temporal_port), ("Temporal UI", ui_port),
                    *(("API metrics", m) for m in api_metrics),
                    ("worker metrics", worker_metrics_port)):
        if p and _in_use(p):
            raise DevStackError(f"port {p} ({name}) is already in use; stop what listens "
                                f"there or pick another with --{_flag(name)}")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = load_or_create_dev_secret(data_dir)
    # The dev server is plaintext: the TLS settings of the environment (a production's) are
    # left out, here and for the children, which connect as production does otherwise.
    settings = Settings(data_dir=data_dir, temporal_address=f"{HOST}:{temporal_port}",
                        temporal_ui_url=f"http://{HOST}:{ui_port}", api_port=port,
                        **{name: None for name in TLS_SETTINGS if name != "temporal_tls"},
                        temporal_tls=False)
    sock = _listen(port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    log = data_dir / "temporal.log"
    with log.open("ab") as log_file:
        temporal = await asyncio.create_subprocess_exec(
            temporal_cli(), "server", "start-dev", "--db-filename", str(data_dir / "temporal.db"),
            "--ip", HOST, "--port", str(temporal_port), "--ui-port", str(ui_port),
            "--log-level", "warn", "--ui-disable-news-fetch", *DEV_SERVER_STORE_FLAGS,
            stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True, preexec_fn=_die_with_parent)
    tls_vars = {f"WORKSESSION_{name.upper()}{suffix}" for name in TLS_SETTINGS
                for suffix in ("", "_FILE")}
    env = {**{k: v for k, v in os.environ.items() if k not in tls_vars},
           "WORKSESSION_DATA_DIR": str(data_dir),
           "WORKSESSION_TEMPORAL_ADDRESS": settings.temporal_address,
           "WORKSESSION_TEMPORAL_UI_URL": settings.temporal_ui_url,
           "WORKSESSION_API_HOST": HOST, "WORKSESSION_API_PORT": str(port),
           "WORKSESSION_JWT_SECRET": secret.decode(),
           # webhooks to a receiver on this machine, over plain http (CONTRACT.md)
           "WORKSESSION_WEBHOOK_ALLOW_INSECURE": "true",
           "WORKSESSION_LOG_LEVEL": os.environ.get("WORKSESSION_LOG_LEVEL", "warning")}
    cli = [sys.executable, "-m", "worksession.cli"]
    worker = Child("worker", [*cli, "worker"],
                   {**env, "WORKSESSION_WORKER_METRICS_PORT": str(worker_metrics_port)})
    apis = [Child(f"API process {i + 1}" if api_processes > 1 else "API",
                  [*cli, "api", "--fd", str(sock.fileno())],
                  {**env, "WORKSESSION_METRICS_PORT": str(m)}, (sock.fileno(),))
            for i, m in enumerate(api_metrics)]
    children: list[Child] = []
    try:
        client = await _until_stopped(stop, _wait_for_temporal(temporal, settings, log))
        if client is None:
            return 0
        await register_search_attributes(client, settings.temporal_namespace)
        await upgrade_async(settings.db_url)
        for child in (worker, *apis):
            await child.start()
            children.append(child)
        ready = await _until_stopped(stop, _until_ready(client, settings, children))
        if ready is None:
            return 0
        _banner(settings, data_dir, secret, port, api_processes, api_metrics,
                worker_metrics_port)
        await stop.wait()
        return 0
    finally:
        # In order: the API stops taking requests and finishes those it has, the worker
        # finishes its tasks, then Temporal goes.
        await asyncio.gather(*(c.stop() for c in apis))
        await worker.stop()
        sock.close()
        await _stop_process(temporal)
        print("worksession dev: stopped", flush=True)


async def _until_ready(client: Client, settings: Settings, children: list[Child]) -> bool:
    """The banner promises a ready stack: the API answers and Temporal sees the worker
    polling. A child that dies on its way up ends the start with its exit code."""
    deadline = asyncio.get_running_loop().time() + CHILD_START_TIMEOUT
    api_up = polling = False
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{settings.api_port}",
                                 timeout=2) as http:
        while not (api_up and polling):
            for c in children:
                if c.exited is not None:
                    raise DevStackError(f"the {c.name} exited ({c.exited}) while starting; "
                                        "its output is above")
            if asyncio.get_running_loop().time() > deadline:
                raise DevStackError(f"the stack was not ready in {CHILD_START_TIMEOUT:.0f} s")
            if not api_up:
                with contextlib.suppress(httpx.HTTPError):
                    api_up = (await http.get("/healthz")).status_code == 200
            if not polling:
                polling = await worker_polls(client, settings.task_queue)
            await asyncio.sleep(0.1)
    return True


async def _until_stopped(stop: asyncio.Event, aw: object) -> object | None:
    """Await `aw` unless a stop signal comes first (then None)."""
    task = asyncio.ensure_future(aw)  # type: ignore[arg-type]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def _stop_process(proc: asyncio.subprocess.Process | None) -> None:
    if proc is None or proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _flag(name: str) -> str:
    return {"API": "port", "Temporal": "temporal-port", "Temporal UI": "ui-port",
            "API metrics": "metrics-port", "worker metrics": "worker-metrics-port"}[name]


def _metrics_lines(api_metrics: list[int], worker_metrics: int) -> str:
    api = " ".join(f"http://{HOST}:{m}/metrics" for m in api_metrics if m) or "off"
    worker = f"http://{HOST}:{worker_metrics}/metrics" if worker_metrics else "off"
    return f"  Metrics:      {api} (API)\n                {worker} (worker)"


# The development users' names (the `name` claim of the tokens `dev` prints).
DEV_NAMES = {"worker": "Dev Worker", "supervisor": "Dev Supervisor"}


def dev_users(data_dir: Path) -> dict[str, str]:
    """Stable development users, so the printed tokens name the same people each run."""
    path = data_dir / "dev-users.json"
    if path.exists():
        return json.loads(path.read_text())
    users = {"worker": str(uuid4()), "supervisor": str(uuid4()), "admin": str(uuid4())}
    path.write_text(json.dumps(users, indent=2) + "\n")
    return users


def _banner(settings: Settings, data_dir: Path, secret: bytes, port: int,
            api_processes: int, api_metrics: list[int], worker_metrics: int) -> None:
    users = dev_users(data_dir)
    ttl = timedelta(hours=12)
    worker_token = mint(secret, "worker", UUID(users["worker"]), ttl,
                        name=DEV_NAMES["worker"])
    supervisor_token = mint(secret, "supervisor", UUID(users["supervisor"]), ttl,
                            name=DEV_NAMES["supervisor"])
    console = f"http://{HOST}:{port}/app/"
    # the console links to the Temporal UI on this host's port 8233 unless told otherwise
    ui = "" if settings.temporal_ui_url.endswith(":8233") else \
        f"&temporal_ui={settings.temporal_ui_url}"
    apis = "1 API process" if api_processes == 1 else f"{api_processes} API processes"
    print(f"""
Work Session Service is running (data in {data_dir}; {apis}, 1 worker, Temporal dev server)
  API docs:     http://{HOST}:{port}/docs
  Temporal UI:  {settings.temporal_ui_url}
  Ready check:  http://{HOST}:{port}/readyz
{_metrics_lines(api_metrics, worker_metrics)}

  Worker token ({DEV_NAMES['worker']}, user {users['worker']}, 12 h):
    {worker_token}
  Supervisor token ({DEV_NAMES['supervisor']}, user {users['supervisor']}, 12 h):
    {supervisor_token}
  Web console sign-in links:
    worker:      {console}#token={worker_token}
    supervisor:  {console}#token={supervisor_token}{ui}
  More: worksession token --role worker|supervisor|admin [--name NAME] --data-dir {data_dir}

Ctrl-C stops everything.""", flush=True)
