"""The Temporal worker: `python worker.py` or `worksession worker`."""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import logging
import signal
import sys
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

import workflows
from activities.evidence_cleanup import EvidenceCleanup
from activities.nonconformance_store import NonconformanceStore
from activities.session_store import SessionStore
from activities.webhooks import WebhookWork
from api.schemas import RENDER
from application.events import RetryPolicy
from application.metrics import Meter
from application.ports import EvidenceStore
from orchestration.client import SessionWorkflows
from orchestration.schedules import ensure_evidence_cleanup, ensure_nonconformance_sweep
from orchestration.webhooks import WebhookDeliveries, ensure_webhook_sweep
from persistence import files
from persistence.db import Database
from persistence.uow import SqlStore
from persistence.webhooks import SecretBox
from workflows.evidence_cleanup import EvidenceCleanupWorkflow
from workflows.nonconformance import NonconformanceSweepWorkflow, NonconformanceWorkflow
from workflows.webhooks import WebhookDeliveryWorkflow, WebhookSweepWorkflow
from workflows.work_session import WorkSessionWorkflow
from worksession import aio, logs, tracing
from worksession.metrics import TemporalMeter, worker_runtime
from worksession.settings import Settings
from worksession.temporal import TemporalConnectError, connect, exit_unconnected
from worksession.webhook_http import HttpSender

# The SDK's sandbox as it is. Passing every module through (loaded once per process) would
# save about 60 KB per cached run, but it also switches off the restrictions on the workflow's
# own code (clock, randomness), measured: tests/test_workflow.py keeps that from coming back.
SANDBOX = SandboxedWorkflowRunner()
# A write takes milliseconds; a stuck one is cut off by its 15 s timeout anyway.
GRACEFUL_SHUTDOWN = timedelta(seconds=10)

log = logging.getLogger("worksession.worker")


def _workflow_bytecode() -> None:
    """The sandbox imports the workflow module afresh for every run it starts (a new session,
    a cache miss). Without its bytecode on disk (PYTHONDONTWRITEBYTECODE, as on this machine,
    or a fresh editable install) every one of them compiled the source again: measured, about
    a tenth of the dev process's CPU under load. Written once; a no-op when current, or when
    the directory is read-only (an installed package has its bytecode already)."""
    with contextlib.suppress(Exception):
        compileall.compile_dir(Path(workflows.__file__).parent, quiet=2)


def build_worker(client: Client, db: Database, task_queue: str,
                 cache_size: int = Settings.model_fields["workflow_cache_size"].default,
                 graceful_shutdown: timedelta = timedelta(0),
                 meter: Meter | None = None, evidence: EvidenceStore | None = None,
                 settings: Settings | None = None, webhook_key: bytes | None = None) -> Worker:
    """`graceful_shutdown`: how long a stopping worker lets a running write finish before
    cancelling it (it is retried, idempotent, on another worker either way). `meter`
    counts the changes its writes record. With `evidence` (the store the API uses), it
    also runs the evidence cleanup. Webhooks are delivered as `settings` say, their secrets
    opened with `webhook_key` (the API's; without it, deliveries wait for a worker that has
    it)."""
    _workflow_bytecode()
    settings = settings or Settings()
    deliveries = webhook_deliveries(client, task_queue, settings)
    workflows = SessionWorkflows(
        client, task_queue, settings.request_timeout_seconds, settings.idle_timeout,
        settings.escalate_after_failures, nc_deadlines=settings.nc_deadlines)
    store = SessionStore(db, meter, RENDER, deliveries, workflows)
    sender = HttpSender(settings.webhook_timeout.total_seconds(),
                        settings.webhook_allow_insecure)
    webhooks = WebhookWork(
        SqlStore(db, SecretBox(webhook_key) if webhook_key else None), sender,
        RetryPolicy(settings.webhook_retry_for, settings.webhook_retry_first,
                    settings.webhook_retry_most), deliveries)
    workflow_types: list[type] = [WorkSessionWorkflow, WebhookDeliveryWorkflow,
                                  WebhookSweepWorkflow, NonconformanceWorkflow,
                                  NonconformanceSweepWorkflow]
    ncs = NonconformanceStore(db, RENDER, deliveries, workflows)
    activities: list[object] = [store.write_changes, webhooks.deliver,
                                webhooks.start_stranded, ncs.mark_overdue,
                                ncs.follow_up]
    if evidence is not None:
        workflow_types.append(EvidenceCleanupWorkflow)
        activities.append(EvidenceCleanup(db, evidence).remove_unattached)
    return Worker(client, task_queue=task_queue, workflows=workflow_types,
                  activities=activities, max_cached_workflows=cache_size,
                  workflow_runner=SANDBOX, graceful_shutdown_timeout=graceful_shutdown)


def webhook_deliveries(client: Client, task_queue: str,
                       settings: Settings) -> WebhookDeliveries:
    """As the API makes it (api/app.py): the same workflow input from the same settings."""
    return WebhookDeliveries(client, task_queue, settings.request_timeout_seconds,
                             heartbeat=settings.webhook_heartbeat,
                             retry_first=settings.webhook_retry_first,
                             retry_most=settings.webhook_retry_most)


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Until `stop` is set, or SIGINT/SIGTERM: then it stops polling, lets the tasks it has
    finish (a write in flight completes rather than being retried by another worker) and
    exits."""
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    runtime = meter = None
    if settings.worker_metrics_port:  # the SDK's metrics and the session counters, one port
        runtime = worker_runtime(settings.metrics_host, settings.worker_metrics_port)
        meter = TemporalMeter(runtime)
    tracer = tracing.tracer_provider(settings, "worksession-worker")
    client = await connect(settings, runtime=runtime,
                           plugins=tracing.temporal_plugins(tracer))
    db = Database(settings.db_url)
    if tracer is not None:
        tracing.instrument_database(db, tracer)
    evidence = files.for_settings(settings)
    worker = build_worker(client, db, settings.task_queue, settings.workflow_cache_size,
                          graceful_shutdown=GRACEFUL_SHUTDOWN, meter=meter, evidence=evidence,
                          settings=settings, webhook_key=settings.webhook_key_material())
    try:
        await ensure_evidence_cleanup(client, settings.task_queue,
                                      settings.evidence_cleanup_after)
    except Exception:  # the sessions do not need it: say so, and serve them
        log.warning("could not set up the evidence cleanup's schedule", exc_info=True)
    try:
        await ensure_webhook_sweep(client, settings.task_queue, settings.webhook_sweep_grace,
                                   settings.webhook_sweep_every)
    except Exception:  # deliveries start without it; only a lost start waits for it
        log.warning("could not set up the webhook backstop's schedule", exc_info=True)
    try:
        await ensure_nonconformance_sweep(client, settings.task_queue)
    except Exception:  # NCs are followed without it; only a lost start waits for it
        log.warning("could not set up the nonconformances' backstop schedule", exc_info=True)
    try:
        async with worker:
            await stop.wait()
    finally:
        await evidence.close()
        await db.dispose()


def main() -> int:
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level, "worker")
    try:
        aio.run(run_worker(settings))
    except TemporalConnectError as e:  # one line, not a traceback
        exit_unconnected(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
