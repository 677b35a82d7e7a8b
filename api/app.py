"""The FastAPI application."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from temporalio.client import Client

from api import problems
from api.auth import Authenticator
from api.front_door import NEVER_SHED, FrontDoor
from api.metrics import RequestMetrics
from api.oidc import IdentityProvider
from api.routers import (
    audit,
    evidence,
    health,
    nonconformances,
    ops,
    people,
    sessions,
    sops,
    webhooks,
)
from api.schemas import RENDER
from api.web import mount_web
from application.context import Context
from application.metrics import NoMeter
from application.ops import keep_gauges
from orchestration.client import SessionWorkflows
from orchestration.webhooks import WebhookDeliveries
from persistence import files
from persistence.db import Database
from persistence.uow import SqlStore
from persistence.webhooks import SecretBox
from worksession import tracing
from worksession.metrics import PrometheusMeter
from worksession.settings import Settings
from worksession.temporal import connect
from worksession.webhook_http import resolve

log = logging.getLogger("worksession.api")

PLANNER_STATISTICS_EVERY_SECONDS = 6 * 3600
UPLOADS = re.compile(r"/api/v1/sessions/[^/]+/evidence")  # bodies streamed, not buffered


async def _keep_planner_statistics(db: Database) -> None:
    """Soon after start, then every six hours (the data's shape changes slowly)."""
    await asyncio.sleep(30)
    while True:
        try:
            await db.refresh_planner_statistics()
        except Exception:  # the service works without; the next round tries again
            log.warning("could not refresh the database's planner statistics", exc_info=True)
        await asyncio.sleep(PLANNER_STATISTICS_EVERY_SECONDS)


def identity_provider(settings: Settings) -> IdentityProvider | None:
    if not settings.oidc_issuer:
        return None
    assert settings.jwt_audience is not None  # Settings refuses one without the other
    return IdentityProvider(issuer=settings.oidc_issuer, audience=settings.jwt_audience,
                            jwks_url=settings.jwks_url, role_claim=settings.role_claim,
                            role_map=settings.role_map)


def create_app(settings: Settings, *, jwt_secret: bytes | None, client: Client | None = None,
               db: Database | None = None, meter: PrometheusMeter | None = None,
               tracer_provider: TracerProvider | None = None) -> FastAPI:
    """`client`/`db` may be handed in (tests); otherwise they are made from `settings`.
    With a `meter`, the app counts its requests and sessions there and keeps the fleet
    gauges fresh (serving it is the caller's: `worksession api`). With a
    `tracer_provider`, requests are traced, and so are the client and database it makes
    (one handed in is traced by whoever made it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_db = db is None
        database = db or Database(settings.db_url)
        if own_db and tracer_provider is not None:
            tracing.instrument_database(database, tracer_provider)
        temporal = client or await connect(
            settings, lazy=True, plugins=tracing.temporal_plugins(tracer_provider))
        evidence_files = files.for_settings(settings)
        try:  # scratch files of uploads a killed process left (never files under a hash)
            await evidence_files.sweep()
        except OSError:
            log.warning("could not sweep the evidence store's scratch space", exc_info=True)
        key = settings.webhook_key_material(jwt_secret)
        app.state.ctx = Context(store=SqlStore(database, SecretBox(key) if key else None),
                                workflows=SessionWorkflows(
            temporal, settings.task_queue, settings.request_timeout_seconds,
            settings.idle_timeout, settings.escalate_after_failures,
            write_behind=settings.write_behind, nc_deadlines=settings.nc_deadlines),
            meter=meter or NoMeter(),
            files=evidence_files, max_evidence_bytes=settings.max_evidence_bytes,
            signature_max_age=settings.signature_max_age, render=RENDER,
            deliveries=WebhookDeliveries(
                temporal, settings.task_queue, settings.request_timeout_seconds,
                heartbeat=settings.webhook_heartbeat, retry_first=settings.webhook_retry_first,
                retry_most=settings.webhook_retry_most),
            webhook_allow_insecure=settings.webhook_allow_insecure, resolve=resolve,
            nc_deadlines=settings.nc_deadlines)
        background = [asyncio.create_task(_keep_planner_statistics(database))] if own_db \
            else []
        if meter is not None and settings.metrics_refresh.total_seconds() > 0:
            background.append(asyncio.create_task(
                keep_gauges(app.state.ctx, meter, settings.metrics_refresh)))
        try:
            yield
        finally:
            app.state.ctx = None
            for task in background:
                task.cancel()
            await evidence_files.close()
            if own_db:
                await database.dispose()

    app = FastAPI(title="Work Session Service", version="1.0.0", lifespan=lifespan,
                  redirect_slashes=False,
                  description="Walks frontline workers through SOPs step by step, with a "
                              "safety check at every step. Errors are RFC 9457 problems.")
    app.state.ctx = None
    app.state.auth = Authenticator(jwt_secret, settings.jwt_algorithms,
                                   identity_provider(settings))
    # Every inner wait has its own bound; this caps their sum (see api.routing).
    app.state.request_deadline = settings.request_timeout_seconds + 5
    app.state.upload_idle = settings.request_timeout_seconds  # between two chunks of a file
    problems.install(app)
    for r in (health.router, sops.router, sessions.router, evidence.uploads, evidence.files,
              audit.router, ops.router, people.router, webhooks.router,
              nonconformances.router):
        app.include_router(r)
    mount_web(app, settings)
    app.add_middleware(FrontDoor, max_body=settings.max_body_bytes,
                       max_in_flight=settings.max_in_flight,
                       admission_wait_seconds=settings.admission_wait.total_seconds(),
                       retry_after_seconds=settings.retry_after_seconds,
                       streamed=UPLOADS, max_streamed=settings.max_evidence_bytes,
                       max_streamed_in_flight=settings.max_uploads_in_flight)
    if meter is not None:  # outside the front door: what it sheds is counted too
        app.add_middleware(RequestMetrics, registry=meter.registry)
    if tracer_provider is not None:
        tracing.instrument_app(app, tracer_provider)
    problems.document(app, NEVER_SHED)
    return app
