"""The whole service as real subprocesses on free loopback ports, so any part can be killed
and restarted: a Temporal dev server (`temporal server start-dev --db-filename …`), the API
(`worksession api`) and the worker (`worksession worker`), with a SQLite file or a fresh
PostgreSQL database. Every process started here is stopped on exit, even on failure, and
dies with this process if it is killed (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from faults.harness import free_port
from persistence.migrate import upgrade_async
from worksession.binaries import temporal_cli
from worksession.settings import Settings
from worksession.temporal import DEV_SERVER_STORE_FLAGS, connect, register_search_attributes
from worksession.tokens import mint

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("WORKSESSION_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432")
NAMESPACE = "default"
START_TIMEOUT = 90.0

# Process groups still alive, killed at interpreter exit whatever happened (last resort).
_LIVE_GROUPS: set[int] = set()


@atexit.register
def _kill_leftovers() -> None:
    for pgid in list(_LIVE_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    _LIVE_GROUPS.clear()


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it if the harness dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class StackError(Exception):
    pass


class Proc:
    """One subprocess in its own process group, its output appended to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} start {self.name}\n".encode())
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, cwd=str(REPO), stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=out, start_new_session=True, preexec_fn=_die_with_parent)
        _LIVE_GROUPS.add(self.proc.pid)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def wait(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        self.kill(signal.SIGKILL)  # anything it left in its group
        _LIVE_GROUPS.discard(self.proc.pid)
        return code

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.kill(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.kill(signal.SIGKILL)
        await self.wait()

    def tail(self, chars: int = 1500) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class WriteOutage:
    """The database refuses every write to the read model while reads go on: a lock held
    by another session (SQLite: a held `BEGIN EXCLUSIVE`; PostgreSQL: `LOCK TABLE
    work_sessions, session_checks IN EXCLUSIVE MODE` in a held transaction). The server
    itself keeps running (other things use it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None

    async def begin(self) -> None:
        if self.url.startswith("sqlite"):
            def lock() -> sqlite3.Connection:
                conn = sqlite3.connect(self.url.split("///", 1)[1], isolation_level=None,
                                       timeout=30, check_same_thread=False)
                conn.execute("BEGIN EXCLUSIVE")
                return conn
            self._sqlite = await asyncio.to_thread(lock)
        else:
            import asyncpg

            self._pg = await asyncpg.connect(self.url.replace("postgresql+asyncpg",
                                                              "postgresql"))
            await self._pg.execute("BEGIN; LOCK TABLE work_sessions, session_checks "
                                   "IN EXCLUSIVE MODE")

    async def end(self) -> None:
        if self._sqlite is not None:
            conn, self._sqlite = self._sqlite, None
            await asyncio.to_thread(lambda: (conn.execute("ROLLBACK"), conn.close()))
        if self._pg is not None:
            conn, self._pg = self._pg, None
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK")
            await conn.close()


class Stack:
    """`async with Stack(...) as stack:` – everything up; on exit everything stopped,
    the PostgreSQL database dropped and the data dir removed (kept with `keep=True`, and
    when the block fails)."""

    def __init__(self, database: str = "sqlite", *, keep: bool = False,
                 say: Callable[[str], None] | None = None, label: str = "faults") -> None:
        if database not in ("sqlite", "postgresql"):
            raise ValueError("database must be sqlite or postgresql")
        self.database = database
        self.keep = keep
        self.say = say or (lambda _msg: None)
        self.dir = Path(tempfile.mkdtemp(prefix=f"worksession-{label}-"))
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.temporal_port = 0  # chosen when each part starts
        self.api_port = 0
        # Metrics on, as in production, on ports of this stack's own.
        self.metrics_port, self.worker_metrics_port = free_port(), free_port()
        self.task_queue = f"faults-{uuid.uuid4().hex[:8]}"
        self.secret = secrets.token_urlsafe(48).encode()
        self.pg_name: str | None = None
        if database == "postgresql":
            self.pg_name = f"worksession_faults_{uuid.uuid4().hex[:12]}"
            self.db_url = f"{PG_ADMIN_URL}/{self.pg_name}"
        else:
            self.db_url = f"sqlite+aiosqlite:///{self.dir / 'worksession.db'}"
        self.temporal: Proc | None = None
        self.api: Proc | None = None
        self.worker: Proc | None = None
        self.client: Client | None = None
        self.worker_kills = 0
        self.worker_starts = 0
        self.temporal_restarts = 0
        self.worker_exits: list[int] = []  # exit codes of workers that died on their own
        self.extra_env: dict[str, str] = {}  # a scenario's own settings, for every part

    # ---- configuration -----------------------------------------------------------------
    @property
    def temporal_address(self) -> str:
        return f"{HOST}:{self.temporal_port}"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSESSION_")}
        env.update({
            "WORKSESSION_DATA_DIR": str(self.dir),
            "WORKSESSION_DATABASE_URL": self.db_url,
            "WORKSESSION_TEMPORAL_ADDRESS": self.temporal_address,
            "WORKSESSION_TEMPORAL_NAMESPACE": NAMESPACE,
            "WORKSESSION_TASK_QUEUE": self.task_queue,
            "WORKSESSION_JWT_SECRET": self.secret.decode(),
            "WORKSESSION_API_HOST": HOST,
            "WORKSESSION_API_PORT": str(self.api_port),
            "WORKSESSION_METRICS_PORT": str(self.metrics_port),
            "WORKSESSION_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            "WORKSESSION_LOG_LEVEL": "warning",
            # A run writes what its API could not within seconds, not ten minutes, so that
            # an outage shows stuck sessions (and their recovery) within a scenario's time.
            "WORKSESSION_WRITE_BEHIND": "PT5S",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def token(self, role: str, sub: uuid.UUID | None = None) -> str:
        return mint(self.secret, role, sub or uuid.uuid4(), timedelta(hours=4))

    # ---- life cycle ------------------------------------------------------------------------
    async def __aenter__(self) -> Stack:
        try:
            await self.start()
        except BaseException:
            await self.close(failed=True)
            raise
        return self

    async def __aexit__(self, exc_type: Any, *_: object) -> None:
        await self.close(failed=exc_type is not None)

    async def start(self) -> None:
        t0 = time.monotonic()
        if self.pg_name:
            await self._pg_admin(f'CREATE DATABASE "{self.pg_name}"')
        await self._on_a_free_port(self.start_temporal, "temporal_port")
        added = await register_search_attributes(self.client, NAMESPACE)
        await upgrade_async(self.db_url)
        await self._on_a_free_port(self._start_api, "api_port")
        await self.start_worker()
        await self._wait_api("/readyz")
        self.say(f"stack up in {time.monotonic() - t0:.1f} s: Temporal {self.temporal_address},"
                 f" API {self.api_url}, {self.database} database, search attributes "
                 f"{'registered' if added else 'present'}, data in {self.dir}")

    async def _on_a_free_port(self, start: Callable[[], Awaitable[None]], attr: str) -> None:
        """A port found free may be taken before the child binds it (the Temporal dev
        server opens several ports of its own): then try another one."""
        for attempt in range(5):
            setattr(self, attr, free_port())
            try:
                await start()
                return
            except StackError as e:
                if "address already in use" not in str(e) or attempt == 4:
                    raise

    async def close(self, failed: bool = False) -> None:
        for p in (self.worker, self.api, self.temporal):
            if p is not None:
                with contextlib.suppress(Exception):
                    await p.stop(grace=10)
        self.worker = self.api = self.temporal = None
        self.client = None
        if self.pg_name:
            with contextlib.suppress(Exception):
                await self._pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            self.pg_name = None
        if failed or self.keep:
            self.say(f"logs kept in {self.logs}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    async def _pg_admin(self, sql: str) -> None:
        import asyncpg

        dsn = PG_ADMIN_URL.replace("postgresql+asyncpg", "postgresql") + "/postgres"
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    # ---- Temporal dev server ------------------------------------------------------------
    def _temporal_argv(self) -> list[str]:
        return [temporal_cli(), "server", "start-dev",
                "--db-filename", str(self.dir / "temporal.db"),
                "--ip", HOST, "--port", str(self.temporal_port), "--headless",
                "--http-port", str(free_port()), "--metrics-port", str(free_port()),
                "--log-level", "warn", *DEV_SERVER_STORE_FLAGS]

    async def start_temporal(self) -> None:
        self.temporal = Proc("temporal", self._temporal_argv(), self.env,
                             self.logs / "temporal.log")
        await self.temporal.start()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if not self.temporal.running:
                await self.temporal.wait()
                raise StackError(f"the Temporal dev server exited:\n{self.temporal.tail()}")
            try:
                client = await asyncio.wait_for(connect(self._settings()), 5)
                await client.service_client.check_health()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise StackError("the Temporal dev server did not come up") from None
                await asyncio.sleep(0.25)
        if self.client is None:
            self.client = client

    async def stop_temporal(self, sig: int = signal.SIGTERM) -> None:
        assert self.temporal is not None
        if sig == signal.SIGKILL:
            self.temporal.kill(signal.SIGKILL)
            await self.temporal.wait()
        else:
            await self.temporal.stop(grace=20)

    async def restart_temporal(self, sig: int = signal.SIGTERM, down_for: float = 0.0) -> float:
        """Stop the dev server and start it again on the same port with the same database
        file; returns how long it was unreachable."""
        t0 = time.monotonic()
        await self.stop_temporal(sig)
        if down_for:
            await asyncio.sleep(down_for)
        await self.start_temporal()
        self.temporal_restarts += 1
        return time.monotonic() - t0

    def _settings(self) -> Settings:
        return Settings(temporal_address=self.temporal_address, temporal_namespace=NAMESPACE,
                        task_queue=self.task_queue, database_url=self.db_url)

    # ---- worker ----------------------------------------------------------------------------
    async def start_worker(self, wait: bool = True) -> None:
        if self.worker is not None and self.worker.running:
            raise StackError("a worker is already running")
        self.worker = Proc("worker", [str(BIN / "worksession"), "worker"], self.env,
                           self.logs / "worker.log")
        await self.worker.start()
        self.worker_starts += 1
        if wait:
            await self.wait_worker_polling()

    def kill_worker(self) -> int | None:
        """SIGKILL the worker (no clean shutdown of any kind); returns its pid."""
        if self.worker is None or not self.worker.running:
            return None
        pid = self.worker.pid
        self.worker.kill(signal.SIGKILL)
        self.worker_kills += 1
        return pid

    async def restart_worker_after_kill(self, delay: float = 0.0) -> None:
        assert self.worker is not None
        await self.worker.wait()
        if delay:
            await asyncio.sleep(delay)
        await self.start_worker(wait=False)

    async def ensure_worker(self) -> bool:
        """Like a process supervisor: start the worker again if it exited by itself.
        Returns True when it had to."""
        if self.worker is not None and self.worker.running:
            return False
        if self.worker is not None and self.worker.proc is not None:
            self.worker_exits.append(await self.worker.wait())
        await self.start_worker(wait=False)
        return True

    async def wait_worker_polling(self, within: float = START_TIMEOUT) -> None:
        """Until the current worker process polls the workflow task queue."""
        assert self.worker is not None and self.client is not None
        deadline = time.monotonic() + within
        ident = f"{self.worker.pid}@"
        while True:
            if not self.worker.running:
                raise StackError(f"the worker exited:\n{self.worker.tail()}")
            try:
                resp = await asyncio.wait_for(
                    self.client.workflow_service.describe_task_queue(DescribeTaskQueueRequest(
                        namespace=NAMESPACE, task_queue=TaskQueue(name=self.task_queue),
                        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)), 5)
                if any(p.identity.startswith(ident) for p in resp.pollers):
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"the worker does not poll:\n{self.worker.tail()}")
            await asyncio.sleep(0.2)

    # ---- API -------------------------------------------------------------------------------
    async def _start_api(self) -> None:
        self.api = Proc("api", [str(BIN / "worksession"), "api"], self.env,
                        self.logs / "api.log")
        await self.api.start()
        await self._wait_api("/healthz")

    async def _wait_api(self, path: str) -> None:
        assert self.api is not None
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient(base_url=self.api_url, timeout=5) as http:
            while True:
                if not self.api.running:
                    await self.api.wait()
                    raise StackError(f"the API exited:\n{self.api.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(path)).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise StackError(f"the API answers no 200 on {path}:\n{self.api.tail()}")
                await asyncio.sleep(0.2)

    # ---- the `worksession` command ---------------------------------------------------------
    async def cli(self, *args: str, within: float = 60.0) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "worksession"), *args, env=self.env, cwd=str(REPO),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, preexec_fn=_die_with_parent)
        _LIVE_GROUPS.add(proc.pid)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), within)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise
        finally:
            _LIVE_GROUPS.discard(proc.pid)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
