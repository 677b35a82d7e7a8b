"""A nonconformance's deadlines as durable timers, on the time-skipping test server: a missed
containment or closure deadline sets `overdue` once, audited by the system, also when the
worker is replaced before it passes; a hold is released by containment alone (nobody polls)."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from application import nonconformances as ncs
from application import sessions as uc
from application import sops
from application.authz import Actor, Role
from domain.errors import SessionHeld, Unavailable
from domain.nonconformance import Disposition, NcFilter, NcStatus
from domain.sop import CheckResult, Severity
from orchestration.client import SessionWorkflows
from persistence.db import Database
from persistence.migrate import upgrade_async
from persistence.tables import audit_log
from tests.conftest import fresh_database, on, shown, submission
from tests.test_durable_timers import context, skipping_env  # noqa: F401 (fixture)
from tests.test_nonconformances import nc_sop_body
from tests.test_workflow import HISTORIES
from worker import build_worker
from workflows.nonconformance import NonconformanceSweepWorkflow


async def overdue_entries(db, nc_id) -> list[tuple[str, str | None, dict]]:
    async with db.read() as conn:
        rows = (await conn.execute(select(audit_log).where(
            audit_log.c.chain == f"nc:{nc_id}", audit_log.c.action == "nonconformance_overdue")
            .order_by(audit_log.c.seq))).mappings().all()
    return [(r["actor_role"], r["actor_id"], r["detail"]) for r in rows]


async def finish(env, ctx, actor, session_id) -> None:
    """Cancel the session and let its run write and close while the worker is there: a run
    left with a pending write would stop the next test's clock."""
    await uc.cancel_session(ctx, await on(ctx, actor, session_id), "done testing")
    await env.client.get_workflow_handle(f"work-session-{actor.id}").result()


async def the_nc(ctx, boss, session_id):
    items, _ = await ncs.list_page(ctx, boss, NcFilter(session_id=session_id), 10, 0)
    assert len(items) == 1
    return items[0]


async def fail_step(ctx, actor, view, step_index):
    sid = uuid.UUID(view["id"])
    for _ in range(step_index - view["current_step"]["index"]):
        view = shown(await uc.submit_check(ctx, await on(ctx, actor, sid), submission(
            step_id=uuid.UUID(view["current_step_id"]), result=CheckResult.PASSED)))
    return shown(await uc.submit_check(ctx, await on(ctx, actor, sid), submission(
        step_id=uuid.UUID(view["current_step_id"]), result=CheckResult.FAILED)))


async def test_both_deadlines_set_overdue_once_audited_across_a_worker_restart(
        skipping_env, db, supervisor):  # noqa: F811
    queue, ctx, sop_id, actor, boss = await staged(skipping_env, db, supervisor)
    # No sticky queue for the first worker: the time-skipping server would wait for its
    # sticky tasks in skipped time (which stands still while they wait), never falling
    # back to the task queue the second worker polls, as a real server does after 5 s.
    async with build_worker(skipping_env.client, db, queue, cache_size=0):
        view = shown(await uc.start_session(ctx, actor, sop_id))
        await fail_step(ctx, actor, view, 0)  # a minor NC: contain within 1 h
        nc = await the_nc(ctx, boss, uuid.UUID(view["id"]))
        await skipping_env.sleep(timedelta(minutes=50))
        assert (await ncs.get(ctx, await ncs.gate(ctx, boss, nc.id, "nc.read"))).overdue is False
    # a new worker (the first one is gone, and with it every run it had in memory): the
    # timer is the server's, and the new worker replays the NC's history and acts on it
    async with build_worker(skipping_env.client, db, queue):
        await skipping_env.sleep(timedelta(minutes=20))
        access = await ncs.gate(ctx, boss, nc.id, "nc.manage")

        async def overdue() -> bool:
            return (await ncs.get(ctx, access)).overdue
        for _ in range(100):
            if await overdue():
                break
            await skipping_env.sleep(timedelta(seconds=1))
        assert await overdue()
        [(role, actor_id, detail)] = await overdue_entries(db, nc.id)
        assert (role, actor_id, detail["deadline"]) == ("system", None, "containment")
        # nothing more, however long it stays open
        await skipping_env.sleep(timedelta(hours=3))
        assert len(await overdue_entries(db, nc.id)) == 1
        listed, _ = await ncs.list_page(ctx, boss, NcFilter(overdue=True, sop_id=nc.sop_id),
                                        10, 0)
        assert [n.id for n in listed] == [nc.id]
        # contained late: overdue it stays; the closure deadline runs on (7 days from opening)
        await ncs.contain(ctx, access, "guard taped off")
        await skipping_env.sleep(timedelta(days=6))
        assert len(await overdue_entries(db, nc.id)) == 1
        await skipping_env.sleep(timedelta(days=1, hours=1))
        for _ in range(100):
            if len(await overdue_entries(db, nc.id)) == 2:
                break
            await skipping_env.sleep(timedelta(seconds=1))
        found = await overdue_entries(db, nc.id)
        assert [d["deadline"] for _, _, d in found] == ["containment", "closure"]
        await skipping_env.sleep(timedelta(days=30))
        assert len(await overdue_entries(db, nc.id)) == 2
        closed = await ncs.close(ctx, access, Disposition.SCRAP, "parts scrapped")
        assert closed.status is NcStatus.CLOSED and closed.overdue is True
        await finish(skipping_env, ctx, actor, uuid.UUID(view["id"]))


async def test_an_nc_contained_in_time_is_never_overdue_and_its_workflow_ends_when_closed(
        skipping_env, db, supervisor):  # noqa: F811
    queue, ctx, sop_id, actor, boss = await staged(skipping_env, db, supervisor)
    async with build_worker(skipping_env.client, db, queue):
        view = shown(await uc.start_session(ctx, actor, sop_id))
        await fail_step(ctx, actor, view, 0)
        nc = await the_nc(ctx, boss, uuid.UUID(view["id"]))
        access = await ncs.gate(ctx, boss, nc.id, "nc.manage")
        await skipping_env.sleep(timedelta(minutes=30))
        await ncs.contain(ctx, access, "parts quarantined")
        await skipping_env.sleep(timedelta(days=2))
        boss = Actor(supervisor.id, Role.SUPERVISOR, auth_time=datetime.now(UTC))
        await ncs.close(ctx, await ncs.gate(ctx, boss, nc.id, "nc.manage"),
                        Disposition.USE_AS_IS, "within tolerance after review")
        handle = skipping_env.client.get_workflow_handle(f"nonconformance-{nc.id}")
        assert await handle.result() == "closed"
        await skipping_env.sleep(timedelta(days=10))
        assert await overdue_entries(db, nc.id) == []
        assert (await ncs.get(ctx, access)).overdue is False
        await finish(skipping_env, ctx, actor, uuid.UUID(view["id"]))


async def chain_actions(db, nc_id) -> list[str]:
    async with db.read() as conn:
        rows = (await conn.execute(select(audit_log.c.action).where(
            audit_log.c.chain == f"nc:{nc_id}").order_by(audit_log.c.seq))).all()
    return [r.action for r in rows]


async def test_an_nc_never_contained_has_its_closure_deadline_audited_when_it_passes(
        skipping_env, db, supervisor):  # noqa: F811
    queue, ctx, sop_id, actor, boss = await staged(skipping_env, db, supervisor)
    async with build_worker(skipping_env.client, db, queue):
        view = shown(await uc.start_session(ctx, actor, sop_id))
        await fail_step(ctx, actor, view, 0)  # a minor NC: contain within 1 h, close in 7 d
        nc = await the_nc(ctx, boss, uuid.UUID(view["id"]))
        await skipping_env.sleep(timedelta(days=7, hours=1))
        for _ in range(100):
            if len(await overdue_entries(db, nc.id)) == 2:
                break
            await skipping_env.sleep(timedelta(seconds=1))
        found = await overdue_entries(db, nc.id)
        assert [(role, d["deadline"]) for role, _, d in found] == [
            ("system", "containment"), ("system", "closure")]
        assert found[1][2]["due"] == nc.close_due.isoformat()
        # contained and closed at last: overdue it stays, and nothing is marked again
        access = await ncs.gate(ctx, boss, nc.id, "nc.manage")
        await ncs.contain(ctx, access, "guard taped off")
        await ncs.close(ctx, access, Disposition.SCRAP, "parts scrapped")
        handle = skipping_env.client.get_workflow_handle(f"nonconformance-{nc.id}")
        assert await handle.result() == "closed"
        assert len(await overdue_entries(db, nc.id)) == 2
        assert (await ncs.get(ctx, access)).overdue is True
        # (the session runs to here: the test server breaks on a signal to a closed run)
        await finish(skipping_env, ctx, actor, uuid.UUID(view["id"]))


async def test_a_containment_recorded_after_its_deadline_is_overdue_before_its_timer_fires(
        skipping_env, db, supervisor):  # noqa: F811
    """The deadline's timer has not fired yet (no worker ran when it was due, say) when a
    supervisor contains the NC late: the record says overdue at once, before the containment
    on its chain, and nothing is marked again when the timer does fire."""
    queue, ctx, sop_id, actor, boss = await staged(skipping_env, db, supervisor)
    async with build_worker(skipping_env.client, db, queue):
        view = shown(await uc.start_session(ctx, actor, sop_id))
        await fail_step(ctx, actor, view, 0)  # a minor NC: contain within 1 h
        nc = await the_nc(ctx, boss, uuid.UUID(view["id"]))
        late = replace(ctx, clock=lambda: nc.containment_due + timedelta(minutes=5))
        access = await ncs.gate(late, boss, nc.id, "nc.manage")
        assert (await ncs.get(late, access)).overdue is False
        contained = await ncs.contain(late, access, "guard taped off")
        assert contained.overdue is True
        [(role, _, detail)] = await overdue_entries(db, nc.id)
        assert (role, detail["deadline"]) == ("system", "containment")
        assert await chain_actions(db, nc.id) == [
            "nonconformance_opened", "nonconformance_overdue", "nonconformance_contained"]
        for _ in range(12):  # past the timer's time (one sleep of 2 h stalled the server)
            await skipping_env.sleep(timedelta(minutes=10))
        assert len(await overdue_entries(db, nc.id)) == 1
        boss = replace(boss, auth_time=late.clock())  # closing is a signature: fresh sign-in
        await ncs.close(late, await ncs.gate(late, boss, nc.id, "nc.manage"),
                        Disposition.SCRAP, "parts scrapped")
        handle = skipping_env.client.get_workflow_handle(f"nonconformance-{nc.id}")
        assert await handle.result() == "closed"
        assert len(await overdue_entries(db, nc.id)) == 1
        await finish(skipping_env, ctx, actor, uuid.UUID(view["id"]))


@pytest.mark.skipif(not os.environ.get("RECORD_HISTORIES"),
                    reason="set RECORD_HISTORIES=<label>, e.g. v2, to record histories")
async def test_record_a_missed_containment_history(skipping_env, db, supervisor):  # noqa: F811
    """An NC's workflow whose containment deadline passes (marked overdue), then contained
    late and closed: recorded for tests/test_workflow.py's replay (docs/versioning.md)."""
    queue, ctx, sop_id, actor, boss = await staged(skipping_env, db, supervisor)
    async with build_worker(skipping_env.client, db, queue):
        view = shown(await uc.start_session(ctx, actor, sop_id))
        await fail_step(ctx, actor, view, 0)
        nc = await the_nc(ctx, boss, uuid.UUID(view["id"]))
        for _ in range(9):  # past the containment deadline (1 h)
            await skipping_env.sleep(timedelta(minutes=10))
        access = await ncs.gate(ctx, boss, nc.id, "nc.manage")
        for _ in range(100):
            if (await ncs.get(ctx, access)).overdue:
                break
            await skipping_env.sleep(timedelta(seconds=1))
        await ncs.contain(ctx, access, "guard taped off")
        await ncs.close(ctx, access, Disposition.SCRAP, "parts scrapped")
        handle = skipping_env.client.get_workflow_handle(f"nonconformance-{nc.id}")
        assert await handle.result() == "closed"
        (HISTORIES / f"{os.environ['RECORD_HISTORIES']}-nonconformance-missed-containment"
                     ".json").write_text(json.dumps(json.loads(
                         (await handle.fetch_history()).to_json()), indent=1))
        await finish(skipping_env, ctx, actor, uuid.UUID(view["id"]))


async def released(env, ctx, actor) -> bool:
    """The worker's live session is no longer held, within a few seconds of skipped time."""
    for _ in range(100):
        if shown(await ctx.workflows.live(actor.id))["held"] is None:
            return True
        await env.sleep(timedelta(milliseconds=100))
    return False


async def test_a_hold_is_released_by_containment(skipping_env, db, supervisor):  # noqa: F811
    queue, ctx, sop_id, actor, boss = await staged(skipping_env, db, supervisor)
    async with build_worker(skipping_env.client, db, queue):
        sid, step, nc_id = await held(ctx, actor, sop_id)
        await skipping_env.sleep(timedelta(hours=2))  # held for hours: still held
        with pytest.raises(SessionHeld) as refused:
            await uc.submit_check(ctx, await on(ctx, actor, sid),
                                  submission(step_id=step, result=CheckResult.PASSED))
        assert refused.value.extra["nonconformance_id"] == str(nc_id)
        assert [d["deadline"] for _, _, d in await overdue_entries(db, nc_id)] == \
            ["containment"]
        await ncs.contain(ctx, await ncs.gate(ctx, boss, nc_id, "nc.manage"), "locked out")
        assert await released(skipping_env, ctx, actor)
        view = shown(await uc.submit_check(ctx, await on(ctx, actor, sid),
                                           submission(step_id=step, result=CheckResult.PASSED)))
        assert view["current_step"]["index"] == 2
        await finish(skipping_env, ctx, actor, sid)


class TemporalDown(SessionWorkflows):
    """The client as it is while Temporal cannot be reached, for what it tells an NC's
    workflow."""

    async def start_nonconformance(self, *args, **kwargs) -> None:
        raise Unavailable("Temporal unavailable: connection refused")

    async def nonconformance_changed(self, *args, **kwargs) -> None:
        raise Unavailable("Temporal unavailable: connection refused")


class TemporalBusy(SessionWorkflows):
    """The client as it is while Temporal refuses work (not unreachable: its own error)."""

    async def start_nonconformance(self, *args, **kwargs) -> None:
        raise RPCError("namespace rate limit exceeded", RPCStatusCode.RESOURCE_EXHAUSTED, b"")


def down(env, ctx, queue):
    return replace(ctx, workflows=TemporalDown(env.client, queue, timeout=30,
                                               idle_timeout=timedelta(hours=8),
                                               escalate_after_failures=3))


@pytest.fixture
async def own_db():
    """A database of the test's own: the sweep reads every NC of its database, and the
    other tests' are on task queues no worker polls any more."""
    async with fresh_database("nc-sweep") as url:
        await upgrade_async(url)
        database = Database(url)
        yield database
        await database.dispose()


async def staged(env, db, supervisor):
    """A task queue, a context on `db`, a confirmed SOP with NC steps, a worker and a
    supervisor."""
    queue = f"nc-{uuid.uuid4()}"
    ctx = context(env, db, queue, timedelta(hours=8))
    boss = Actor(supervisor.id, Role.SUPERVISOR, auth_time=datetime.now(UTC))
    sop_id = (await sops.confirm_sop(ctx, boss, (await sops.create_sop(
        ctx, boss, nc_sop_body())).id)).id
    return queue, ctx, sop_id, Actor(uuid.uuid4(), Role.WORKER), boss


async def sweep(env, queue, grace: timedelta) -> int:
    return await env.client.execute_workflow(
        NonconformanceSweepWorkflow.run, grace.total_seconds(), id=f"sweep-{uuid.uuid4()}",
        task_queue=queue)


async def test_an_nc_opened_by_hand_while_temporal_was_down_is_followed_by_the_backstop(
        skipping_env, own_db, supervisor):  # noqa: F811
    db = own_db
    queue, ctx, sop_id, actor, boss = await staged(skipping_env, db, supervisor)
    async with build_worker(skipping_env.client, db, queue):
        view = shown(await uc.start_session(ctx, actor, sop_id))
        nc = await ncs.open_by_hand(down(skipping_env, ctx, queue), boss,
                                    uuid.UUID(view["id"]), None, Severity.MINOR,
                                    "guard missing on the press")
        handle = skipping_env.client.get_workflow_handle(f"nonconformance-{nc.id}")
        with pytest.raises(RPCError):  # recorded, and nothing follows it
            await handle.describe()
        # within its grace it is left to the API
        assert await sweep(skipping_env, queue, timedelta(hours=1)) == 0
        assert await sweep(skipping_env, queue, timedelta(0)) == 1
        assert (await handle.describe()).status is WorkflowExecutionStatus.RUNNING
        assert await sweep(skipping_env, queue, timedelta(0)) == 0  # running: started once

        # and it does what an NC's workflow does: its containment deadline (1 h) passes
        await skipping_env.sleep(timedelta(hours=1, minutes=5))
        access = await ncs.gate(ctx, boss, nc.id, "nc.manage")
        for _ in range(100):
            if (await ncs.get(ctx, access)).overdue:
                break
            await skipping_env.sleep(timedelta(seconds=1))
        # (first: the server's clock, ahead by the days earlier tests skipped, may be past
        # its closure deadline too, which is then marked as well)
        (role, _, detail), *_ = await overdue_entries(db, nc.id)
        assert (role, detail["deadline"]) == ("system", "containment")

        await ncs.contain(ctx, access, "press locked out")
        await ncs.close(ctx, await ncs.gate(ctx, Actor(supervisor.id, Role.SUPERVISOR,
                                                       auth_time=datetime.now(UTC)),
                                            nc.id, "nc.manage"),
                        Disposition.REWORK, "guard refitted")
        assert await handle.result() == "closed"
        assert await sweep(skipping_env, queue, timedelta(0)) == 0  # closed: nothing to follow
        await finish(skipping_env, ctx, actor, uuid.UUID(view["id"]))


async def held(ctx, actor, sop_id) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A session started and held by its hold step's failed check (a critical NC: 15 min to
    contain): the session, the step and the NC."""
    view = shown(await uc.start_session(ctx, actor, sop_id))
    view = await fail_step(ctx, actor, view, 1)
    return (uuid.UUID(view["id"]), uuid.UUID(view["current_step_id"]),
            uuid.UUID(view["held"]["nonconformance_id"]))


async def test_a_held_session_whose_nc_workflow_missed_the_containment_is_released_by_the_backstop(
        skipping_env, own_db, supervisor):  # noqa: F811
    db = own_db
    queue, ctx, sop_id, actor, boss = await staged(skipping_env, db, supervisor)
    async with build_worker(skipping_env.client, db, queue):
        sid, step, nc_id = await held(ctx, actor, sop_id)
        # contained on the record, but the signal to its workflow is lost
        await ncs.contain(down(skipping_env, ctx, queue),
                          await ncs.gate(ctx, boss, nc_id, "nc.manage"), "locked out")
        await skipping_env.sleep(timedelta(minutes=1))
        with pytest.raises(SessionHeld):  # the worker is still held
            await uc.submit_check(ctx, await on(ctx, actor, sid),
                                  submission(step_id=step, result=CheckResult.PASSED))
        assert await sweep(skipping_env, queue, timedelta(hours=1)) == 0  # within its grace
        assert await sweep(skipping_env, queue, timedelta(0)) == 1
        assert await released(skipping_env, ctx, actor)  # long before its 15 min
        view = shown(await uc.submit_check(ctx, await on(ctx, actor, sid),
                                           submission(step_id=step, result=CheckResult.PASSED)))
        assert view["current_step"]["index"] == 2
        assert await sweep(skipping_env, queue, timedelta(0)) == 0  # it knows now
        assert await overdue_entries(db, nc_id) == []
        await finish(skipping_env, ctx, actor, sid)


async def test_a_held_session_contained_after_its_deadline_is_released_by_the_backstop(
        skipping_env, own_db, supervisor):  # noqa: F811
    """The containment deadline passed (marked overdue) before the supervisor contained it,
    and the signal was lost: the NC's next deadline (its closure) is days away, so the
    backstop tells its workflow, and the worker is released."""
    db = own_db
    queue, ctx, sop_id, actor, boss = await staged(skipping_env, db, supervisor)
    async with build_worker(skipping_env.client, db, queue):
        sid, step, nc_id = await held(ctx, actor, sop_id)
        for _ in range(4):  # past its containment deadline
            await skipping_env.sleep(timedelta(minutes=5))
        for _ in range(100):
            if await overdue_entries(db, nc_id):
                break
            await skipping_env.sleep(timedelta(seconds=1))
        nc = await ncs.get(ctx, await ncs.gate(ctx, boss, nc_id, "nc.read"))
        assert nc.overdue is True
        at = nc.containment_due + timedelta(minutes=10)
        late = replace(down(skipping_env, ctx, queue), clock=lambda: at)
        await ncs.contain(late, await ncs.gate(late, boss, nc_id, "nc.manage"), "locked out")
        with pytest.raises(SessionHeld):  # the worker is still held
            await uc.submit_check(ctx, await on(ctx, actor, sid),
                                  submission(step_id=step, result=CheckResult.PASSED))
        # a sweep over a minute later (its clock: the record's), as the schedule runs it
        told = await ncs.follow_up(ctx.store, ctx.workflows, at + timedelta(seconds=90),
                                   timedelta(minutes=1))
        assert told == 1
        assert await released(skipping_env, ctx, actor)
        shown(await uc.submit_check(ctx, await on(ctx, actor, sid),
                                    submission(step_id=step, result=CheckResult.PASSED)))
        assert await ncs.follow_up(ctx.store, ctx.workflows, at + timedelta(minutes=3),
                                   timedelta(minutes=1)) == 0  # it knows now
        await finish(skipping_env, ctx, actor, sid)


async def test_an_nc_opened_by_hand_is_answered_whatever_keeps_its_workflow_from_starting(
        skipping_env, own_db, supervisor):  # noqa: F811
    """Recorded, so it is answered as opened (a 5xx would have the client open it again,
    a second NC); the backstop starts its workflow."""
    db = own_db
    queue, ctx, sop_id, actor, boss = await staged(skipping_env, db, supervisor)
    busy = replace(ctx, workflows=TemporalBusy(skipping_env.client, queue, timeout=30,
                                               idle_timeout=timedelta(hours=8),
                                               escalate_after_failures=3))
    async with build_worker(skipping_env.client, db, queue):
        view = shown(await uc.start_session(ctx, actor, sop_id))
        nc = await ncs.open_by_hand(busy, boss, uuid.UUID(view["id"]), None, Severity.MINOR,
                                    "guard missing on the press")
        assert nc.status is NcStatus.OPEN
        items, total = await ncs.list_page(ctx, boss, NcFilter(session_id=nc.session_id),
                                           10, 0)
        assert total == 1 and items[0].id == nc.id
        assert await sweep(skipping_env, queue, timedelta(0)) == 1
        await finish(skipping_env, ctx, actor, uuid.UUID(view["id"]))
