"""Traces (OpenTelemetry), on only when `WORKSESSION_OTLP_ENDPOINT` is set: then one trace
per request runs from the API's HTTP handler through the Temporal client, the workflow's
update (or start) and its activities, to each SQL statement, exported over OTLP/HTTP. Off,
nothing is instrumented at all: no middleware, no interceptor, no cost.

All of it is the maintained instrumentation: FastAPI's and SQLAlchemy's OpenTelemetry
packages, and the Temporal SDK's own OpenTelemetry plugin, which carries the trace in the
headers of each start, update and activity, so the worker's spans join the API's trace."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from persistence.db import Database
from worksession.settings import Settings

UNTRACED_URLS = "healthz,readyz"  # polled every few seconds; their traces say nothing


def tracer_provider(settings: Settings, service: str,
                    exporter: SpanExporter | None = None) -> TracerProvider | None:
    """The process's tracer provider (also made the global one, which the Temporal plugin
    uses), or None when tracing is off. `exporter` replaces the OTLP exporter (tests).
    Replay-safe: a workflow's spans are not made again when its history is replayed."""
    if exporter is None:
        if not settings.otlp_endpoint:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter(
            endpoint=f"{settings.otlp_endpoint.rstrip('/')}/v1/traces")
    from temporalio.contrib.opentelemetry import create_tracer_provider
    provider = create_tracer_provider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def temporal_plugins(provider: TracerProvider | None) -> list[Any]:
    """For the Temporal client; a worker built on it takes them too. The SDK's plugin, not
    its older `TracingInterceptor`: that one parents an update's spans on the workflow's
    start, so a check's trace would stop at the API's call to Temporal; this one carries
    each update's own trace into the worker (marked experimental in temporalio 1.35)."""
    if provider is None:
        return []
    from temporalio.contrib.opentelemetry import OpenTelemetryPlugin
    return [OpenTelemetryPlugin(add_temporal_spans=True)]


def instrument_app(app: Any, provider: TracerProvider) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider,
                                       excluded_urls=UNTRACED_URLS)


def instrument_database(db: Database, provider: TracerProvider) -> Any:
    """Spans for the statements of this database's engine (one per process)."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    # Its declared range stops before SQLAlchemy 2.1, whose engine events it hooks are
    # unchanged; tests/test_tracing.py shows the statements' spans.
    return SQLAlchemyInstrumentor().instrument(engine=db.engine.sync_engine,
                                               tracer_provider=provider, skip_dep_check=True)
