"""Traces: one check through the API is one trace, from the HTTP handler through the
Temporal client and the workflow's update (run by the worker) to the SQL that writes it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from api.app import create_app
from persistence.db import Database
from tests.conftest import SECRET, make_confirmed_sop
from worker import build_worker
from worksession import tracing
from worksession.settings import Settings


@pytest.fixture(scope="module")
def spans_kept() -> tuple[TracerProvider, InMemorySpanExporter]:
    """The process's tracer provider, as `worksession api` and `worksession worker` make it
    (a global one can be set once per process), its spans kept in memory, not sent."""
    exporter = InMemorySpanExporter()
    provider = tracing.tracer_provider(Settings(), "worksession-test", exporter=exporter)
    assert provider is not None
    return provider, exporter


@pytest.fixture
async def traced(spans_kept, temporal_env, database_url, db, settings: Settings):
    """The API and a worker built as the service builds them with tracing on."""
    provider, exporter = spans_kept
    client = await Client.connect(
        temporal_env.client.service_client.config.target_host,
        data_converter=pydantic_data_converter, plugins=tracing.temporal_plugins(provider))
    database = Database(database_url)
    tracing.instrument_database(database, provider)
    app = create_app(settings, jwt_secret=SECRET, client=client, db=database,
                     tracer_provider=provider)
    try:
        async with build_worker(client, database, settings.task_queue), \
                app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
                yield http, provider, exporter
    finally:
        SQLAlchemyInstrumentor().uninstrument()
        await database.dispose()


async def test_one_check_is_one_trace_from_the_api_through_the_workflow_to_the_database(
        traced, supervisor, worker_user):
    http, provider, exporter = traced
    sop = await make_confirmed_sop(http, supervisor)
    session = (await http.post("/api/v1/sessions", json={"sop_id": sop["id"]},
                               headers=worker_user.h)).json()
    provider.force_flush()  # the spans before are not this check's
    exporter.clear()
    request_id = f"trace-{uuid.uuid4()}"
    r = await http.post(f"/api/v1/sessions/{session['id']}/checks",
                        headers={**worker_user.h, "X-Request-ID": request_id},
                        json={"step_id": session["current_step_id"], "result": "passed"})
    assert r.status_code == 200, r.text

    provider.force_flush()
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind is SpanKind.SERVER and s.name.startswith("POST")]
    assert server.name == "POST /api/v1/sessions/{session_id}/checks"
    assert server.attributes["http.response.status_code" if "http.response.status_code"
                             in server.attributes else "http.status_code"] == 200
    trace_ids = {s.context.trace_id for s in spans}
    assert trace_ids == {server.context.trace_id}, "one request, one trace"

    names = [s.name for s in spans]
    # the API's call to Temporal and the worker's run of the update, in that trace
    assert "StartWorkflowUpdate:submit_check" in names, names
    assert any(n in names for n in ("HandleUpdate:submit_check",
                                    "ValidateUpdate:submit_check")), names
    # the write: the check's row and the session's, with its audit entry
    statements = [str(s.attributes.get("db.statement") or s.attributes.get("db.query.text")
                      or "") for s in spans if s.kind is SpanKind.CLIENT
                  and ("db.system" in s.attributes or "db.system.name" in s.attributes)]
    assert any(q.startswith("INSERT INTO session_checks") for q in statements), statements
    assert any(q.startswith("INSERT INTO audit_log") for q in statements), statements
    assert any(q.startswith("UPDATE work_sessions") for q in statements), statements
    by_id: dict[int, Any] = {s.context.span_id: s for s in spans}

    def root(span: Any) -> Any:
        while span.parent is not None and span.parent.span_id in by_id:
            span = by_id[span.parent.span_id]
        return span
    assert {root(s).context.span_id for s in spans} == {server.context.span_id}
