"""The FastAPI application."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from temporalio.client import Client

from api import problems
from api.routers import audit, health, ops, sessions, sops
from api.web import mount_web
from application.context import Context
from orchestration.client import SessionWorkflows
from persistence.db import Database
from worksession.settings import Settings
from worksession.temporal import connect

log = logging.getLogger("worksession.api")


class RequestGuard:
    """Pure ASGI middleware: a request id on every request, and a bound on the body size
    (413 problem) so no client can make the API buffer an unbounded body."""

    def __init__(self, app: Any, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        declared = headers.get(b"content-length")
        try:
            if declared is not None and int(declared) > self.max_body:
                return await self._reject(send, rid)
        except ValueError:
            return await self._reject(send, rid)
        if declared is None and scope["method"] in ("POST", "PUT", "PATCH"):
            # A streamed body of unknown length: read it here, bounded, then replay it.
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return None  # the client went away
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_body:
                    return await self._reject(send, rid)
                more = message.get("more_body", False)
            body, replayed = b"".join(chunks), False

            async def replay() -> Any:
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            receive = replay

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        await self.app(scope, receive, send_with_id)

    async def _reject(self, send: Any, rid: str) -> None:
        resp = problems.problem(413, f"request body larger than {self.max_body} bytes",
                                headers={"x-request-id": rid})
        await send({"type": "http.response.start", "status": 413,
                    "headers": resp.raw_headers})
        await send({"type": "http.response.body", "body": resp.body})


def create_app(settings: Settings, *, jwt_secret: bytes, client: Client | None = None,
               db: Database | None = None) -> FastAPI:
    """`client`/`db` may be handed in (tests); otherwise they are made from `settings`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_db = db is None
        database = db or Database(settings.db_url)
        temporal = client or await connect(settings, lazy=True)
        app.state.ctx = Context(db=database, workflows=SessionWorkflows(
            temporal, settings.task_queue, settings.request_timeout_seconds,
            settings.idle_timeout, settings.escalate_after_failures,
            write_behind=settings.write_behind))
        try:
            yield
        finally:
            app.state.ctx = None
            if own_db:
                await database.dispose()

    app = FastAPI(title="Work Session Service", version="1.0.0", lifespan=lifespan,
                  redirect_slashes=False,
                  description="Walks frontline workers through SOPs step by step, with a "
                              "safety check at every step. Errors are RFC 9457 problems.")
    app.state.ctx = None
    app.state.jwt_secret = jwt_secret
    app.state.jwt_algorithms = list(settings.jwt_algorithms)
    # Every inner wait has its own bound; this caps their sum (see api.routing).
    app.state.request_deadline = settings.request_timeout_seconds + 5
    problems.install(app)
    for r in (health.router, sops.router, sessions.router, audit.router, ops.router):
        app.include_router(r)
    mount_web(app)
    app.add_middleware(RequestGuard, max_body=settings.max_body_bytes)
    problems.document(app)
    return app
