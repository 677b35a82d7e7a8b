"""The session workflow against a real Temporal server: worker restarts, continue-as-new,
concurrent resends, and replay of recorded histories (non-determinism guard)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from application import sessions as uc
from application.authz import Actor, Role
from application.context import Context
from domain.errors import Conflict
from domain.sop import CheckResult
from persistence import sessions as repo
from tests.conftest import eventually, make_confirmed_sop, sop_body
from worker import SANDBOX, build_worker
from workflows.client import SessionWorkflows
from workflows.messages import workflow_id_for
from workflows.work_session import COMMITTED_WRITES_PATCH, WorkSessionWorkflow

HISTORIES = Path(__file__).parent / "histories"


def own_context(client, db, task_queue: str, **kw) -> Context:
    return Context(db=db, workflows=SessionWorkflows(
        client, task_queue, timeout=15, idle_timeout=timedelta(hours=8),
        escalate_after_failures=3, **kw))


async def pass_current(ctx: Context, actor: Actor, view: dict, check_id=None) -> dict:
    step = view["current_step"]
    kind = step["check"]["kind"]
    return await uc.submit_check(
        ctx, actor, uuid.UUID(view["id"]), step_id=uuid.UUID(step["id"]),
        result=CheckResult.PASSED if kind == "confirm" else None,
        value=0.1 if kind == "measurement" else None, notes=None, evidence_uri=None,
        check_id=check_id)


async def stored_check_ids(db, session_id: str) -> list[str]:
    async with db.read() as conn:
        row = await repo.get(conn, uuid.UUID(session_id))
    return [str(c.id) for c in row.state.checks]


async def test_worker_restart_mid_session_loses_no_check(http, client, db, supervisor):
    sop = await make_confirmed_sop(http, supervisor, sop_body((3, 2)))
    queue = f"restart-{uuid.uuid4()}"
    ctx = own_context(client, db, queue)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    acknowledged = []

    async with build_worker(client, db, queue):
        view = await uc.start_session(ctx, actor, uuid.UUID(sop["id"]))
        view = await pass_current(ctx, actor, view)
        acknowledged.append(view["checks"][-1]["id"])
    # worker gone: a check sent now waits in Temporal until a worker is back
    pending = asyncio.create_task(pass_current(ctx, actor, view))
    await asyncio.sleep(1.0)
    assert not pending.done()
    async with build_worker(client, db, queue):  # a fresh worker replays the history
        view = await pending
        acknowledged.append(view["checks"][-1]["id"])
        view = await pass_current(ctx, actor, view)
        acknowledged.append(view["checks"][-1]["id"])
        live = await ctx.workflows.query(actor.id)
    assert [c["id"] for c in live["checks"]] == acknowledged
    assert await stored_check_ids(db, view["id"]) == acknowledged
    assert live["current_step"]["index"] == 3


async def test_continue_as_new_keeps_checks_and_idempotency(http, client, db, supervisor,
                                                            worker):
    sop = await make_confirmed_sop(http, supervisor, sop_body((3, 3), measurement_at=None))
    ctx = own_context(client, db, worker.task_queue, continue_as_new_after_updates=2)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    view = await uc.start_session(ctx, actor, uuid.UUID(sop["id"]))
    first_run = view["run_id"]
    first_check = uuid.uuid4()
    view = await pass_current(ctx, actor, view, check_id=first_check)
    view = await pass_current(ctx, actor, view)
    view = await pass_current(ctx, actor, view)  # lands on the next run
    live = await ctx.workflows.query(actor.id)
    assert live["run_id"] != first_run
    assert len(live["checks"]) == 3 and live["current_step"]["index"] == 3
    # the first check_id, resent after the rollover, is still recognised
    again = await uc.submit_check(
        ctx, actor, uuid.UUID(view["id"]), step_id=uuid.UUID(live["checks"][0]["step_id"]),
        result=CheckResult.PASSED, value=None, notes=None, evidence_uri=None,
        check_id=first_check)
    assert len(again["checks"]) == 3
    assert len(await stored_check_ids(db, view["id"])) == 3
    desc = await client.get_workflow_handle(workflow_id_for(actor.id)).describe()
    assert desc.run_id != first_run


async def test_a_change_whose_api_died_before_writing_it_reaches_the_read_model(
        http, client, db, supervisor, worker):
    """The API writes each change it answers; one that died between the update and its
    write (or lost its database) leaves that to the run, which writes the session itself
    once a change has gone unwritten for `write_behind`."""
    from workflows.messages import SessionCommand, SubmitCheck

    sop = await make_confirmed_sop(http, supervisor, sop_body((3,), measurement_at=None))
    ctx = own_context(client, db, worker.task_queue, write_behind=timedelta(seconds=1))
    actor = Actor(uuid.uuid4(), Role.WORKER)
    view = await uc.start_session(ctx, actor, uuid.UUID(sop["id"]))
    sid = uuid.UUID(view["id"])
    cid = uuid.uuid4()
    # the update alone, as an API that dies before its write leaves it
    change = await ctx.workflows.submit_check(actor.id, SubmitCheck(
        actor_id=actor.id, session_id=sid, check_id=cid,
        step_id=uuid.UUID(view["current_step_id"]), result=CheckResult.PASSED))
    assert [c.id for c in change.state.checks] == [cid]

    async def written():
        return await stored_check_ids(db, view["id"]) == [str(cid)] or None

    await eventually(written, within=10)
    # a closing run writes the closed session before it ends, whatever the API did
    done = await ctx.workflows.command(actor.id, "complete",
                                       SessionCommand(actor_id=actor.id, session_id=sid))
    assert done.state.status.value == "completed"
    await asyncio.wait_for(client.get_workflow_handle(workflow_id_for(actor.id)).result(), 10)
    async with db.read() as conn:
        row = await repo.get(conn, sid)
    assert row.state.status.value == "completed" and row.state.version == done.state.version
    assert [c.id for c in row.state.checks] == [cid]


async def test_concurrent_resends_of_one_check_across_a_worker_restart_apply_once(
        http, client, db, supervisor):
    sop = await make_confirmed_sop(http, supervisor)
    queue = f"resend-{uuid.uuid4()}"
    ctx = own_context(client, db, queue)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    cid = uuid.uuid4()
    async with build_worker(client, db, queue):
        view = await uc.start_session(ctx, actor, uuid.UUID(sop["id"]))
        sends = [asyncio.create_task(pass_current(ctx, actor, view, check_id=cid))
                 for _ in range(3)]
        await asyncio.sleep(0.05)
    sends += [asyncio.create_task(pass_current(ctx, actor, view, check_id=cid))
              for _ in range(2)]
    async with build_worker(client, db, queue):
        results = await asyncio.gather(*sends, return_exceptions=True)
    oks = [r for r in results if isinstance(r, dict)]
    assert oks, results
    assert all([c["id"] for c in r["checks"]] == [str(cid)] for r in oks)
    assert await stored_check_ids(db, view["id"]) == [str(cid)]


async def _write_a_lost_workflow_task(ctx: Context, actor: Actor, view: dict,
                                      check_id: uuid.UUID) -> None:
    """What the read model holds when a workflow task's local activity wrote the next check
    and the task was then lost (a SIGKILLed Temporal server): the database one change ahead
    of the run, under the run's own id."""
    from datetime import UTC

    from domain.work_session import CheckSubmission, WorkSession

    desc = await ctx.workflows.client.get_workflow_handle(view["workflow_id"]).describe()
    # the lost task's position: the history so far, then its own scheduled and started events
    position = desc.raw_description.workflow_execution_info.history_length + 2
    async with ctx.db.write() as conn:
        row = await repo.get(conn, uuid.UUID(view["id"]))
        session = WorkSession(plan=await ctx.plans.get(conn, row.state.sop_id), state=row.state)
        session.add_check(CheckSubmission(check_id=check_id,
                                          step_id=uuid.UUID(view["current_step"]["id"]),
                                          result=CheckResult.PASSED, value=None, notes=None,
                                          evidence_uri=None),
                          by=actor.id, now=datetime(2026, 1, 1, tzinfo=UTC))
        assert await repo.save(ctx.db, conn, session.state, row.workflow_id, row.run_id,
                               datetime.now(UTC), run_position=position)


async def stored_checks(db, session_id: str) -> list[tuple[str, datetime]]:
    async with db.read() as conn:
        row = await repo.get(conn, uuid.UUID(session_id))
    return [(str(c.id), c.checked_at) for c in row.state.checks]


@pytest.fixture
async def local_persist_worker(client, db):
    """Runs as they were started before COMMITTED_WRITES_PATCH: each change is written from
    a local activity inside its update, before the workflow task commits. Those runs go on
    after a deploy until they close, and only they can leave a lost task's write behind."""
    async with build_worker(client, db, f"local-persist-{uuid.uuid4()}",
                            without_patches=frozenset({COMMITTED_WRITES_PATCH})) as w:
        yield w


async def _last_check_lost(http, client, db, supervisor, worker
                           ) -> tuple[dict, Context, Actor, dict, uuid.UUID]:
    """A 3-step session (of a run from before COMMITTED_WRITES_PATCH) two checks in whose
    last check only a lost workflow task wrote."""
    sop = await make_confirmed_sop(http, supervisor, sop_body((2, 1), measurement_at=None))
    ctx = own_context(client, db, worker.task_queue)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    view = await uc.start_session(ctx, actor, uuid.UUID(sop["id"]))
    view = await pass_current(ctx, actor, await pass_current(ctx, actor, view))
    lost = uuid.uuid4()
    await _write_a_lost_workflow_task(ctx, actor, view, lost)
    return sop, ctx, actor, view, lost


async def test_a_resend_after_a_lost_workflow_task_reaches_the_run_and_the_copies_agree(
        http, client, db, supervisor, local_persist_worker):
    sop, ctx, actor, view, last = await _last_check_lost(http, client, db, supervisor,
                                                         local_persist_worker)
    assert (await uc.get_session(ctx, actor, uuid.UUID(view["id"])))["status"] == "completed"
    # a supervisor cannot lock it while its run is still going
    boss = Actor(uuid.uuid4(), Role.SUPERVISOR)
    with pytest.raises(Conflict, match="still running"):
        await uc.approve_session(ctx, boss, uuid.UUID(view["id"]))

    # the device got no answer and resends: the run applies it, as if for the first time
    done = await uc.submit_check(
        ctx, actor, uuid.UUID(view["id"]), step_id=uuid.UUID(view["current_step"]["id"]),
        result=CheckResult.PASSED, value=None, notes=None, evidence_uri=None, check_id=last)
    assert done["status"] == "completed" and done["checks"][-1]["id"] == str(last)
    # the run got it and closed
    result = await asyncio.wait_for(
        client.get_workflow_handle(workflow_id_for(actor.id)).result(), 10)
    # the read model now holds what the run's history holds, timestamps included
    assert await stored_checks(db, view["id"]) == [
        (c["id"], datetime.fromisoformat(c["checked_at"])) for c in result["checks"]]
    assert (await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))["status"] == "in_progress"
    assert (await uc.approve_session(ctx, boss, uuid.UUID(view["id"])))["locked"] is True


async def test_a_change_lost_with_its_workflow_task_is_replaced_by_what_the_run_did_instead(
        http, client, db, supervisor, local_persist_worker):
    _, ctx, actor, view, lost = await _last_check_lost(http, client, db, supervisor,
                                                       local_persist_worker)

    # the run never saw that check: the worker pauses instead, and that is what is stored
    paused = await uc.pause_session(ctx, actor, uuid.UUID(view["id"]))
    assert paused["status"] == "paused" and len(paused["checks"]) == 2
    stored = await uc.get_session(ctx, actor, uuid.UUID(view["id"]))
    assert stored["status"] == "paused"
    assert [c["id"] for c in stored["checks"]] == [c["id"] for c in paused["checks"]]
    await uc.resume_session(ctx, actor, uuid.UUID(view["id"]))
    done = await pass_current(ctx, actor, view, check_id=lost)
    assert done["status"] == "completed"
    assert await stored_check_ids(db, view["id"]) == [c["id"] for c in done["checks"]]


def _histories() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("path", _histories(), ids=lambda p: p.stem)
async def test_recorded_history_replays_without_nondeterminism(path: Path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[WorkSessionWorkflow], workflow_runner=SANDBOX,
                        data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


def test_histories_are_recorded_for_every_path():
    assert {p.stem.split(".")[0].split("-", 1)[1] for p in _histories()} >= {
        "failed-check-then-complete", "manual-complete", "pause-resume-cancel",
        "continue-as-new", "reopen"}


@pytest.mark.skipif(not os.environ.get("RECORD_HISTORIES"),
                    reason="set RECORD_HISTORIES=<label>, e.g. v2, to record histories")
async def test_record_histories(http, client, db, supervisor, worker):
    """Records one history per path into tests/histories/<label>-<path>.json, beside the
    older ones (they keep proving that old runs still replay): see docs/versioning.md."""
    label = os.environ["RECORD_HISTORIES"]
    sop = await make_confirmed_sop(http, supervisor)
    sup = Actor(supervisor.id, Role.SUPERVISOR)

    async def record(name: str, actor: Actor, run_ids: list[str]) -> None:
        handle = client.get_workflow_handle(workflow_id_for(actor.id))
        for i, run_id in enumerate(run_ids):
            h = client.get_workflow_handle(handle.id, run_id=run_id)
            await h.result()  if i < len(run_ids) - 1 else None
            history = await h.fetch_history()
            suffix = f".{i}" if len(run_ids) > 1 else ""
            (HISTORIES / f"{label}-{name}{suffix}.json").write_text(
                json.dumps(json.loads(history.to_json()), indent=1))

    ctx = own_context(client, db, worker.task_queue)
    a = Actor(uuid.uuid4(), Role.WORKER)
    v = await uc.start_session(ctx, a, uuid.UUID(sop["id"]))
    step = uuid.UUID(v["current_step_id"])
    v = await uc.submit_check(ctx, a, uuid.UUID(v["id"]), step_id=step,
                              result=CheckResult.FAILED, value=None, notes="stuck",
                              evidence_uri=None, check_id=None)
    for _ in range(3):
        v = await pass_current(ctx, a, v)
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("failed-check-then-complete", a, [v["run_id"]])

    a = Actor(uuid.uuid4(), Role.WORKER)
    v = await uc.start_session(ctx, a, uuid.UUID(sop["id"]))
    v = await pass_current(ctx, a, v)
    v = await uc.complete_session(ctx, a, uuid.UUID(v["id"]))
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("manual-complete", a, [v["run_id"]])

    a = Actor(uuid.uuid4(), Role.WORKER)
    v = await uc.start_session(ctx, a, uuid.UUID(sop["id"]))
    await uc.pause_session(ctx, a, uuid.UUID(v["id"]))
    await uc.resume_session(ctx, a, uuid.UUID(v["id"]))
    v = await uc.cancel_session(ctx, a, uuid.UUID(v["id"]), "machine down")
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("pause-resume-cancel", a, [v["run_id"]])

    a = Actor(uuid.uuid4(), Role.WORKER)
    v = await uc.start_session(ctx, a, uuid.UUID(sop["id"]))
    first = v["run_id"]
    v = await uc.complete_session(ctx, a, uuid.UUID(v["id"]))
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    v = await uc.reopen_session(ctx, sup, uuid.UUID(v["id"]), "missed step", None)
    v = await uc.complete_session(ctx, a, uuid.UUID(v["id"]))
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("reopen", a, [first, v["run_id"]])

    can = own_context(client, db, worker.task_queue, continue_as_new_after_updates=2)
    a = Actor(uuid.uuid4(), Role.WORKER)
    v = await uc.start_session(can, a, uuid.UUID(sop["id"]))
    first = v["run_id"]
    for _ in range(3):
        v = await pass_current(can, a, v)
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("continue-as-new", a, [first])


async def test_a_late_command_for_a_previous_session_never_lands_on_the_next_one(
        http, client, db, supervisor, worker):
    """The workflow ID is per worker: a request that read "X is active" just before X closed
    and Y started must not cancel (or check) Y."""
    from workflows.client import RunClosed
    from workflows.messages import SessionCommand

    sop = await make_confirmed_sop(http, supervisor)
    ctx = own_context(client, db, worker.task_queue)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    x = await uc.start_session(ctx, actor, uuid.UUID(sop["id"]))
    await uc.complete_session(ctx, actor, uuid.UUID(x["id"]))
    y = await uc.start_session(ctx, actor, uuid.UUID(sop["id"]))
    with pytest.raises(RunClosed):
        await ctx.workflows.command(actor.id, "cancel", SessionCommand(
            actor_id=actor.id, session_id=uuid.UUID(x["id"]), reason="late"))
    live = await ctx.workflows.query(actor.id)
    assert live["id"] == y["id"] and live["status"] == "in_progress"
    # and through the use case the late cancel is judged on X's stored copy: 409
    from domain.errors import WrongState
    with pytest.raises(WrongState):
        await uc.cancel_session(ctx, actor, uuid.UUID(x["id"]), "late")
    await uc.cancel_session(ctx, actor, uuid.UUID(y["id"]), "test over")


async def test_a_start_whose_answer_was_lost_is_pointed_at_only_once_recorded(
        http, client, db, supervisor):
    """A start's transaction can fail after its run began (a database outage): the run then
    records its session by itself. A second start meanwhile gets 503, never a 409 naming a
    session nobody can read; once recorded, the 409 names it."""
    from domain.errors import ActiveSessionExists, Unavailable
    from domain.work_session import WorkSession
    from persistence import sops as sop_repo

    sop = await make_confirmed_sop(http, supervisor)
    queue = f"lost-start-{uuid.uuid4()}"
    ctx = own_context(client, db, queue)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    async with db.read() as conn:
        plan = (await sop_repo.get(conn, uuid.UUID(sop["id"]))).plan()
    started = WorkSession.start(uuid.uuid4(), actor.id, plan, ctx.clock())
    await ctx.workflows.start(plan, started.state)  # no row: its transaction "failed"

    with pytest.raises(Unavailable, match="still being recorded"):
        await uc.start_session(ctx, actor, uuid.UUID(sop["id"]))
    async with build_worker(client, db, queue):  # the run can now save its session
        await eventually_stored(db, started.state.id)
        with pytest.raises(ActiveSessionExists) as e:
            await uc.start_session(ctx, actor, uuid.UUID(sop["id"]))
        assert e.value.extra["existing_session_id"] == str(started.state.id)
        await uc.cancel_session(ctx, actor, started.state.id, "test over")


async def eventually_stored(db, session_id: uuid.UUID) -> None:
    async def stored() -> bool:
        async with db.read() as conn:
            return await repo.get(conn, session_id, with_checks=False) is not None
    await eventually(stored)


async def test_the_worker_sandbox_still_refuses_non_deterministic_calls(client):
    """The worker's sandbox must keep refusing what would break replay (passing every module
    through, tried for memory, silently switched that off)."""
    from temporalio.worker import Worker

    from tests.clock_probe import ReadsTheWallClock

    queue = f"sandbox-{uuid.uuid4()}"
    async with Worker(client, task_queue=queue, workflows=[ReadsTheWallClock],
                      workflow_runner=SANDBOX):
        handle = await client.start_workflow(ReadsTheWallClock.run, id=queue, task_queue=queue)

        async def task_failed() -> str | None:
            async for event in handle.fetch_history_events():
                if event.HasField("workflow_task_failed_event_attributes"):
                    return event.workflow_task_failed_event_attributes.failure.message
            return None
        message = await eventually(task_failed)
        await handle.terminate("test over")
    assert "Cannot access datetime.datetime.now" in message
