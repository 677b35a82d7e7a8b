"""The API and a worker served by uvicorn over real HTTP, from a thread with an event loop of
its own (see tests/test_api_fuzz.py for why), on a fresh database and task queue of its own.
For the tests that need a real socket: fuzzing, and the front door (shedding, uploads)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import uvicorn
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from api.app import create_app
from api.server import config as server_config
from persistence.db import Database
from persistence.migrate import upgrade_async
from tests.conftest import SECRET, fresh_database
from worker import build_worker
from worksession.settings import Settings


class _Server(uvicorn.Server):
    """uvicorn, telling the test thread when it listens."""

    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self.started_event = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.started_event.set()


class LiveServer:
    """`settings`: overrides of the service's settings (e.g. `max_in_flight`)."""

    def __init__(self, temporal_target: str, label: str, **settings: Any) -> None:
        self.temporal_target = temporal_target
        self.label = label
        self.overrides = settings
        self.task_queue = f"work-sessions-{label}-{uuid.uuid4()}"
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))  # a free port, held until uvicorn takes it over
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.server: uvicorn.Server | None = None
        self.database_url = ""
        self.data_dir = Path()
        self.thread = threading.Thread(target=self._run, name=f"{label}-api", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to the fixture, which fails the tests
            self.error = e
        finally:
            self.ready.set()

    async def _main(self) -> None:
        async with fresh_database(self.label) as url:
            self.database_url = url
            await upgrade_async(url)
            client = await Client.connect(self.temporal_target,
                                          data_converter=pydantic_data_converter)
            db = Database(url)
            scratch = tempfile.mkdtemp(prefix=f"worksession-{self.label}-data-")
            self.data_dir = Path(scratch)
            settings = Settings(**{"database_url": url, "task_queue": self.task_queue,
                                   "request_timeout_seconds": 10,
                                   "idle_timeout": timedelta(hours=8),
                                   "data_dir": self.data_dir,  # evidence files, by default
                                   **self.overrides})
            app = create_app(settings, jwt_secret=SECRET, client=client, db=db)
            self.server = _Server(server_config(app, log_level="warning", lifespan="on",
                                                access_log=False), self.ready)
            try:
                async with build_worker(client, db, self.task_queue):
                    await self.server.serve(sockets=[self.sock])
            finally:
                await db.dispose()

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(120):
            raise TimeoutError("the API server did not start within 120 s")
        if self.error is not None or self.server is None or not self.server.started:
            raise RuntimeError("the API server failed to start") from self.error

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()
        assert not self.thread.is_alive(), "the API server did not stop"
        if self.data_dir != Path():
            shutil.rmtree(self.data_dir, ignore_errors=True)
