"""The write path (docs/architecture.md): on every path a change and its audit entry are
recorded together or not at all, also when the database fails between the run taking a change
and the API's write, and when the API process is SIGKILLed in that window; a late write from
a closed run after approval changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio import activity
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.session_store import SessionStore
from application import sessions as uc
from application import sops as sop_uc
from application.authz import Actor, Role
from application.context import Context
from domain.changes import SessionChange
from domain.errors import ActiveSessionExists, DomainError, Unavailable
from domain.sop import CheckResult, SopStatus
from domain.work_session import BEGINNING, SessionStatus
from orchestration.client import SessionWorkflows
from persistence.audit import AuditLog
from persistence.sessions import SessionRepository
from persistence.sops import SopRepository
from persistence.tables import work_sessions
from persistence.uow import SqlStore
from tests.conftest import eventually, make_confirmed_sop, on, shown, sop_body, submission
from workflows.messages import WRITE_CHANGES_ACTIVITY, workflow_id_for

DATABASE = os.environ.get("WORKSESSION_TEST_DATABASE", "sqlite")


class Injected(Unavailable):
    """The database failing in the middle of the API's transaction."""


@contextlib.contextmanager
def database_fails_in_the_api(monkeypatch: pytest.MonkeyPatch, target: Any, name: str):
    """The API's next call of `target.name` runs its statements, then the transaction fails
    before it commits. The run's own writes (activities) are left alone."""
    original = getattr(target, name)
    failed: list[bool] = []

    async def failing(self: Any, *args: Any, **kw: Any) -> Any:
        result = await original(self, *args, **kw)
        if not activity.in_activity() and not failed:
            failed.append(True)
            raise Injected("injected: the database failed before the commit")
        return result

    monkeypatch.setattr(target, name, failing)
    try:
        yield failed
    finally:
        monkeypatch.setattr(target, name, original)


@pytest.fixture
def ctx(client, db, worker) -> Context:
    return Context(store=SqlStore(db), workflows=SessionWorkflows(
        client, worker.task_queue, timeout=15, idle_timeout=timedelta(hours=8),
        escalate_after_failures=3, write_behind=timedelta(seconds=1)))


async def record(db, session_id: uuid.UUID) -> tuple[Any, list[dict]]:
    """The session's row (None if not recorded) and its audit chain, read together."""
    row, entries, _ = await record_and_head(db, session_id)
    return row, entries


async def record_and_head(db, session_id: uuid.UUID) -> tuple[Any, list[dict], int | None]:
    async with db.read() as conn:
        if DATABASE == "postgresql":  # one snapshot for the three reads, as on SQLite
            await conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        row = await SessionRepository(conn).load(session_id)
        entries = (await AuditLog(conn).list_page(session_id, 100, 0))[0]
        head = (await conn.execute(select(work_sessions.c.audit_seq).where(
            work_sessions.c.id == session_id))).scalar_one_or_none()
    return row, entries, head


async def assert_consistent(db, session_id: uuid.UUID) -> tuple[Any, list[dict]]:
    """What a reader of the record would check: the chain is whole and as long as the
    session says; every accepted change is there once (its version in its dedup key) and the
    row is the newest of them; each stored check has one accepted entry, and no entry names
    a check that is not stored."""
    row, entries, head = await record_and_head(db, session_id)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    if row is None:
        assert entries == []
        return row, entries
    assert head == len(entries)
    keys = [e["dedup_key"] for e in entries if e["dedup_key"]]
    assert len(keys) == len(set(keys))
    versions = {int(k.split("@")[1].split("#")[0]) for k in keys}
    assert max(versions) == row.state.version
    checked = sorted(e["detail"]["check_id"] for e in entries
                     if e["action"] == "check_submitted" and e["outcome"] == "accepted")
    assert checked == sorted(str(c.id) for c in row.state.checks)
    return row, entries


async def wait_recorded(db, session_id: uuid.UUID, version: int) -> tuple[Any, list[dict]]:
    async def there():
        row, _ = await record(db, session_id)
        return row is not None and row.state.version >= version
    await eventually(there, within=15)
    return await assert_consistent(db, session_id)


def worker_actor() -> Actor:
    return Actor(uuid.uuid4(), Role.WORKER)


async def started(ctx: Context, sop: dict, actor: Actor, request_id: str | None = None
                  ) -> dict:
    return shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"]), request_id))


async def passed(ctx: Context, actor: Actor, view: dict, check_id: uuid.UUID | None = None,
                 result: CheckResult = CheckResult.PASSED) -> dict:
    return shown(await uc.submit_check(ctx, await on(ctx, actor, view["id"]),
        submission(step_id=uuid.UUID(view["current_step_id"]), result=result, check_id=check_id)))


async def completed(ctx: Context, actor: Actor, view: dict) -> dict:
    while view["status"] != "completed":
        view = await passed(ctx, actor, view)
    await ctx.workflows.wait_closed(actor.id, view["run_id"], 10)
    return view


async def a_completed_session(http, supervisor, ctx: Context, steps: int
                              ) -> tuple[Actor, Actor, dict]:
    """A worker's session of `steps` steps, completed and its run closed; and a supervisor."""
    sop = await make_confirmed_sop(http, supervisor, sop_body((steps,), measurement_at=None))
    actor = worker_actor()
    view = await completed(ctx, actor, await started(ctx, sop, actor))
    return actor, Actor(supervisor.id, Role.SUPERVISOR, auth_time=datetime.now(UTC)), view


# ---- the run takes the change: the API's write fails, the run's write records it ----------
# Each path brings a session to where it can take the change, and gives the action taking it.
RUN_PATHS: dict[str, Callable[[Context, Actor, dict], Awaitable[tuple[dict, Callable]]]] = {}


def run_path(name: str):
    def register(fn):
        RUN_PATHS[name] = fn
        return fn
    return register


@run_path("check passed")
async def _(ctx, actor, view):
    return view, lambda access: passed(ctx, actor, view)


@run_path("check failed")
async def _(ctx, actor, view):
    return view, lambda access: passed(ctx, actor, view, result=CheckResult.FAILED)


@run_path("escalation")
async def _(ctx, actor, view):
    for _ in range(2):
        view = await passed(ctx, actor, view, result=CheckResult.FAILED)
    return view, lambda access: passed(ctx, actor, view, result=CheckResult.FAILED)


@run_path("pause")
async def _(ctx, actor, view):
    return view, lambda access: uc.pause_session(ctx, access)


@run_path("resume")
async def _(ctx, actor, view):
    view = shown(await uc.pause_session(ctx, await on(ctx, actor, view["id"])))
    return view, lambda access: uc.resume_session(ctx, access)


@run_path("complete")
async def _(ctx, actor, view):
    return view, lambda access: uc.complete_session(ctx, access)


@run_path("cancel")
async def _(ctx, actor, view):
    return view, lambda access: uc.cancel_session(ctx, access, "broken")


@pytest.mark.parametrize("path", list(RUN_PATHS))
async def test_a_change_the_run_took_is_recorded_with_its_entry_once_whatever_the_api_write(
        path, http, supervisor, ctx, db, monkeypatch):
    sop = await make_confirmed_sop(http, supervisor, sop_body((3,), measurement_at=None))
    actor = worker_actor()
    view = await started(ctx, sop, actor)
    sid = uuid.UUID(view["id"])
    view, action = await RUN_PATHS[path](ctx, actor, view)
    row, before = await assert_consistent(db, sid)
    access = await on(ctx, actor, sid)
    with database_fails_in_the_api(monkeypatch, SessionRepository, "write_change") as failed:
        with pytest.raises(Unavailable):
            await action(access)
    assert failed
    # nothing half-written: neither the change nor its entry (a closing change may already
    # be there whole: the run writes what it holds as it closes, at once)
    now, entries = await assert_consistent(db, sid)
    if path not in ("complete", "cancel"):
        assert now.state.version == row.state.version and entries == before
    # the run holds the change and writes it itself, with the worker's entry
    live = shown(await ctx.workflows.live(actor.id)) if path not in ("complete", "cancel") else None
    after, entries = await wait_recorded(db, sid, row.state.version + 1)
    if live is not None:
        assert after.state.status.value == live["status"]
        assert [str(c.id) for c in after.state.checks] == [c["id"] for c in live["checks"]]
    new = entries[len(before):]
    assert new and new[0]["actor_id"] == actor.id and new[0]["actor_role"] == "worker"
    if path == "escalation":
        assert [(e["action"], e["actor_role"]) for e in new] == [
            ("check_submitted", "worker"), ("session_escalated", "system")]
        assert after.state.needs_attention is True
    if after.state.status.value in ("in_progress", "paused"):
        shown(await uc.cancel_session(ctx, await on(ctx, actor, sid), "test over"))


async def test_a_start_whose_write_failed_is_recorded_by_its_run_with_its_entry(
        http, supervisor, ctx, db, monkeypatch):
    sop = await make_confirmed_sop(http, supervisor)
    actor = worker_actor()
    with database_fails_in_the_api(monkeypatch, SessionRepository, "write_change"):
        with pytest.raises(Unavailable):
            await started(ctx, sop, actor, request_id="req-start")
    running = await ctx.workflows.running(actor.id)
    assert running is not None
    row, entries = await record(db, running.session_id)
    assert row is None and entries == []  # neither, for now
    row, entries = await wait_recorded(db, running.session_id, 0)
    assert [(e["action"], e["actor_id"], e["request_id"]) for e in entries] == [
        ("session_start", actor.id, "req-start")]
    shown(await uc.cancel_session(ctx, await on(ctx, actor, running.session_id), "test over"))


async def test_a_reopen_whose_write_failed_is_recorded_by_its_new_run(
        http, supervisor, ctx, db, monkeypatch):
    actor, boss, view = await a_completed_session(http, supervisor, ctx, steps=2)
    sid = uuid.UUID(view["id"])
    row, before = await assert_consistent(db, sid)
    with database_fails_in_the_api(monkeypatch, SessionRepository, "write_change"):
        with pytest.raises(Unavailable):
            shown(await uc.reopen_session(ctx, await on(ctx, boss, sid, "session.override"),
                                    "missed a step", None))
    now, entries = await assert_consistent(db, sid)
    assert now.state.status.value == "completed" and entries == before
    after, entries = await wait_recorded(db, sid, row.state.version + 1)
    assert after.state.status.value == "in_progress"
    assert entries[-1]["action"] == "session_reopen" and entries[-1]["actor_id"] == boss.id
    shown(await uc.cancel_session(ctx, await on(ctx, actor, sid), "test over"))


# ---- changes no run takes: all or nothing, and a retry records them once --------------------
async def test_approval_whose_write_fails_changes_nothing_and_a_retry_locks_once(
        http, supervisor, ctx, db, monkeypatch):
    actor, boss, view = await a_completed_session(http, supervisor, ctx, steps=1)
    sid = uuid.UUID(view["id"])
    row, before = await assert_consistent(db, sid)
    access = await on(ctx, boss, sid, "session.override")
    with database_fails_in_the_api(monkeypatch, SessionRepository, "write_change"):
        with pytest.raises(Unavailable):
            shown(await uc.approve_session(ctx, access))
    now, entries = await assert_consistent(db, sid)
    assert not now.state.locked and entries == before
    assert (shown(await uc.approve_session(ctx, access)))["locked"] is True
    now, entries = await assert_consistent(db, sid)
    assert now.state.locked and [e["action"] for e in entries[len(before):]] == [
        "signed", "session_approve"]  # the approval is the approver's signature


@pytest.mark.parametrize("locked", [False, True], ids=["wrong state", "locked"])
async def test_a_rejected_attempt_whose_entry_fails_is_answered_503_and_records_nothing(
        locked, http, supervisor, ctx, db, monkeypatch):
    sop = await make_confirmed_sop(http, supervisor, sop_body((1,), measurement_at=None))
    actor = worker_actor()
    view = await started(ctx, sop, actor)
    sid = uuid.UUID(view["id"])
    if locked:
        await completed(ctx, actor, view)
        boss = Actor(supervisor.id, Role.SUPERVISOR, auth_time=datetime.now(UTC))
        shown(await uc.approve_session(ctx, await on(ctx, boss, sid, "session.override")))
    _, before = await assert_consistent(db, sid)
    access = await on(ctx, actor, sid)
    with database_fails_in_the_api(monkeypatch, SessionRepository, "record_rejection"):
        with pytest.raises(Unavailable):
            shown(await uc.resume_session(ctx, access))  # in progress, or locked: a 409 to record
    _, entries = await assert_consistent(db, sid)
    assert entries == before
    with pytest.raises(DomainError):
        shown(await uc.resume_session(ctx, access))
    _, entries = await assert_consistent(db, sid)
    assert [(e["action"], e["outcome"]) for e in entries[len(before):]] == [
        ("modification_rejected" if locked else "session_resume", "rejected")]
    if not locked:
        shown(await uc.cancel_session(ctx, access, "test over"))


SOP_ACTIONS = ["create", "edit", "confirm", "revise", "delete"]


@pytest.mark.parametrize("action", SOP_ACTIONS)
async def test_a_catalog_change_and_its_entry_are_one_transaction(
        action, http, supervisor, ctx, db, monkeypatch):
    boss = Actor(supervisor.id, Role.SUPERVISOR, auth_time=datetime.now(UTC))
    content = sop_body((1,), measurement_at=None)
    draft = await sop_uc.create_sop(ctx, boss, content)
    confirmed = await sop_uc.confirm_sop(ctx, boss, (await sop_uc.create_sop(
        ctx, boss, content)).id)
    run = {
        "create": lambda: sop_uc.create_sop(ctx, boss, content, "req-x"),
        "edit": lambda: sop_uc.update_sop(ctx, boss, draft.id, {**content, "title": "New"},
                                          "req-x"),
        "confirm": lambda: sop_uc.confirm_sop(ctx, boss, draft.id, "req-x"),
        "revise": lambda: sop_uc.revise_sop(ctx, boss, confirmed.id, "req-x"),
        "delete": lambda: sop_uc.delete_sop(ctx, boss, draft.id, "req-x"),
    }[action]
    family = confirmed.family_id if action == "revise" else draft.family_id

    async def snapshot():
        async with db.read() as conn:
            sops = await SopRepository(conn).list_page(None, 100, 0)
            drafts = await SopRepository(conn).list_page(SopStatus.DRAFT, 100, 0)
            log = await conn.exec_driver_sql(
                "SELECT count(*) FROM audit_log WHERE chain LIKE 'sop:%'")
            return (sops[1], drafts[1],
                    (await SopRepository(conn).get(draft.id)), log.scalar_one())

    before = await snapshot()
    with database_fails_in_the_api(monkeypatch, AuditLog, "append_to_sop_family"):
        with pytest.raises(Unavailable):
            await run()
    assert await snapshot() == before  # neither the change nor its entry
    done = await run()
    if action == "create":
        family = done.family_id
    after = await snapshot()
    assert after[3] == before[3] + 1
    async with db.read() as conn:
        rows = (await conn.exec_driver_sql(
            "SELECT action, request_id, seq FROM audit_log WHERE chain = "
            + ("?" if DATABASE == "sqlite" else "$1") + " ORDER BY seq",
            (f"sop:{family}",))).all()
    assert rows[-1][0] == f"sop_{action}" and rows[-1][1] == "req-x"
    assert [r[2] for r in rows] == list(range(1, len(rows) + 1))


# ---- the run's own changes ---------------------------------------------------------------
async def test_an_idle_pause_is_recorded_by_the_run_with_a_system_entry(http, supervisor,
                                                                       client, db, worker):
    ctx = Context(store=SqlStore(db), workflows=SessionWorkflows(
        client, worker.task_queue, timeout=15, idle_timeout=timedelta(seconds=2),
        escalate_after_failures=3))
    sop = await make_confirmed_sop(http, supervisor)
    actor = worker_actor()
    view = await started(ctx, sop, actor)
    sid = uuid.UUID(view["id"])
    row, entries = await wait_recorded(db, sid, 1)
    assert row.state.status.value == "paused" and row.state.paused_reason == "idle"
    assert [(e["action"], e["actor_role"], e["actor_id"]) for e in entries] == [
        ("session_start", "worker", actor.id), ("session_pause", "system", None)]
    shown(await uc.cancel_session(ctx, await on(ctx, actor, sid), "test over"))


# ---- late writes -------------------------------------------------------------------------
async def test_a_late_write_from_a_closed_run_after_approval_changes_neither_version_nor_lock(
        http, supervisor, ctx, db, client):
    actor, boss, view = await a_completed_session(http, supervisor, ctx, steps=2)
    sid = uuid.UUID(view["id"])
    approved = shown(await uc.approve_session(ctx, await on(ctx, boss, sid, "session.override")))
    row, before = await assert_consistent(db, sid)
    assert row.state.locked
    # what the closed run wrote, exactly as its activity received it: delivered again late
    history = await client.get_workflow_handle(workflow_id_for(actor.id),
                                               run_id=view["run_id"]).fetch_history()
    batches = [pydantic_data_converter.payload_converter.from_payloads(
        e.activity_task_scheduled_event_attributes.input.payloads, [list[SessionChange]])[0]
        for e in history.events if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name
        == WRITE_CHANGES_ACTIVITY]
    late = [c for batch in batches for c in batch]
    assert late and max(c.version for c in late) < row.state.version
    assert await SessionStore(db).write_changes(late) == 0
    # and one that never reached the database, as old as the run's start
    lost = SessionChange.of(late[0].state, BEGINNING, late[0].entries, late[0].at,
                            late[0].workflow_id, late[0].run_id)
    lost.entries = [type(e)(e.action, e.actor_id, e.actor_role, {"late": True}, "late")
                    for e in lost.entries]
    lost.state.version = row.state.version - 1
    # and one newer than the approval, from a run that should not exist (a reopen that
    # lost to the approval, its run not ended): a locked session takes no change at all
    rogue = SessionChange.of(dataclasses.replace(
        late[-1].state, version=row.state.version + 1, status=SessionStatus.IN_PROGRESS),
        BEGINNING, late[-1].entries, late[-1].at, late[-1].workflow_id, "a-reopen-that-lost")
    async with db.write() as conn:
        assert not await SessionRepository(conn).write_change(lost)
        assert not await SessionRepository(conn).write_change(rogue)
    now, entries = await record(db, sid)
    assert entries == before
    assert now.state.version == row.state.version and now.state.locked
    assert now.state.approved_by == boss.id
    assert approved["status"] == now.state.status.value == "completed"


# ---- the API process killed between the run taking a check and its write -------------------
@pytest.mark.faults
async def test_an_api_sigkilled_after_the_run_took_a_check_leaves_one_entry_by_the_run():
    from faults.stack import Stack, WriteOutage

    async with Stack(DATABASE, label="api-kill") as stack:
        sup = {"Authorization": f"Bearer {stack.token('supervisor')}"}
        worker_id = uuid.uuid4()
        me = {"Authorization": f"Bearer {stack.token('worker', worker_id)}"}
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
            r = await http.post("/api/v1/sops", json=sop_body((2,), measurement_at=None),
                                headers=sup)
            sop_id = r.json()["id"]
            await http.post(f"/api/v1/sops/{sop_id}/confirm", headers=sup)
            view = (await http.post("/api/v1/sessions", json={"sop_id": sop_id},
                                    headers=me)).json()
            check_id = str(uuid.uuid4())
            body = {"step_id": view["current_step_id"], "result": "passed",
                    "check_id": check_id}
            outage = WriteOutage(stack.db_url)
            await outage.begin()  # the API's write waits on the database...
            try:
                sent = asyncio.create_task(http.post(
                    f"/api/v1/sessions/{view['id']}/checks", json=body,
                    headers={**me, "X-Request-ID": "req-killed"}))
                handle = stack.client.get_workflow_handle(workflow_id_for(worker_id))

                async def taken():
                    return len((await handle.query("session"))["checks"]) == 1
                await eventually(taken, within=10)  # ...after the run took the check
                stack.api.kill()
                with pytest.raises(httpx.TransportError):
                    await sent
            finally:
                await outage.end()
            await stack._on_a_free_port(stack._start_api, "api_port")
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
            async def entries():
                r = await http.get(f"/api/v1/audit?session_id={view['id']}", headers=sup)
                found = [e for e in r.json()["items"] if e["action"] == "check_submitted"]
                return found or None
            found = await eventually(entries, within=30)
            assert [(e["actor_id"], e["request_id"], e["detail"]["check_id"])
                    for e in found] == [(str(worker_id), "req-killed", check_id)]
            # the device resends: the same answer, nothing recorded twice
            again = await http.post(f"/api/v1/sessions/{view['id']}/checks", json=body,
                                    headers=me)
            assert again.status_code == 200
            assert [c["id"] for c in again.json()["checks"]] == [check_id]
            assert len(await entries()) == 1


# ---- starts ------------------------------------------------------------------------------
async def test_two_starts_racing_after_a_cancel_answer_at_once_naming_the_winner(
        http, supervisor, ctx):
    """The previous session was just cancelled (its run may still be closing): of two
    starts at once one wins, and the other is told at once which session won — not the
    cancelled one, and not after waiting out the closing-run bound."""
    sop = await make_confirmed_sop(http, supervisor)
    for _ in range(3):
        actor = worker_actor()
        first = await started(ctx, sop, actor)
        shown(await uc.cancel_session(ctx, await on(ctx, actor, first["id"]), "wrong machine"))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        results = await asyncio.gather(*(started(ctx, sop, actor) for _ in range(2)),
                                       return_exceptions=True)
        took = loop.time() - t0
        won = [r for r in results if isinstance(r, dict)]
        lost = [r for r in results if isinstance(r, ActiveSessionExists)]
        assert len(won) == 1 and len(lost) == 1, results
        assert lost[0].extra["existing_session_id"] == won[0]["id"] != first["id"]
        assert took < uc.CLOSING_RUN_WAIT_SECONDS
        shown(await uc.cancel_session(ctx, await on(ctx, actor, won[0]["id"]), "test over"))


# ---- the contract's promise about the log ------------------------------------------------
async def test_a_client_rechecks_a_sessions_chain_from_the_audit_api_alone(
        http, supervisor, worker_user, confirmed_sop):
    """CONTRACT.md: hash = sha256(prev_hash + canonical JSON of the entry without its hash),
    keys sorted, separators `,` and `:`, UTF-8 unescaped; prev_hash the previous entry's in
    the same chain, 64 zeros first. Written out here from what GET /api/v1/audit returns."""
    import hashlib
    import json

    from tests.conftest import pass_step, start

    s = await start(http, worker_user, confirmed_sop)
    r = await http.post(f"/api/v1/sessions/{s['id']}/checks", headers=worker_user.h, json={
        "step_id": s["current_step_id"], "result": "failed", "notes": "Prüfung ✓ «1»"})
    assert r.status_code == 200, r.text
    s = await pass_step(http, worker_user, r.json())
    assert (await http.post(f"/api/v1/sessions/{s['id']}/resume",
                            headers=worker_user.h)).status_code == 409  # a refusal, audited
    entries = (await http.get(f"/api/v1/audit?session_id={s['id']}&limit=100",
                              headers=supervisor.h)).json()["items"]
    assert [e["action"] for e in entries] == [
        "session_start", "check_submitted", "check_submitted", "session_resume"]
    prev = "0" * 64
    for seq, e in enumerate(entries, start=1):
        assert (e["chain"], e["seq"], e["prev_hash"]) == (f"session:{s['id']}", seq, prev)
        body = {k: v for k, v in e.items() if k != "hash"}
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256((prev + text).encode()).hexdigest() == e["hash"]
        prev = e["hash"]
    await http.post(f"/api/v1/sessions/{s['id']}/cancel", headers=worker_user.h,
                    json={"reason": "test over"})
