"""Electronic signatures (CONTRACT.md, "Electronic signatures"), over HTTP against a real
Temporal server and worker: re-authentication, who may sign what and when, second-person
verification (durable, not idle, decided once under concurrency), approval as a signature,
and the signature's binding to the audit chain."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from application import sessions as uc
from application.authz import Actor, Role
from domain.errors import (
    ReauthenticationRequired,
    StepAwaitsVerification,
    StepNotAwaitingVerification,
)
from tests.conftest import (
    SECRET,
    User,
    check,
    eventually,
    make_confirmed_sop,
    on,
    pass_step,
    shown,
    sop_body,
    start,
)
from tests.test_workflow import own_context, pass_current
from worker import build_worker
from worksession.tokens import mint

SIGN = "/api/v1/sessions/{}/signatures"


def token(user: User, auth_age: float | None = 0, **kw: Any) -> dict[str, str]:
    """`user`'s token, signed in `auth_age` seconds ago."""
    auth_time = None if auth_age is None else datetime.now(UTC) - timedelta(seconds=auth_age)
    return {"Authorization": "Bearer " + mint(SECRET, user.role, user.id, name=user.name,
                                              auth_time=auth_time, **kw)}


def verify_sop() -> dict[str, Any]:
    """Two confirm steps, the first needing second-person verification."""
    body = sop_body((2,), measurement_at=None)
    body["tasks"][0]["steps"][0]["check"]["verify"] = True
    return body


async def entries(http: httpx.AsyncClient, boss: User, sid: str) -> list[dict[str, Any]]:
    r = await http.get("/api/v1/audit", params={"session_id": sid, "limit": 100},
                       headers=boss.h)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def completed(http: httpx.AsyncClient, worker: User, sop: dict[str, Any]
                    ) -> dict[str, Any]:
    s = await start(http, worker, sop)
    while s["status"] != "completed":
        s = await pass_step(http, worker, s)
    return s


async def awaiting(http, worker: User, supervisor: User) -> dict[str, Any]:
    sop = await make_confirmed_sop(http, supervisor, verify_sop())
    s = await start(http, worker, sop)
    assert s["current_step"]["check"]["verify"] is True
    s = await pass_step(http, worker, s)
    return s


async def sign(http, user: User, sid: str, auth_age: float | None = 0,
               **body: Any) -> httpx.Response:
    return await http.post(SIGN.format(sid), json=body, headers=token(user, auth_age))


# ---- second-person verification --------------------------------------------------------------
async def test_a_verify_step_waits_for_a_second_person_then_moves_on(
        http, worker_user, supervisor, admin):
    supervisor.name = "Dana Reviewer"
    s = await awaiting(http, worker_user, supervisor)
    step = s["current_step_id"]
    wait = s["awaiting_verification"]
    assert wait["step_id"] == step and wait["check_id"] == s["checks"][-1]["id"]
    assert s["current_step"]["index"] == 0 and s["status"] == "in_progress"
    # further checks on the step: 409, a problem of its own
    r = await check(http, worker_user, s["id"], step)
    assert r.status_code == 409 and r.json()["type"].endswith("/awaiting-verification"), r.text
    # listed as awaiting
    r = await http.get("/api/v1/sessions", params={"awaiting_verification": "true",
                                                   "worker_id": str(worker_user.id)},
                       headers=supervisor.h)
    assert [i["id"] for i in r.json()["items"]] == [s["id"]]
    assert r.json()["items"][0]["awaiting_verification"]["step_id"] == step
    r = await http.get("/api/v1/sessions", params={"awaiting_verification": "false",
                                                   "worker_id": str(worker_user.id)},
                       headers=supervisor.h)
    assert r.json()["items"] == []
    head = (await entries(http, supervisor, s["id"]))[-1]["hash"]

    r = await sign(http, supervisor, s["id"], meaning="verified", step_id=step,
                   statement="Saw the lock applied")
    assert r.status_code == 201, r.text
    g = r.json()
    assert list(g) == ["id", "session_id", "meaning", "step_id", "signer_id", "signer_name",
                       "signer_role", "signed_at", "statement", "record_hash"]
    assert (g["meaning"], g["step_id"], g["signer_id"], g["signer_name"], g["signer_role"],
            g["statement"]) == ("verified", step, str(supervisor.id), "Dana Reviewer",
                                "supervisor", "Saw the lock applied")
    assert g["record_hash"] == head  # bound to the record as it stood
    r = await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)
    s = r.json()
    assert s["awaiting_verification"] is None and s["current_step"]["index"] == 1
    assert s["signatures"] == [g]
    signed = (await entries(http, supervisor, s["id"]))[-1]
    assert signed["action"] == "signed" and signed["prev_hash"] == g["record_hash"]
    assert signed["detail"]["manifest"].startswith("Dana Reviewer, ")
    # the entry says the time the signature holds (the run's, when it took it)
    assert datetime.fromisoformat(signed["detail"]["signed_at"]) == \
        datetime.fromisoformat(g["signed_at"])
    # a second verification of the step, by someone else: nothing awaits any more
    r = await sign(http, admin, s["id"], meaning="verified", step_id=step)
    assert r.status_code == 409 and r.json()["type"].endswith("/not-awaiting-verification")
    # the session goes on and completes as a passed check would have
    s = await pass_step(http, worker_user, s)
    assert s["status"] == "completed"


async def test_the_last_step_verified_completes_the_session(http, worker_user, supervisor,
                                                           admin):
    body = sop_body((1,), measurement_at=None)
    body["tasks"][0]["steps"][0]["check"]["verify"] = True
    sop = await make_confirmed_sop(http, supervisor, body)
    s = await pass_step(http, worker_user, await start(http, worker_user, sop))
    r = await sign(http, admin, s["id"], meaning="verified", step_id=s["current_step_id"])
    assert r.status_code == 201, r.text
    r = await http.get(f"/api/v1/sessions/{s['id']}", headers=admin.h)
    assert r.json()["status"] == "completed"
    assert r.json()["signatures"][0]["signer_name"] == str(admin.id)  # no name: the id


async def test_a_verification_resent_is_answered_with_the_signature_taken_once(
        http, worker_user, supervisor):
    """A supervisor whose answer was lost (a 503, a dropped connection) signs again: the
    signature already taken is the answer, nothing is recorded twice, and the session
    moved on once."""
    s = await awaiting(http, worker_user, supervisor)
    step = s["current_step_id"]
    first = await sign(http, supervisor, s["id"], meaning="verified", step_id=step)
    assert first.status_code == 201, first.text
    again = await sign(http, supervisor, s["id"], meaning="verified", step_id=step)
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    r = await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)
    assert len(r.json()["signatures"]) == 1 and r.json()["current_step"]["index"] == 1
    assert [e["outcome"] for e in await entries(http, supervisor, s["id"])
            if e["action"] == "signed"] == ["accepted"]


async def test_the_worker_cannot_verify_their_own_step(http, worker_user, supervisor):
    s = await awaiting(http, worker_user, supervisor)
    r = await sign(http, worker_user, s["id"], meaning="verified",
                   step_id=s["current_step_id"])
    assert r.status_code == 403, r.text
    # a supervisor who is the session's worker cannot exist (only workers start sessions);
    # the domain refuses the performer whatever the role: see test_domain_signatures


async def test_verified_naming_a_step_not_awaiting_is_409_and_an_unknown_step_422(
        http, worker_user, supervisor):
    s = await awaiting(http, worker_user, supervisor)
    other = s["next_step"]["id"]
    r = await sign(http, supervisor, s["id"], meaning="verified", step_id=other)
    assert r.status_code == 409 and r.json()["type"].endswith("/not-awaiting-verification")
    r = await sign(http, supervisor, s["id"], meaning="verified", step_id=str(uuid.uuid4()))
    assert r.status_code == 422, r.text
    r = await sign(http, supervisor, s["id"], meaning="verified")
    assert r.status_code == 422, r.text


async def test_two_verifications_at_once_make_exactly_one_signature(
        http, worker_user, supervisor, admin):
    s = await awaiting(http, worker_user, supervisor)
    step = s["current_step_id"]
    people = (supervisor, admin, supervisor, admin)
    rs = await asyncio.gather(*[sign(http, who, s["id"], meaning="verified", step_id=step)
                                for who in people])
    # one person's is taken, and their second request is a resend of it: the same
    # signature; the other person's two are 409
    taken = [who for who, r in zip(people, rs, strict=True) if r.status_code == 201]
    assert len(taken) == 2 and taken[0] == taken[1], [r.text for r in rs]
    assert len({r.json()["id"] for r in rs if r.status_code == 201}) == 1
    assert sorted(r.status_code for r in rs) == [201, 201, 409, 409], [r.text for r in rs]
    r = await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)
    assert len(r.json()["signatures"]) == 1 and r.json()["current_step"]["index"] == 1
    signed = [e for e in await entries(http, supervisor, s["id"])
              if e["action"] == "signed" and e["outcome"] == "accepted"]
    assert len(signed) == 1


async def test_a_session_awaiting_verification_survives_a_worker_restart_and_is_not_idle(
        http, client, db, supervisor):
    """The wait is the run's state: no timer, no idle pause (idle timeout 2 s here), and a
    fresh worker replaying the history still holds it; the signature then releases it."""
    sop = await make_confirmed_sop(http, supervisor, verify_sop())
    queue = f"verify-restart-{uuid.uuid4()}"
    ctx = own_context(client, db, queue)
    ctx.workflows.idle_timeout = timedelta(seconds=2)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    boss = Actor(supervisor.id, Role.SUPERVISOR, auth_time=datetime.now(UTC))
    async with build_worker(client, db, queue):
        view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
        view = await pass_current(ctx, actor, view)
        assert view["awaiting_verification"] is not None
    await asyncio.sleep(3)  # past the idle timeout, no worker
    async with build_worker(client, db, queue):
        await asyncio.sleep(1)
        live = shown(await ctx.workflows.live(actor.id))
        assert live["status"] == "in_progress", live
        assert live["awaiting_verification"] == view["awaiting_verification"]
        g = await uc.sign(ctx, await on(ctx, boss, view["id"], "session.read"),
                          uc.Meaning.VERIFIED, uuid.UUID(view["current_step_id"]), None)
        live = shown(await ctx.workflows.live(actor.id))
        assert live["awaiting_verification"] is None and live["current_step"]["index"] == 1
        assert g.record_hash is not None
        # the idle timer runs again once the wait is over
        async def paused() -> bool:
            return shown(await ctx.workflows.live(actor.id))["status"] == "paused"
        await eventually(paused, within=10)
        await uc.cancel_session(ctx, await on(ctx, actor, view["id"]), "test over")


async def test_continue_as_new_while_awaiting_verification_keeps_the_wait(
        http, client, db, supervisor, worker):
    """The passed check that begins the wait is the run's last update (continue-as-new
    after 2): the next run holds the wait (not idle: idle timeout 2 s here, checks refused),
    and the signature then advances the session exactly one step."""
    body = sop_body((3,), measurement_at=None)
    body["tasks"][0]["steps"][1]["check"]["verify"] = True
    sop = await make_confirmed_sop(http, supervisor, body)
    ctx = own_context(client, db, worker.task_queue, continue_as_new_after_updates=2)
    ctx.workflows.idle_timeout = timedelta(seconds=2)
    actor = Actor(uuid.uuid4(), Role.WORKER)
    boss = Actor(supervisor.id, Role.SUPERVISOR, auth_time=datetime.now(UTC))
    view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
    first_run = view["run_id"]
    view = await pass_current(ctx, actor, view)
    view = await pass_current(ctx, actor, view)  # the second update: the run continues as new
    wait = view["awaiting_verification"]
    assert wait is not None and view["current_step"]["index"] == 1
    handle = client.get_workflow_handle(view["workflow_id"])

    async def next_run() -> bool:
        return (await handle.describe()).run_id != first_run
    await eventually(next_run, within=10)
    await asyncio.sleep(3)  # past the idle timeout
    live = shown(await ctx.workflows.live(actor.id))
    assert live["run_id"] != first_run and live["status"] == "in_progress", live
    assert live["awaiting_verification"] == wait
    with pytest.raises(StepAwaitsVerification):
        await pass_current(ctx, actor, live)
    g = await uc.sign(ctx, await on(ctx, boss, view["id"], "session.read"),
                      uc.Meaning.VERIFIED, uuid.UUID(wait["step_id"]), None)
    live = shown(await ctx.workflows.live(actor.id))
    assert live["awaiting_verification"] is None and live["current_step"]["index"] == 2
    assert [x["id"] for x in live["signatures"]] == [str(g.id)]
    assert len(live["checks"]) == 2
    [t] = [t for t in live["step_times"] if t["step_id"] == wait["step_id"]]
    assert t["passed_at"] is not None
    other = Actor(uuid.uuid4(), Role.ADMIN, auth_time=datetime.now(UTC))
    with pytest.raises(StepNotAwaitingVerification):  # nothing awaits any more
        await uc.sign(ctx, await on(ctx, other, view["id"], "session.read"),
                      uc.Meaning.VERIFIED, uuid.UUID(wait["step_id"]), None)
    r = await http.get(f"/api/v1/sessions/{view['id']}", headers=supervisor.h)
    assert r.json()["current_step"]["index"] == 2 and len(r.json()["signatures"]) == 1
    signed = [e for e in await entries(http, supervisor, view["id"])
              if e["action"] == "signed" and e["outcome"] == "accepted"]
    assert len(signed) == 1
    await uc.cancel_session(ctx, await on(ctx, actor, view["id"]), "test over")


@pytest.mark.faults
async def test_a_session_awaiting_verification_survives_a_temporal_and_worker_restart() -> None:
    """On the stack of real subprocesses (faults/stack.py: the Temporal dev server persisted
    to its database file, `worksession api`, `worksession worker`): the worker and the
    Temporal server are both killed (SIGKILL) while a step awaits verification and started
    again; the session still awaits, and the `verified` signature then releases it, once."""
    import os
    import signal

    from faults.stack import Stack

    wid, bid = uuid.uuid4(), uuid.uuid4()

    def fresh(role: str, sub: uuid.UUID, name: str | None = None) -> dict[str, str]:
        return {"Authorization": "Bearer " + mint(stack.secret, role, sub, name=name)}

    async with Stack(os.environ.get("WORKSESSION_TEST_DATABASE", "sqlite"),
                     label="verify-restart") as stack, \
            httpx.AsyncClient(base_url=stack.api_url, timeout=30) as api:
        r = await api.post("/api/v1/sops", json=verify_sop(), headers=fresh("supervisor", bid))
        assert r.status_code == 201, r.text
        r = await api.post(f"/api/v1/sops/{r.json()['id']}/confirm",
                           headers=fresh("supervisor", bid))
        r = await api.post("/api/v1/sessions", json={"sop_id": r.json()["id"]},
                           headers=fresh("worker", wid))
        assert r.status_code == 201, r.text
        s = r.json()
        r = await api.post(f"/api/v1/sessions/{s['id']}/checks", headers=fresh("worker", wid),
                           json={"step_id": s["current_step_id"], "result": "passed"})
        assert r.status_code == 200, r.text
        wait = r.json()["awaiting_verification"]
        assert wait["step_id"] == s["current_step_id"]

        stack.kill_worker()
        await stack.restart_temporal(signal.SIGKILL)
        await stack.restart_worker_after_kill()
        await stack.wait_worker_polling()

        async def answered() -> httpx.Response | None:  # the API reconnects to Temporal
            r = await api.get("/api/v1/sessions/current", headers=fresh("worker", wid))
            return r if r.status_code == 200 else None
        live = (await eventually(answered, within=60)).json()
        assert live["id"] == s["id"] and live["status"] == "in_progress", live
        assert live["awaiting_verification"] == wait
        assert live["current_step"]["index"] == 0
        r = await api.post(f"/api/v1/sessions/{s['id']}/checks", headers=fresh("worker", wid),
                           json={"step_id": s["current_step_id"], "result": "passed"})
        assert r.status_code == 409 and r.json()["type"].endswith("/awaiting-verification")

        r = await api.post(SIGN.format(s["id"]), headers=fresh("supervisor", bid, "Dana"),
                           json={"meaning": "verified", "step_id": wait["step_id"]})
        assert r.status_code == 201, r.text
        r = await api.get("/api/v1/sessions/current", headers=fresh("worker", wid))
        live = r.json()
        assert live["awaiting_verification"] is None and live["current_step"]["index"] == 1
        assert [(g["meaning"], g["signer_name"]) for g in live["signatures"]] == [
            ("verified", "Dana")]
        r = await api.get("/api/v1/audit", params={"session_id": s["id"], "limit": 100},
                          headers=fresh("supervisor", bid))
        assert [e["action"] for e in r.json()["items"] if e["outcome"] == "accepted"] == [
            "session_start", "check_submitted", "signed"]


# ---- performed and approved ------------------------------------------------------------------
async def test_performed_by_the_worker_once_completed_and_approved_locks(
        http, worker_user, supervisor, confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    # in progress: neither performed nor approved
    r = await sign(http, worker_user, s["id"], meaning="performed")
    assert r.status_code == 409, r.text
    r = await sign(http, supervisor, s["id"], meaning="approved")
    assert r.status_code == 409, r.text
    while s["status"] != "completed":
        s = await pass_step(http, worker_user, s)
    r = await sign(http, supervisor, s["id"], meaning="performed")
    assert r.status_code == 403, r.text
    r = await sign(http, worker_user, s["id"], meaning="approved")
    assert r.status_code == 403, r.text
    r = await sign(http, worker_user, s["id"], meaning="performed", statement="Done as written")
    assert r.status_code == 201, r.text
    performed = r.json()
    r = await sign(http, supervisor, s["id"], meaning="approved", statement="Reviewed")
    assert r.status_code == 201, r.text
    approved = r.json()
    r = await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)
    s = r.json()
    assert s["locked"] is True and s["approved_by"] == str(supervisor.id)
    assert s["approved_at"] == approved["signed_at"]
    assert [g["meaning"] for g in s["signatures"]] == ["performed", "approved"]
    assert s["signatures"][0] == performed
    # locked: no further signature, and the refusal is on the chain
    before = len(await entries(http, supervisor, s["id"]))
    r = await sign(http, worker_user, s["id"], meaning="performed")
    assert r.status_code == 409 and r.json()["type"].endswith("/session-locked"), r.text
    after = await entries(http, supervisor, s["id"])
    assert len(after) == before + 1
    assert (after[-1]["action"], after[-1]["outcome"], after[-1]["detail"]["attempted"]) == (
        "modification_rejected", "rejected", "signed")


@pytest.mark.parametrize("meaning", ["approved", "verified", "performed"])
async def test_any_signature_on_a_locked_session_is_409_with_its_audit_entry(
        http, worker_user, supervisor, admin, meaning):
    s = await awaiting(http, worker_user, supervisor)
    step = s["current_step_id"]
    assert (await sign(http, supervisor, s["id"], meaning="verified",
                       step_id=step)).status_code == 201
    s = (await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)).json()
    s = await pass_step(http, worker_user, s)
    assert (await sign(http, supervisor, s["id"], meaning="approved")).status_code == 201
    before = await entries(http, supervisor, s["id"])
    who = worker_user if meaning == "performed" else admin
    r = await sign(http, who, s["id"], meaning=meaning,
                   **({"step_id": step} if meaning == "verified" else {}))
    assert r.status_code == 409 and r.json()["type"].endswith("/session-locked"), r.text
    after = await entries(http, supervisor, s["id"])
    assert after[:-1] == before
    assert (after[-1]["action"], after[-1]["outcome"], after[-1]["actor_id"],
            after[-1]["detail"]["attempted"]) == (
        "modification_rejected", "rejected", str(who.id),
        "session_approve" if meaning == "approved" else "signed")
    r = await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)
    assert [g["meaning"] for g in r.json()["signatures"]] == ["verified", "approved"]


async def test_the_approve_endpoint_is_the_approved_signature(http, worker_user, supervisor,
                                                              confirmed_sop):
    s = await completed(http, worker_user, confirmed_sop)
    r = await http.post(f"/api/v1/sessions/{s['id']}/approve",
                        json={"statement": "Approved for release"},
                        headers=token(supervisor))
    assert r.status_code == 200, r.text
    s = r.json()
    [g] = s["signatures"]
    assert (g["meaning"], g["signer_id"], g["statement"]) == (
        "approved", str(supervisor.id), "Approved for release")
    assert s["locked"] and s["approved_at"] == g["signed_at"]
    actions = [e["action"] for e in await entries(http, supervisor, s["id"])]
    assert actions[-2:] == ["signed", "session_approve"]
    # no body at all is an approval without a statement
    s2 = await completed(http, worker_user, confirmed_sop)
    r = await http.post(f"/api/v1/sessions/{s2['id']}/approve", headers=token(supervisor))
    assert r.status_code == 200 and r.json()["signatures"][0]["statement"] is None


# ---- re-authentication -------------------------------------------------------------------------
@pytest.mark.parametrize("age", [None, 3600], ids=["no auth_time", "an hour old"])
async def test_a_stale_token_is_401_reauthentication_required_and_nothing_is_recorded(
        http, worker_user, supervisor, confirmed_sop, age):
    s = await completed(http, worker_user, confirmed_sop)
    before = await entries(http, supervisor, s["id"])
    headers = token(supervisor, age) if age else {"Authorization": "Bearer " + _no_dates(
        supervisor)}
    for path, body in ((SIGN, {"meaning": "approved"}),
                       ("/api/v1/sessions/{}/approve", None)):
        r = await http.post(path.format(s["id"]), json=body, headers=headers)
        assert r.status_code == 401, r.text
        p = r.json()
        assert p["type"].endswith("/reauthentication-required") and p["max_age"] == 300
    assert await entries(http, supervisor, s["id"]) == before
    r = await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)
    assert r.json()["locked"] is False and r.json()["signatures"] == []


async def test_a_stale_token_cannot_verify_and_the_step_still_awaits(
        http, worker_user, supervisor):
    s = await awaiting(http, worker_user, supervisor)
    before = await entries(http, supervisor, s["id"])
    r = await sign(http, supervisor, s["id"], auth_age=301, meaning="verified",
                   step_id=s["current_step_id"])
    assert r.status_code == 401 and r.json()["type"].endswith("/reauthentication-required")
    assert await entries(http, supervisor, s["id"]) == before
    r = await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)
    assert r.json()["awaiting_verification"] == s["awaiting_verification"]
    assert r.json()["signatures"] == []


def _no_dates(user: User) -> str:
    """A token with neither auth_time nor iat."""
    import jwt
    return jwt.encode({"sub": str(user.id), "role": user.role,
                       "exp": int((datetime.now(UTC) + timedelta(hours=1)).timestamp())},
                      SECRET, algorithm="HS256")


async def test_the_freshness_window_just_inside_and_just_outside(
        http, worker_user, supervisor, confirmed_sop):
    s = await completed(http, worker_user, confirmed_sop)
    r = await sign(http, worker_user, s["id"], auth_age=302, meaning="performed")
    assert r.status_code == 401, r.text
    r = await sign(http, worker_user, s["id"], auth_age=295, meaning="performed")
    assert r.status_code == 201, r.text


def test_the_freshness_boundary_is_inclusive():
    """At most `max_age` seconds: exactly 300 signs, a millisecond more does not."""
    t = datetime(2026, 12, 7, 12, tzinfo=UTC)
    actor = Actor(uuid.uuid4(), Role.SUPERVISOR, auth_time=t)

    class Ctx:
        signature_max_age = 300
        clock = staticmethod(lambda: now)

    now = t + timedelta(seconds=300)
    uc.ensure_fresh(Ctx(), actor)  # type: ignore[arg-type]
    now = t + timedelta(seconds=300, milliseconds=1)
    with pytest.raises(ReauthenticationRequired) as e:
        uc.ensure_fresh(Ctx(), actor)  # type: ignore[arg-type]
    assert e.value.extra == {"max_age": 300}


# ---- bad input ---------------------------------------------------------------------------------
async def test_bad_signing_requests_are_422_and_record_nothing(http, worker_user, supervisor,
                                                               confirmed_sop):
    s = await completed(http, worker_user, confirmed_sop)
    before = await entries(http, supervisor, s["id"])
    for body in ({"meaning": "witnessed"}, {}, {"meaning": "approved", "statement": "x" * 501},
                 {"meaning": "approved", "step_id": "not-a-uuid"}, {"meaning": None}):
        r = await http.post(SIGN.format(s["id"]), json=body, headers=token(supervisor))
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    r = await sign(http, supervisor, s["id"], meaning="approved",
                   step_id=s["checks"][0]["step_id"])
    assert r.status_code == 422, r.text
    r = await http.post(f"/api/v1/sessions/{s['id']}/approve",
                        json={"statement": "x" * 501}, headers=token(supervisor))
    assert r.status_code == 422, r.text
    r = await sign(http, supervisor, str(uuid.uuid4()), meaning="approved")
    assert r.status_code == 404
    after = await entries(http, supervisor, s["id"])
    assert [e for e in after if e["outcome"] == "accepted"] == \
        [e for e in before if e["outcome"] == "accepted"]
    r = await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)
    assert r.json()["signatures"] == [] and r.json()["locked"] is False


async def test_a_step_s_verify_flag_must_be_a_boolean(http, supervisor):
    body = sop_body((1,), measurement_at=None)
    body["tasks"][0]["steps"][0]["check"]["verify"] = "yes"
    r = await http.post("/api/v1/sops", json=body, headers=supervisor.h)
    assert r.status_code == 422, r.text


# ---- the audit export ----------------------------------------------------------------------------
async def test_the_audit_export_shows_each_signature_s_manifest(
        http, worker_user, supervisor, confirmed_sop, database_url):
    import csv
    import io
    import json

    from tests.conftest import audit_cli

    supervisor.name = "=HYPERLINK(\"x\")"  # a name a spreadsheet would run
    s = await completed(http, worker_user, confirmed_sop)
    r = await sign(http, supervisor, s["id"], meaning="approved", statement="Reviewed")
    assert r.status_code == 201, r.text
    g = r.json()
    r = await http.get("/api/v1/audit", params={"session_id": s["id"]},
                       headers={**supervisor.h, "Accept": "text/csv"})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    [row] = [x for x in rows if x["action"] == "signed"]
    at = g["signed_at"].replace("T", " ").replace("Z", "")[:19]
    assert row["manifest"] == f"'=HYPERLINK(\"x\"), {at} UTC, approved: \"Reviewed\"", row
    assert all(x["manifest"] == "" for x in rows if x is not row)
    code, out = await audit_cli(database_url, "export", "--session", s["id"])
    assert code == 0, out
    doc = json.loads(out)
    assert doc["signatures"] == [{"signature_id": g["id"], "manifest": row["manifest"][1:]}]
    assert doc["session"]["signatures"] == [g]


async def test_audit_verify_checks_each_signature_against_its_signed_entry(
        http, worker_user, supervisor, db, database_url, tmp_path):
    """`worksession audit verify` (and `--file` for an export) finds each signature row as
    its `signed` entry on the chain records it (meaning, step, signer, time, statement, the
    head it was bound to); a signature row edited, forged or removed afterwards is reported,
    naming the session's chain and the signature, with exit 1."""
    import json

    import sqlalchemy as sa

    from persistence.tables import signatures
    from tests.conftest import audit_cli

    supervisor.name = "Dana Reviewer"
    s = await awaiting(http, worker_user, supervisor)
    r = await sign(http, supervisor, s["id"], meaning="verified", step_id=s["current_step_id"],
                   statement="Saw it")
    assert r.status_code == 201, r.text
    s = (await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)).json()
    s = await pass_step(http, worker_user, s)
    assert s["status"] == "completed"
    assert (await sign(http, worker_user, s["id"], meaning="performed")).status_code == 201
    assert (await sign(http, supervisor, s["id"], meaning="approved")).status_code == 201
    verified, performed, approved = (await http.get(
        f"/api/v1/sessions/{s['id']}", headers=supervisor.h)).json()["signatures"]
    chain = f"session:{s['id']}"

    code, out = await audit_cli(database_url, "verify")
    assert code == 0 and "audit log intact" in out, out
    export = tmp_path / "export.json"
    code, out = await audit_cli(database_url, "export", "--session", s["id"], "--out",
                                str(export))
    assert code == 0, out
    code, out = await audit_cli(database_url, "verify", "--file", str(export))
    assert code == 0, out

    async def tampered(sig: dict, **values: Any) -> str:
        """`audit verify` with the signature row changed, then put back."""
        row = signatures.c.id == uuid.UUID(sig["id"])
        async with db.write() as conn:
            old = dict((await conn.execute(sa.select(signatures).where(row))).mappings().one())
            await conn.execute(signatures.update().where(row).values(**values))
        try:
            code, out = await audit_cli(database_url, "verify")
        finally:
            async with db.write() as conn:
                await conn.execute(signatures.update().where(row).values(**old))
        assert code == 1, out
        return out

    for sig, values in ((verified, {"signer_name": "Someone Else"}),
                        (verified, {"signer_id": worker_user.id}),
                        (verified, {"step_id": uuid.UUID(s["checks"][1]["step_id"])}),
                        (performed, {"meaning": "verified"}),
                        (approved, {"statement": "Approved without reservation"}),
                        (approved, {"signed_at": datetime.now(UTC) - timedelta(days=1)}),
                        (approved, {"record_hash": "0" * 64})):
        out = await tampered(sig, **values)
        [field] = values
        assert f"BROKEN: {chain}: signature {sig['id']} (" in out and f"its {field} " in out, \
            (values, out)
        assert "1 problem(s)" in out, out
    # a signature row removed: its signed entry names a signature the session lacks
    row = signatures.c.id == uuid.UUID(performed["id"])
    async with db.write() as conn:
        old = dict((await conn.execute(sa.select(signatures).where(row))).mappings().one())
        await conn.execute(signatures.delete().where(row))
    try:
        code, out = await audit_cli(database_url, "verify")
        assert code == 1 and f"records signature {performed['id']}" in out, out
    finally:
        async with db.write() as conn:
            await conn.execute(signatures.insert().values(**old))
    code, out = await audit_cli(database_url, "verify")
    assert code == 0, out
    # the same check on an export: its session's signature edited in the file
    doc = json.loads(export.read_text())
    doc["session"]["signatures"][0]["signer_name"] = "Someone Else"
    export.write_text(json.dumps(doc))
    code, out = await audit_cli(database_url, "verify", "--file", str(export))
    assert code == 1 and f"signature {verified['id']}" in out and "signer_name" in out, out


# ---- the Temporal server's work ------------------------------------------------------------------
def _work(history: Any) -> dict[str, int]:
    """A closed run's history by event type (the names without EVENT_TYPE_), and in total."""
    from collections import Counter

    from temporalio.api.enums.v1 import EventType

    def kind(e: Any) -> str:
        name = EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
        if e.HasField("upsert_workflow_search_attributes_event_attributes"):
            fields = e.upsert_workflow_search_attributes_event_attributes.search_attributes
            name += " " + ",".join(sorted(fields.indexed_fields))
        return name

    return {"EVENTS": len(history.events), **Counter(kind(e) for e in history.events)}


async def test_the_server_work_of_a_session_with_one_verified_step(
        http, client, db, supervisor, worker):
    """The same two-step session with and without `check.verify` on its first step, worked
    at once (start, passed check, [verified], passed check: completed) on a real Temporal
    server: the verification adds its update (and its workflow task), the patch's marker
    (and the SDK's TemporalChangeVersion upsert) and the idle timer cancelled as the wait
    begins and started again after it; no activity, no upsert of the session's attributes;
    while the session awaits, its history does not grow (no timer, no polling). Prints the
    figures docs/architecture.md quotes (`pytest -s`)."""
    ctx = own_context(client, db, worker.task_queue)
    boss = Actor(supervisor.id, Role.SUPERVISOR, auth_time=datetime.now(UTC))
    figures = {}
    for verify in (False, True):
        body = sop_body((2,), measurement_at=None)
        body["tasks"][0]["steps"][0]["check"]["verify"] = verify
        sop = await make_confirmed_sop(http, supervisor, body)
        actor = Actor(uuid.uuid4(), Role.WORKER)
        view = shown(await uc.start_session(ctx, actor, uuid.UUID(sop["id"])))
        handle = client.get_workflow_handle(view["workflow_id"], run_id=view["run_id"])
        view = await pass_current(ctx, actor, view)
        if verify:
            waiting = len((await handle.fetch_history()).events)
            await asyncio.sleep(3)
            assert len((await handle.fetch_history()).events) == waiting  # the wait is free
            await uc.sign(ctx, await on(ctx, boss, view["id"], "session.read"),
                          uc.Meaning.VERIFIED, uuid.UUID(view["current_step_id"]), None)
            view = shown(await ctx.workflows.live(actor.id))
        view = await pass_current(ctx, actor, view)
        assert view["status"] == "completed"
        await asyncio.wait_for(handle.result(), 15)
        figures[verify] = _work(await handle.fetch_history())
    plain, verified = figures[False], figures[True]
    print(f"\n{'event type':56} plain  verified")
    for k in sorted(plain.keys() | verified.keys()):
        print(f"{k:56} {plain.get(k, 0):5}  {verified.get(k, 0):8}")
    more = {k: verified.get(k, 0) - plain.get(k, 0) for k in plain.keys() | verified.keys()}
    assert {k: v for k, v in more.items() if v} == {
        "EVENTS": 9,
        "WORKFLOW_EXECUTION_UPDATE_ACCEPTED": 1, "WORKFLOW_EXECUTION_UPDATE_COMPLETED": 1,
        "WORKFLOW_TASK_SCHEDULED": 1, "WORKFLOW_TASK_STARTED": 1, "WORKFLOW_TASK_COMPLETED": 1,
        # the patch's marker, and the SDK's upsert of TemporalChangeVersion that goes with it
        "MARKER_RECORDED": 1, "UPSERT_WORKFLOW_SEARCH_ATTRIBUTES TemporalChangeVersion": 1,
        # the idle timer cancelled when the wait begins, started again when it ends
        "TIMER_CANCELED": 1, "TIMER_STARTED": 1}, figures
