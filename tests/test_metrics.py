"""Prometheus metrics as ops read them: scraped over HTTP from the API's and the worker's own
ports after real work, and the stuck-sessions gauge following a real database outage."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from application import sessions as uc
from application.authz import Actor, Role
from application.context import Context
from application.ops import keep_gauges
from domain.errors import Unavailable
from domain.sop import CheckResult
from faults.harness import DevProcess, free_port
from orchestration import ops
from orchestration.client import SessionWorkflows
from persistence.db import Database
from persistence.uow import SqlStore
from tests.conftest import (
    WriteOutage,
    eventually,
    make_confirmed_sop,
    on,
    ops_cli,
    shown,
    sop_body,
    submission,
)
from worker import build_worker
from workflows.messages import workflow_id_for
from worksession.metrics import PrometheusMeter

CHECKS_ROUTE = "/api/v1/sessions/{session_id}/checks"


def scrape(port: int) -> list:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200
    return [s for family in text_string_to_metric_families(r.text) for s in family.samples]


def value(samples: list, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def both(api: list, worker: list, name: str, **labels: str) -> float:
    """A session counter, counted by whichever process wrote the change."""
    return value(api, name, **labels) + value(worker, name, **labels)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WORKSESSION_METRICS_REFRESH", "PT0.3S")
    dev = DevProcess(tmp_path)
    banner = dev.start()
    yield dev, banner
    dev.stop()


async def test_a_session_moves_the_counters_of_both_metrics_endpoints(stack):
    dev, banner = stack
    api_port, worker_port = dev.ports["metrics"], dev.ports["worker_metrics"]
    # `worksession dev` names both endpoints
    assert f"http://127.0.0.1:{api_port}/metrics" in banner
    assert f"http://127.0.0.1:{worker_port}/metrics" in banner
    tokens = re.findall(r"^\s+(ey[\w-]+\.[\w-]+\.[\w-]+)$", banner, re.M)
    worker, supervisor = ({"Authorization": f"Bearer {t}"} for t in tokens)
    api0, worker0 = scrape(api_port), scrape(worker_port)

    async with httpx.AsyncClient(base_url=dev.api, timeout=15) as http:
        sop = (await http.post("/api/v1/sops", json=sop_body(measurement_at=None),
                               headers=supervisor)).json()
        await http.post(f"/api/v1/sops/{sop['id']}/confirm", headers=supervisor)
        session = (await http.post("/api/v1/sessions", json={"sop_id": sop["id"]},
                                   headers=worker)).json()
        checks = f"/api/v1/sessions/{session['id']}/checks"
        for _ in range(3):  # three failed checks in a row: the session needs attention
            r = await http.post(checks, headers=worker, json={
                "step_id": session["current_step_id"], "result": "failed"})
            assert r.status_code == 200
        assert r.json()["needs_attention"] is True

        async def flagged():
            return value(scrape(api_port), "worksession_sessions_needing_attention") == 1
        await eventually(flagged, within=10)

        view = r.json()
        while view["status"] == "in_progress":
            r = await http.post(checks, headers=worker, json={
                "step_id": view["current_step_id"], "result": "passed"})
            assert r.status_code == 200
            view = r.json()
        assert view["status"] == "completed"
        passed = len(sop["tasks"][0]["steps"]) + len(sop["tasks"][1]["steps"])
        missing = await http.get(f"/api/v1/sessions/{uuid.uuid4()}", headers=worker)
        assert missing.status_code == 404

    async def settled():
        # the run's final write has happened and the gauge is recounted: nothing active
        # needs attention any more
        a, w = scrape(api_port), scrape(worker_port)
        done = (value(a, "worksession_sessions_needing_attention") == 0
                and value(w, "temporal_activity_execution_latency_count") >= 1)
        return (a, w) if done else None
    api1, worker1 = await eventually(settled, within=15)

    def moved(name: str, **labels: str) -> float:
        return both(api1, worker1, name, **labels) - both(api0, worker0, name, **labels)

    # each change counted once, by whichever process wrote it (the run's final write found
    # everything written by the API already, so it counted nothing)
    assert moved("worksession_sessions_started_total") == 1
    assert moved("worksession_sessions_completed_total") == 1
    assert moved("worksession_sessions_cancelled_total") == 0
    assert moved("worksession_checks_total", result="failed") == 3
    assert moved("worksession_checks_total", result="passed") == passed

    def api_moved(name: str, **labels: str) -> float:
        return value(api1, name, **labels) - value(api0, name, **labels)

    # requests by route template (never by raw path), method and status
    assert api_moved("worksession_http_requests_total", route=CHECKS_ROUTE, method="POST",
                     status="200") == 3 + passed
    assert api_moved("worksession_http_requests_total", route="/api/v1/sessions",
                     method="POST", status="201") == 1
    assert api_moved("worksession_http_requests_total", route="/api/v1/sessions/{session_id}",
                     method="GET", status="404") == 1
    assert not [s for s in api1 if session["id"] in str(s.labels)]
    assert api_moved("worksession_http_request_duration_seconds_count", route=CHECKS_ROUTE,
                     method="POST") == 3 + passed
    assert value(api1, "worksession_http_requests_in_flight") == 0
    assert value(api1, "worksession_http_requests_shed_total") == 0
    # the worker's port serves the Temporal SDK's own metrics: the session's workflow tasks
    # (start, each check, the close) and its final-write activity
    assert value(worker1, "temporal_workflow_task_execution_latency_count") - value(
        worker0, "temporal_workflow_task_execution_latency_count") >= 3 + passed
    assert value(worker1, "temporal_num_pollers", poller_type="workflow_task") >= 1


async def test_a_stuck_session_shows_in_the_gauge_until_ops_retry(temporal_env, client,
                                                                  database_url, db, http,
                                                                  supervisor):
    queue = f"metrics-{uuid.uuid4()}"
    meter = PrometheusMeter()
    port = free_port()
    server = meter.serve("127.0.0.1", port)
    worker_db = Database(database_url, lock_timeout_ms=300)
    ctx = Context(store=SqlStore(Database(database_url, lock_timeout_ms=300)),
                  workflows=SessionWorkflows(
        client, queue, timeout=3, idle_timeout=timedelta(hours=8), escalate_after_failures=3,
        write_behind=timedelta(seconds=1)), meter=meter)
    sop = await make_confirmed_sop(http, supervisor)
    gauges = asyncio.create_task(keep_gauges(ctx, meter, timedelta(seconds=0.3)))

    def stuck(reason: str) -> float:
        return value(scrape(port), "worksession_sessions_stuck", reason=reason)

    try:
        async with build_worker(client, worker_db, queue):
            actor = Actor(uuid.uuid4(), Role.WORKER)
            view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
            sid, step = uuid.UUID(view["id"]), uuid.UUID(view["current_step_id"])
            assert value(scrape(port), "worksession_sessions_started_total") == 1
            await asyncio.sleep(0.5)
            assert stuck("activity_failing") == 0
            async with WriteOutage(database_url):
                with pytest.raises(Unavailable):
                    shown(await uc.submit_check(ctx, await on(ctx, actor, sid),
                        submission(step_id=step, result=CheckResult.PASSED, check_id=uuid.uuid4())))

                async def counted():
                    return await asyncio.to_thread(stuck, "activity_failing") == 1
                await eventually(counted, within=30)

                async def backing_off():  # so that only `ops retry` makes it go soon
                    s = await ops.diagnose(client, workflow_id_for(actor.id))
                    return s and s.next_attempt_at and (
                        s.next_attempt_at - datetime.now(UTC)).total_seconds() > 8
                await eventually(backing_off, within=60)
                # nothing the API could not write was counted as written
                assert value(scrape(port), "worksession_checks_total", result="passed") == 0
            code, out, err = await ops_cli(temporal_env, database_url, queue, "retry",
                                           str(sid))
            assert code == 0, err

            async def gone():
                return await asyncio.to_thread(stuck, "activity_failing") == 0
            await eventually(gone, within=5)  # sooner than the next automatic attempt
            assert {r: stuck(r) for r in ("workflow_task_failing", "no_worker",
                                          "workflow_not_running")} == {
                "workflow_task_failing": 0, "no_worker": 0, "workflow_not_running": 0}
            shown(await uc.cancel_session(ctx, await on(ctx, actor, sid), "test over"))
    finally:
        gauges.cancel()
        server.shutdown()
        await worker_db.dispose()
        await ctx.store.db.dispose()
