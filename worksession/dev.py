"""`worksession dev`: a Temporal dev server (persisted to SQLite under the data dir), the
worker and the API, in one command; SIGINT/SIGTERM stop all of it and leave no child."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import uvicorn
from temporalio.client import Client

from api.app import create_app
from persistence.db import Database
from persistence.migrate import upgrade_async
from worker import build_worker
from worksession.binaries import temporal_cli
from worksession.settings import Settings
from worksession.temporal import (
    DEV_SERVER_STORE_FLAGS,
    connect,
    register_search_attributes,
    worker_polls,
)
from worksession.tokens import load_or_create_dev_secret, mint

HOST = "127.0.0.1"
TEMPORAL_START_TIMEOUT = 60.0


class DevStackError(Exception):
    pass


class _Server(uvicorn.Server):
    """Signals are handled by the dev stack, which stops every part in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((HOST, port)) == 0


def _die_with_parent() -> None:
    """Linux: the Temporal server gets SIGTERM if this process dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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


async def run_dev(data_dir: Path, port: int, temporal_port: int, ui_port: int) -> int:
    for name, p in (("API", port), ("Temporal", temporal_port), ("Temporal UI", ui_port)):
        if _listening(p):
            raise DevStackError(f"port {p} ({name}) is already in use; stop what listens "
                                f"there or pick another with --{_flag(name)}")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = load_or_create_dev_secret(data_dir)
    settings = Settings(data_dir=data_dir, temporal_address=f"{HOST}:{temporal_port}",
                        temporal_ui_url=f"http://{HOST}:{ui_port}", api_port=port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    log = data_dir / "temporal.log"
    with log.open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            temporal_cli(), "server", "start-dev", "--db-filename", str(data_dir / "temporal.db"),
            "--ip", HOST, "--port", str(temporal_port), "--ui-port", str(ui_port),
            "--log-level", "warn", "--ui-disable-news-fetch", *DEV_SERVER_STORE_FLAGS,
            stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True, preexec_fn=_die_with_parent)
    db: Database | None = None
    try:
        client = await _until_stopped(stop, _wait_for_temporal(proc, settings, log))
        if client is None:
            return 0
        await register_search_attributes(client, settings.temporal_namespace)
        await upgrade_async(settings.db_url)
        db = Database(settings.db_url)
        app = create_app(settings, jwt_secret=secret, client=client, db=db)
        server = _Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning",
                                        lifespan="on"))
        worker = build_worker(client, db, settings.task_queue, settings.workflow_cache_size)
        async with worker:
            serving = asyncio.create_task(server.serve())
            while not server.started and not serving.done():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            if serving.done():
                serving.result()
                raise DevStackError(f"the API could not listen on port {port}")
            await _until_worker_polls(client, settings.task_queue)
            _banner(settings, data_dir, secret, port)
            await _until_stopped(stop, asyncio.shield(serving))
            server.should_exit = True
            await serving
        print("worksession dev: stopped", flush=True)
        return 0
    finally:
        if db is not None:
            await db.dispose()
        await _stop_process(proc)


async def _until_worker_polls(client: Client, task_queue: str, within: float = 15) -> None:
    """The banner promises a ready stack: wait until Temporal sees the worker polling."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline and not await worker_polls(  # noqa: ASYNC110
            client, task_queue):
        await asyncio.sleep(0.1)


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


async def _stop_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        proc.kill()
        await proc.wait()


def _flag(name: str) -> str:
    return {"API": "port", "Temporal": "temporal-port", "Temporal UI": "ui-port"}[name]


def _banner(settings: Settings, data_dir: Path, secret: bytes, port: int) -> None:
    from worksession.cli import dev_users

    users = dev_users(data_dir)
    ttl = timedelta(hours=12)
    worker_token = mint(secret, "worker", UUID(users["worker"]), ttl)
    supervisor_token = mint(secret, "supervisor", UUID(users["supervisor"]), ttl)
    console = f"http://{HOST}:{port}/app/"
    # the console links to the Temporal UI on this host's port 8233 unless told otherwise
    ui = "" if settings.temporal_ui_url.endswith(":8233") else \
        f"&temporal_ui={settings.temporal_ui_url}"
    print(f"""
Work Session Service is running (data in {data_dir})
  API docs:     http://{HOST}:{port}/docs
  Temporal UI:  {settings.temporal_ui_url}
  Ready check:  http://{HOST}:{port}/readyz

  Worker token (user {users['worker']}, 12 h):
    {worker_token}
  Supervisor token (user {users['supervisor']}, 12 h):
    {supervisor_token}
  Web console sign-in links:
    worker:      {console}#token={worker_token}
    supervisor:  {console}#token={supervisor_token}{ui}
  More: worksession token --role worker|supervisor|admin --data-dir {data_dir}

Ctrl-C stops everything.""", flush=True)
