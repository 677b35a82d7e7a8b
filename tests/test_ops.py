"""Ops: a database outage mid-session makes the session stuck (listed by `worksession ops
stuck` with its reason), the client gets a bounded 503-class answer, and after the repair
`worksession ops retry` makes it go on: the check is recorded exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from application import sessions as uc
from application.authz import Actor, Role
from application.context import Context
from domain.errors import Unavailable
from domain.sop import CheckResult
from orchestration import ops
from orchestration.client import SessionWorkflows
from persistence.db import Database
from persistence.sessions import SessionRepository
from persistence.uow import SqlStore
from tests.conftest import (
    WriteOutage,
    eventually,
    make_confirmed_sop,
    on,
    ops_cli,
    shown,
    submission,
)
from worker import build_worker
from workflows.messages import workflow_id_for

BIN = Path(sys.executable).parent


@pytest.fixture
async def outage_stack(client, database_url, http, supervisor):
    queue = f"ops-{uuid.uuid4()}"
    worker_db = Database(database_url, lock_timeout_ms=300)
    # A run writes what its API could not after a second (write_behind), not ten minutes.
    ctx = Context(store=SqlStore(Database(database_url, lock_timeout_ms=300)),
                  workflows=SessionWorkflows(
        client, queue, timeout=3, idle_timeout=timedelta(hours=8), escalate_after_failures=3,
        write_behind=timedelta(seconds=1)))
    sop = await make_confirmed_sop(http, supervisor)
    async with build_worker(client, worker_db, queue):
        yield ctx, queue, sop
    await worker_db.dispose()
    await ctx.store.db.dispose()


async def test_database_outage_makes_session_stuck_and_ops_retry_recovers_it(
        temporal_env, client, database_url, db, outage_stack):
    ctx, queue, sop = outage_stack
    actor = Actor(uuid.uuid4(), Role.WORKER)
    view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
    sid, step = uuid.UUID(view["id"]), uuid.UUID(view["current_step_id"])

    code, _, err = await ops_cli(temporal_env, database_url, queue, "retry", str(sid))
    assert code == 1 and "is not stuck" in err

    check_id = uuid.uuid4()
    async with WriteOutage(database_url):
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(Unavailable):
            shown(await uc.submit_check(ctx, await on(ctx, actor, sid),
                submission(step_id=step, result=CheckResult.PASSED, check_id=check_id)))
        assert asyncio.get_running_loop().time() - t0 < 6  # bounded, never hangs

        async def backing_off():
            # stuck, and the next automatic attempt is seconds away: only `ops retry` can
            # make it go sooner, which is what the test shows
            s = await ops.diagnose(client, workflow_id_for(actor.id))
            return s if s and s.next_attempt_at and (
                s.next_attempt_at - datetime.now(UTC)).total_seconds() > 8 else None

        stuck = await eventually(backing_off, within=60)
        assert stuck.kind == ops.ACTIVITY_FAILING and stuck.session_id == str(sid)
        # the check the client was told to resend is held by the run, which answered it
        # (nothing waits inside the workflow): only the read model lacks it
        run = client.get_workflow_handle(workflow_id_for(actor.id))
        assert [c["id"] for c in (await run.query("session"))["checks"]] == [str(check_id)]
        code, out, err = await ops_cli(temporal_env, database_url, queue, "stuck", "--json")
        assert code == 0, err
        listed = {s["session_id"]: s for s in json.loads(out)}
        assert listed[str(sid)]["kind"] == "activity_failing"
        assert listed[str(sid)]["worker_id"] == str(actor.id)
        assert listed[str(sid)]["attempts"] >= 2 and listed[str(sid)]["last_error"]
        code, out, _ = await ops_cli(temporal_env, database_url, queue, "stuck")
        assert str(sid) in out and "keeps failing" in out
    # database repaired: ops retry makes it go now, not at the next back-off
    code, out, err = await ops_cli(temporal_env, database_url, queue, "retry", str(sid))
    assert code == 0, err
    assert f"session {sid}" in out and "retried activity" in out

    async def recorded():
        async with db.read() as conn:
            row = await SessionRepository(conn).load(sid)
        return row if len(row.state.checks) == 1 else None

    row = await eventually(recorded, within=3)  # sooner than the next automatic attempt
    assert [c.id for c in row.state.checks] == [check_id]
    # the client's resend is answered from the session as it is now, recorded once
    again = shown(await uc.submit_check(ctx, await on(ctx, actor, sid),
        submission(step_id=step, result=CheckResult.PASSED, check_id=check_id)))
    assert [c["id"] for c in again["checks"]] == [str(check_id)]
    assert await ops.diagnose(client, workflow_id_for(actor.id)) is None
    code, _, err = await ops_cli(temporal_env, database_url, queue, "retry", str(sid))
    assert code == 1 and "is not stuck" in err  # safe to run twice
    shown(await uc.cancel_session(ctx, await on(ctx, actor, sid), "test over"))


async def test_ops_endpoints_are_for_admins_only(http, worker_user, supervisor, admin):
    for user in (worker_user, supervisor):
        assert (await http.get("/api/v1/ops/stuck", headers=user.h)).status_code == 403
    r = await http.get("/api/v1/ops/stuck", headers=admin.h)
    assert r.status_code == 200 and isinstance(r.json()["items"], list)
    r = await http.post(f"/api/v1/ops/sessions/{uuid.uuid4()}/retry", headers=admin.h)
    assert r.status_code == 404


async def test_a_session_whose_run_was_terminated_is_never_faked_and_ops_restarts_it(
        client, db, outage_stack):
    ctx, queue, sop = outage_stack
    actor = Actor(uuid.uuid4(), Role.WORKER)
    view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
    sid, step = uuid.UUID(view["id"]), uuid.UUID(view["current_step_id"])
    view = shown(await uc.submit_check(ctx, await on(ctx, actor, sid),
        submission(step_id=step, result=CheckResult.PASSED, check_id=None)))
    await client.get_workflow_handle(workflow_id_for(actor.id)).terminate("operator mistake")

    # a check now must not be answered from a copy as if it had been recorded
    with pytest.raises(Unavailable):
        shown(await uc.submit_check(ctx, await on(ctx, actor, sid),
            submission(step_id=uuid.UUID(view["current_step_id"]), value=0.1, check_id=None)))
    later = Context(store=ctx.store, workflows=ctx.workflows,
                    clock=lambda: datetime.now(UTC) + timedelta(minutes=5))
    from application import ops as ops_uc
    listed = {s["session_id"]: s for s in await ops_uc.stuck_sessions(later, None)}
    assert listed[str(sid)]["kind"] == "workflow_not_running"
    done = await ops_uc.retry_session(ctx, None, sid)
    assert "started a new run" in done["action"] and "step 2 of 3" in done["action"]
    view = shown(await uc.submit_check(ctx, await on(ctx, actor, sid),
        submission(step_id=uuid.UUID(view["current_step_id"]), value=0.1, check_id=None)))
    assert len(view["checks"]) == 2 and view["current_step"]["index"] == 2
    async with db.read() as conn:
        assert len((await SessionRepository(conn).load(sid)).state.checks) == 2
    shown(await uc.cancel_session(ctx, await on(ctx, actor, sid), "test over"))


async def test_a_write_cancelled_midway_never_leaves_the_database_locked(database_url, db,
                                                                         http, supervisor):
    """A worker shutting down (or an activity timing out) cancels the run's write wherever
    it is. On SQLite a cancellation in the middle of a statement used to leave the
    connection out of the pool still holding the write lock: every later write waited out
    the busy timeout. The write now runs to its end; what comes after it is not blocked."""
    import random

    from activities.session_store import SessionStore
    from domain.changes import AuditFacts, SessionChange
    from domain.work_session import BEGINNING, WorkSession
    from persistence.sops import SopRepository

    sop = await make_confirmed_sop(http, supervisor)
    async with db.read() as conn:
        plan = (await SopRepository(conn).get(uuid.UUID(sop["id"]))).plan()
    quick = Database(database_url, lock_timeout_ms=500)
    store = SessionStore(quick)
    rng = random.Random(7)
    try:
        for i in range(150):
            session = WorkSession.start(uuid.uuid4(), uuid.uuid4(), plan, datetime.now(UTC))
            change = SessionChange.of(session.state, BEGINNING, [AuditFacts(
                "session_start", session.state.worker_id, "worker")], session.state.started_at,
                f"wf-{i}", "r")
            write = asyncio.create_task(store.write_changes([change]))
            await asyncio.sleep(rng.random() * 0.005)
            write.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await write
            async with quick.write() as conn:  # raises Unavailable if still locked
                await conn.exec_driver_sql("UPDATE sops SET title = title")
            # and the cancelled write was not lost half-way: all of it or nothing
            async with quick.read() as conn:
                row = await SessionRepository(conn).load(session.state.id)
            assert row is None or row.state.id == session.state.id
        # the cancelled writes went on to their end
        async def all_written():
            async with quick.read() as conn:
                return await SessionRepository(conn).load(session.state.id)
        assert await eventually(all_written, within=5)
    finally:
        await quick.dispose()
