"""The session workflow against a real Temporal server: worker restarts, continue-as-new,
concurrent resends, and replay of recorded histories (non-determinism guard)."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer, Worker

from application import sessions as uc
from application.authz import Actor, Role
from application.context import Context
from domain.errors import Unavailable
from domain.sop import CheckResult
from orchestration.client import SessionWorkflows
from persistence.audit import AuditLog
from persistence.sessions import SessionRepository
from persistence.uow import SqlStore
from tests.conftest import eventually, make_confirmed_sop, on, shown, sop_body, submission
from worker import SANDBOX, build_worker
from workflows.evidence_cleanup import CleanupInput, EvidenceCleanupWorkflow
from workflows.messages import workflow_id_for
from workflows.nonconformance import NonconformanceWorkflow
from workflows.work_session import WorkSessionWorkflow

HISTORIES = Path(__file__).parent / "histories"


def own_context(client, db, task_queue: str, **kw) -> Context:
    return Context(store=SqlStore(db), workflows=SessionWorkflows(
        client, task_queue, timeout=15, idle_timeout=timedelta(hours=8),
        escalate_after_failures=3, **kw))


async def pass_current(ctx: Context, actor: Actor, view: dict, check_id=None) -> dict:
    step = view["current_step"]
    kind = step["check"]["kind"]
    return shown(await uc.submit_check(ctx, await on(ctx, actor, uuid.UUID(view["id"])),
        submission(step_id=uuid.UUID(step["id"]),
                   result=CheckResult.PASSED if kind == "confirm" else None,
                   value=0.1 if kind == "measurement" else None, check_id=check_id)))


async def stored_check_ids(db, session_id: str) -> list[str]:
    async with db.read() as conn:
        row = await SessionRepository(conn).load(uuid.UUID(session_id))
    return [str(c.id) for c in row.state.checks]


async def test_worker_restart_mid_session_loses_no_check(http, client, db, supervisor):
    sop = await make_confirmed_sop(http, supervisor, sop_body((3, 2)))
    queue = f"restart-{uuid.uuid4()}"
    ctx = own_context(client, db, queue)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    acknowledged = []

    async with build_worker(client, db, queue):
        view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
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
        live = shown(await ctx.workflows.live(actor.id))
    assert [c["id"] for c in live["checks"]] == acknowledged
    assert await stored_check_ids(db, view["id"]) == acknowledged
    assert live["current_step"]["index"] == 3


async def test_continue_as_new_keeps_checks_and_idempotency(http, client, db, supervisor,
                                                            worker):
    sop = await make_confirmed_sop(http, supervisor, sop_body((3, 3), measurement_at=None))
    ctx = own_context(client, db, worker.task_queue, continue_as_new_after_updates=2)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
    first_run = view["run_id"]
    first_check = uuid.uuid4()
    view = await pass_current(ctx, actor, view, check_id=first_check)
    view = await pass_current(ctx, actor, view)
    view = await pass_current(ctx, actor, view)  # lands on the next run
    live = shown(await ctx.workflows.live(actor.id))
    assert live["run_id"] != first_run
    assert len(live["checks"]) == 3 and live["current_step"]["index"] == 3
    # the first check_id, resent after the rollover, is still recognised
    again = shown(await uc.submit_check(ctx, await on(ctx, actor, uuid.UUID(view["id"])),
        submission(step_id=uuid.UUID(live["checks"][0]["step_id"]), result=CheckResult.PASSED,
                   check_id=first_check)))
    assert len(again["checks"]) == 3
    assert len(await stored_check_ids(db, view["id"])) == 3
    desc = await client.get_workflow_handle(workflow_id_for(actor.id)).describe()
    assert desc.run_id != first_run


async def test_a_change_whose_api_died_before_writing_it_reaches_the_read_model_once(
        http, client, db, supervisor, worker):
    """The API writes each change it answers; one that died between the update and its
    write leaves that to the run, which writes what it holds once a change has waited
    `write_behind`: the check, and its audit entry with the worker and request id the API
    had sent. A resend afterwards records nothing twice."""
    from domain.changes import AuditFacts

    sop = await make_confirmed_sop(http, supervisor, sop_body((3,), measurement_at=None))
    ctx = own_context(client, db, worker.task_queue, write_behind=timedelta(seconds=1))
    actor = Actor(uuid.uuid4(), Role.WORKER)
    view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
    sid = uuid.UUID(view["id"])
    cid = uuid.uuid4()
    facts = AuditFacts("check_submitted", actor.id, "worker", {"check_id": str(cid)},
                       "req-died-before-its-write")
    # the update alone, as an API that dies before its write leaves it
    change = await ctx.workflows.submit_check(actor.id, sid, submission(
        check_id=cid, step_id=uuid.UUID(view["current_step_id"]),
        result=CheckResult.PASSED), facts)
    assert [c.id for c in change.checks] == [cid]

    async def written():
        return await stored_check_ids(db, view["id"]) == [str(cid)] or None

    await eventually(written, within=10)
    entries = await audit_of(db, sid)
    assert [(e["action"], e["actor_id"], e["request_id"]) for e in entries] == [
        ("session_start", actor.id, None),
        ("check_submitted", actor.id, "req-died-before-its-write")]
    # the device resends: the same session, nothing recorded twice
    again = await pass_current(ctx, actor, view, check_id=cid)
    assert [c["id"] for c in again["checks"]] == [str(cid)]
    assert len(await audit_of(db, sid)) == 2
    # a closing run writes what it holds before it ends, whatever the API did
    done = await ctx.workflows.command(actor.id, "complete", sid, None,
                                       AuditFacts("session_complete", actor.id, "worker"))
    assert done.state.status.value == "completed"
    await asyncio.wait_for(client.get_workflow_handle(workflow_id_for(actor.id)).result(), 10)
    async with db.read() as conn:
        row = await SessionRepository(conn).load(sid)
    assert row.state.status.value == "completed" and row.state.version == done.version
    assert [c.id for c in row.state.checks] == [cid]
    assert [e["action"] for e in await audit_of(db, sid)] == [
        "session_start", "check_submitted", "session_complete"]


async def audit_of(db, session_id: uuid.UUID) -> list[dict]:
    async with db.read() as conn:
        return (await AuditLog(conn).list_page(session_id, 100, 0))[0]


async def test_concurrent_resends_of_one_check_across_a_worker_restart_apply_once(
        http, client, db, supervisor):
    sop = await make_confirmed_sop(http, supervisor)
    queue = f"resend-{uuid.uuid4()}"
    ctx = own_context(client, db, queue)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    cid = uuid.uuid4()
    async with build_worker(client, db, queue):
        view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
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


def _histories() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


@pytest.mark.parametrize("path", _histories(), ids=lambda p: p.stem)
async def test_recorded_history_replays_without_nondeterminism(path: Path):
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    replayer = Replayer(workflows=[WorkSessionWorkflow, EvidenceCleanupWorkflow,
                                   NonconformanceWorkflow],
                        workflow_runner=SANDBOX, data_converter=pydantic_data_converter)
    await replayer.replay_workflow(history)


def test_histories_are_recorded_for_every_path():
    assert {p.stem.split(".")[0].split("-", 1)[1] for p in _histories()} >= {
        "failed-check-then-complete", "manual-complete", "pause-resume-cancel",
        "continue-as-new", "reopen", "escalation", "idle-pause-and-write-behind",
        "checks-with-evidence", "evidence-cleanup", "verified-step", "nonconformance-hold",
        "nonconformance", "nonconformance-missed-containment"}


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
    v = shown(await uc.start_session(ctx, a, uuid.UUID(sop["id"])))
    step = uuid.UUID(v["current_step_id"])
    v = shown(await uc.submit_check(ctx, await on(ctx, a, uuid.UUID(v["id"])),
        submission(step_id=step, result=CheckResult.FAILED, notes="stuck", check_id=None)))
    for _ in range(3):
        v = await pass_current(ctx, a, v)
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("failed-check-then-complete", a, [v["run_id"]])

    a = Actor(uuid.uuid4(), Role.WORKER)
    v = shown(await uc.start_session(ctx, a, uuid.UUID(sop["id"])))
    v = await pass_current(ctx, a, v)
    v = shown(await uc.complete_session(ctx, await on(ctx, a, uuid.UUID(v["id"]))))
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("manual-complete", a, [v["run_id"]])

    a = Actor(uuid.uuid4(), Role.WORKER)
    v = shown(await uc.start_session(ctx, a, uuid.UUID(sop["id"])))
    shown(await uc.pause_session(ctx, await on(ctx, a, uuid.UUID(v["id"]))))
    shown(await uc.resume_session(ctx, await on(ctx, a, uuid.UUID(v["id"]))))
    v = shown(await uc.cancel_session(ctx, await on(ctx, a, uuid.UUID(v["id"])), "machine down"))
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("pause-resume-cancel", a, [v["run_id"]])

    a = Actor(uuid.uuid4(), Role.WORKER)
    v = shown(await uc.start_session(ctx, a, uuid.UUID(sop["id"])))
    first = v["run_id"]
    v = shown(await uc.complete_session(ctx, await on(ctx, a, uuid.UUID(v["id"]))))
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    v = shown(await uc.reopen_session(
        ctx, await on(ctx, sup, uuid.UUID(v["id"]), "session.override"), "missed step", None))
    v = shown(await uc.complete_session(ctx, await on(ctx, a, uuid.UUID(v["id"]))))
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("reopen", a, [first, v["run_id"]])

    can = own_context(client, db, worker.task_queue, continue_as_new_after_updates=2)
    a = Actor(uuid.uuid4(), Role.WORKER)
    v = shown(await uc.start_session(can, a, uuid.UUID(sop["id"])))
    first = v["run_id"]
    for _ in range(3):
        v = await pass_current(can, a, v)
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("continue-as-new", a, [first])

    a = Actor(uuid.uuid4(), Role.WORKER)
    v = shown(await uc.start_session(ctx, a, uuid.UUID(sop["id"])))
    for _ in range(3):
        v = shown(await uc.submit_check(ctx, await on(ctx, a, uuid.UUID(v["id"])),
            submission(step_id=uuid.UUID(v["current_step_id"]), result=CheckResult.FAILED,
                       check_id=None)))
    assert v["needs_attention"] is True
    v = await pass_current(ctx, a, v)
    v = shown(await uc.complete_session(ctx, await on(ctx, a, uuid.UUID(v["id"]))))
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("escalation", a, [v["run_id"]])

    quick = own_context(client, db, worker.task_queue, write_behind=timedelta(seconds=1))
    quick.workflows.idle_timeout = timedelta(seconds=3)
    a = Actor(uuid.uuid4(), Role.WORKER)
    v = shown(await uc.start_session(quick, a, uuid.UUID(sop["id"])))
    v = await pass_current(quick, a, v)

    async def idle_paused():
        return (shown(await quick.workflows.live(a.id)))["status"] == "paused"
    await eventually(idle_paused, within=15)
    v = shown(await uc.resume_session(quick, await on(quick, a, uuid.UUID(v["id"]))))
    v = shown(await uc.cancel_session(quick, await on(quick, a, uuid.UUID(v["id"])), "done"))
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("idle-pause-and-write-behind", a, [v["run_id"]])


@pytest.mark.skipif(not os.environ.get("RECORD_HISTORIES"),
                    reason="set RECORD_HISTORIES=<label>, e.g. v2, to record histories")
async def test_record_evidence_histories(http, client, db, supervisor, worker, evidence_dir):
    """Evidence files (v1.2): a session whose checks carry files (one failed with a photo,
    a resend, one passed with two), and a run of the evidence cleanup."""
    from persistence.files import DirectoryStore
    from tests.conftest import User
    from tests.evidence_files import jpeg, pdf

    label = os.environ["RECORD_HISTORIES"]

    async def record(name: str, workflow_id: str, run_id: str | None = None) -> None:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        (HISTORIES / f"{label}-{name}.json").write_text(
            json.dumps(json.loads(history.to_json()), indent=1))

    body = sop_body((3,), measurement_at=None)
    body["tasks"][0]["steps"][1]["check"]["evidence"] = "required"
    sop = await make_confirmed_sop(http, supervisor, body)
    ctx = own_context(client, db, worker.task_queue)
    a = Actor(uuid.uuid4(), Role.WORKER)
    v = shown(await uc.start_session(ctx, a, uuid.UUID(sop["id"])))
    files = []
    for data in (jpeg(), jpeg(), pdf()):
        r = await http.post(f"/api/v1/sessions/{v['id']}/evidence", content=data,
                            headers=User(a.id, "worker").h)
        assert r.status_code == 201, r.text
        files.append(uuid.UUID(r.json()["id"]))
    access = await on(ctx, a, uuid.UUID(v["id"]))
    step = uuid.UUID(v["current_step_id"])
    failed = uuid.uuid4()
    v = shown(await uc.submit_check(ctx, access, submission(
        step_id=step, result=CheckResult.FAILED, check_id=failed, evidence_ids=(files[0],))))
    v = shown(await uc.submit_check(ctx, access, submission(
        step_id=step, result=CheckResult.FAILED, check_id=failed, evidence_ids=(files[0],))))
    v = await pass_current(ctx, a, v)
    v = shown(await uc.submit_check(ctx, access, submission(
        step_id=uuid.UUID(v["current_step_id"]), result=CheckResult.PASSED,
        evidence_ids=(files[1], files[2]))))
    v = await pass_current(ctx, a, v)
    assert v["status"] == "completed" and [len(c["evidence"]) for c in v["checks"]] == \
        [1, 0, 2, 0]
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    await record("checks-with-evidence", workflow_id_for(a.id), v["run_id"])

    queue = f"record-cleanup-{uuid.uuid4()}"
    async with build_worker(client, db, queue, evidence=DirectoryStore(evidence_dir)):
        cleanup_id = f"evidence-cleanup-record-{uuid.uuid4()}"
        await client.execute_workflow(EvidenceCleanupWorkflow.run, CleanupInput(),
                                      id=cleanup_id, task_queue=queue)
    await record("evidence-cleanup", cleanup_id)


@pytest.mark.skipif(not os.environ.get("RECORD_HISTORIES"),
                    reason="set RECORD_HISTORIES=<label>, e.g. v2, to record histories")
async def test_record_verification_histories(http, client, db, supervisor, worker):
    """Second-person verification (v1.2 signatures): a passed check on a verify step waits
    (the idle timer cancelled, the patch marker recorded), a supervisor's `verified`
    signature releases it, the last step completes the session."""
    from datetime import UTC, datetime

    from domain.signature import Meaning

    label = os.environ["RECORD_HISTORIES"]
    body = sop_body((2,), measurement_at=None)
    body["tasks"][0]["steps"][0]["check"]["verify"] = True
    sop = await make_confirmed_sop(http, supervisor, body)
    ctx = own_context(client, db, worker.task_queue)
    a = Actor(uuid.uuid4(), Role.WORKER)
    boss = Actor(supervisor.id, Role.SUPERVISOR, auth_time=datetime.now(UTC))
    v = shown(await uc.start_session(ctx, a, uuid.UUID(sop["id"])))
    v = await pass_current(ctx, a, v)
    assert v["awaiting_verification"] is not None
    await uc.sign(ctx, await on(ctx, boss, uuid.UUID(v["id"]), "session.read"),
                  Meaning.VERIFIED, uuid.UUID(v["current_step_id"]), "seen done")
    v = shown(await ctx.workflows.live(a.id))
    v = await pass_current(ctx, a, v)
    assert v["status"] == "completed" and len(v["signatures"]) == 1
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    history = await client.get_workflow_handle(workflow_id_for(a.id),
                                               run_id=v["run_id"]).fetch_history()
    (HISTORIES / f"{label}-verified-step.json").write_text(
        json.dumps(json.loads(history.to_json()), indent=1))


@pytest.mark.skipif(not os.environ.get("RECORD_HISTORIES"),
                    reason="set RECORD_HISTORIES=<label>, e.g. v2, to record histories")
async def test_record_nonconformance_histories(http, client, db, supervisor, worker):
    """Nonconformances (v1.2): a failed check on a `hold` step opens an NC (the patch
    marker, the NC's workflow started as an abandoned child), the NC is contained (its
    workflow signals the session: released), closed (its workflow ends), and the session
    completes. Both histories are recorded."""
    from datetime import UTC, datetime

    from application import nonconformances as ncs
    from domain.nonconformance import Disposition
    from domain.sop import CheckResult as R
    from tests.test_nonconformances import nc_sop_body

    label = os.environ["RECORD_HISTORIES"]
    sop = await make_confirmed_sop(http, supervisor, nc_sop_body())
    ctx = own_context(client, db, worker.task_queue)
    a = Actor(uuid.uuid4(), Role.WORKER)
    boss = Actor(supervisor.id, Role.SUPERVISOR, auth_time=datetime.now(UTC))
    v = shown(await uc.start_session(ctx, a, uuid.UUID(sop["id"])))
    v = await pass_current(ctx, a, v)
    sid = uuid.UUID(v["id"])
    v = shown(await uc.submit_check(ctx, await on(ctx, a, sid), submission(
        step_id=uuid.UUID(v["current_step_id"]), result=R.FAILED)))
    nc_id = uuid.UUID(v["held"]["nonconformance_id"])
    access = await ncs.gate(ctx, boss, nc_id, "nc.manage")
    await ncs.contain(ctx, access, "locked out")

    async def released() -> bool:
        return shown(await ctx.workflows.live(a.id))["held"] is None
    await eventually(released)
    await ncs.close(ctx, access, Disposition.REWORK, "switch replaced")
    await client.get_workflow_handle(f"nonconformance-{nc_id}").result()
    v = await pass_current(ctx, a, shown(await ctx.workflows.live(a.id)))
    v = await pass_current(ctx, a, v)
    assert v["status"] == "completed"
    await client.get_workflow_handle(workflow_id_for(a.id)).result()
    for name, wid, run in (("nonconformance-hold", workflow_id_for(a.id), v["run_id"]),
                           ("nonconformance", f"nonconformance-{nc_id}", None)):
        history = await client.get_workflow_handle(wid, run_id=run).fetch_history()
        (HISTORIES / f"{label}-{name}.json").write_text(
            json.dumps(json.loads(history.to_json()), indent=1))


async def test_a_late_command_for_a_previous_session_never_lands_on_the_next_one(
        http, client, db, supervisor, worker):
    """The workflow ID is per worker: a request that read "X is active" just before X closed
    and Y started must not cancel (or check) Y."""
    from application.ports import RunClosed
    from domain.changes import AuditFacts

    sop = await make_confirmed_sop(http, supervisor)
    ctx = own_context(client, db, worker.task_queue)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    x = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
    shown(await uc.complete_session(ctx, await on(ctx, actor, uuid.UUID(x["id"]))))
    y = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
    with pytest.raises(RunClosed):
        await ctx.workflows.command(actor.id, "cancel", uuid.UUID(x["id"]), "late",
                                    AuditFacts("session_cancel", actor.id, "worker"))
    live = shown(await ctx.workflows.live(actor.id))
    assert live["id"] == y["id"] and live["status"] == "in_progress"
    # and through the use case the late cancel is judged on X's stored copy: 409
    from domain.errors import WrongState
    with pytest.raises(WrongState):
        shown(await uc.cancel_session(ctx, await on(ctx, actor, uuid.UUID(x["id"])), "late"))
    shown(await uc.cancel_session(ctx, await on(ctx, actor, uuid.UUID(y["id"])), "test over"))


async def test_a_start_whose_answer_was_lost_is_named_once_its_run_recorded_it(
        http, client, db, supervisor):
    """A start's write can fail after its run began (the API died, or its database): the
    run holds the start's change. A second start asks the run to write it now; while it
    cannot (here: no worker) it answers 503, never a 409 naming a session nobody can read;
    once the run wrote it, with the first start's audit entry, the 409 names it."""
    from domain.changes import AuditFacts, SessionChange
    from domain.errors import ActiveSessionExists, Unavailable
    from domain.work_session import BEGINNING, WorkSession
    from persistence.sops import SopRepository

    sop = await make_confirmed_sop(http, supervisor)
    queue = f"lost-start-{uuid.uuid4()}"
    ctx = own_context(client, db, queue)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    async with db.read() as conn:
        plan = (await SopRepository(conn).get(uuid.UUID(sop["id"]))).plan()
    started = WorkSession.start(uuid.uuid4(), actor.id, plan, ctx.clock())
    facts = AuditFacts("session_start", actor.id, "worker", {"sop_id": sop["id"]}, "req-1")
    await ctx.workflows.start(plan, started.state, SessionChange.of(  # and no write
        started.state, BEGINNING, [facts], started.state.started_at,
        workflow_id_for(actor.id), None))

    with pytest.raises(Unavailable, match="still being recorded"):
        shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
    async with build_worker(client, db, queue):
        with pytest.raises(ActiveSessionExists) as e:
            shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
        assert e.value.extra["existing_session_id"] == str(started.state.id)
        await eventually_stored(db, started.state.id)
        assert [(x["action"], x["request_id"]) for x in await audit_of(db, started.state.id)
                ] == [("session_start", "req-1")]
        shown(await uc.cancel_session(ctx, await on(ctx, actor, started.state.id), "test over"))


async def eventually_stored(db, session_id: uuid.UUID) -> None:
    async def stored() -> bool:
        async with db.read() as conn:
            return await SessionRepository(conn).load(session_id, with_checks=False) is not None
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


@workflow.defn(name="WorkSession", sandboxed=False)
class OlderWorkSession:
    """A session run as a worker older than the API answers it: it has no `snapshot`
    query (a deploy that replaced the API before the workers)."""

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.query
    def session(self) -> dict:
        return {}


async def test_a_current_session_asked_of_an_older_worker_is_503_not_500(client, db):
    queue = f"older-{uuid.uuid4()}"
    ctx = own_context(client, db, queue)
    worker_id = uuid.uuid4()
    async with Worker(client, task_queue=queue, workflows=[OlderWorkSession]):
        handle = await client.start_workflow(OlderWorkSession.run, id=workflow_id_for(worker_id),
                                             task_queue=queue)
        try:
            with pytest.raises(Unavailable, match="could not answer"):
                await ctx.workflows.live(worker_id)
        finally:
            await handle.terminate()
