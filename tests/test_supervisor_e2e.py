"""Supervisor integrity end to end (spec session-005, session-008): approval lock with its
audit trail, pause/resume, cancel, reopen override."""

from __future__ import annotations

import asyncio
import uuid

from tests.conftest import check, make_confirmed_sop, pass_step, start, step_ids


async def completed_session(http, user, sop):
    s = await start(http, user, sop)
    s = await pass_step(http, user, s)
    r = await http.post(f"/api/v1/sessions/{s['id']}/complete", headers=user.h)
    assert r.status_code == 200, r.text
    return r.json()


async def audit_of(http, supervisor, session_id):
    r = await http.get(f"/api/v1/audit?session_id={session_id}&limit=100", headers=supervisor.h)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_supervisor_approves_a_completed_session_and_it_is_locked(
        http, worker_user, supervisor, confirmed_sop):
    s = await completed_session(http, worker_user, confirmed_sop)
    r = await http.post(f"/api/v1/sessions/{s['id']}/approve", headers=supervisor.h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["locked"] is True and body["approved_by"] == str(supervisor.id)
    assert body["approved_at"] is not None
    stored = (await http.get(f"/api/v1/sessions/{s['id']}", headers=worker_user.h)).json()
    assert stored["locked"] is True and stored["approved_by"] == str(supervisor.id)
    listed = (await http.get("/api/v1/sessions", headers=worker_user.h)).json()["items"]
    assert next(i for i in listed if i["id"] == s["id"])["locked"] is True


async def test_only_completed_sessions_can_be_approved(http, worker_user, supervisor,
                                                       confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    r = await http.post(f"/api/v1/sessions/{s['id']}/approve", headers=supervisor.h)
    assert r.status_code == 409 and r.json()["session_status"] == "in_progress"


async def test_concurrent_approvals_exactly_one_succeeds(http, worker_user, supervisor, admin,
                                                         confirmed_sop):
    s = await completed_session(http, worker_user, confirmed_sop)
    callers = [supervisor, admin, supervisor, admin, supervisor]
    rs = await asyncio.gather(*[http.post(f"/api/v1/sessions/{s['id']}/approve", headers=u.h)
                                for u in callers])
    assert sorted(r.status_code for r in rs) == [200, 409, 409, 409, 409]
    winner = next(r.json() for r in rs if r.status_code == 200)
    stored = (await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)).json()
    assert stored["approved_by"] == winner["approved_by"]
    audit = await audit_of(http, supervisor, s["id"])
    assert [e["outcome"] for e in audit if e["action"] == "session_approve"] == ["accepted"]
    assert len([e for e in audit if e["action"] == "modification_rejected"]) == 4


async def test_every_modification_of_a_locked_session_is_409_and_audited(
        http, worker_user, supervisor, confirmed_sop):
    s = await completed_session(http, worker_user, confirmed_sop)
    sid = s["id"]
    assert (await http.post(f"/api/v1/sessions/{sid}/approve", headers=supervisor.h)
            ).status_code == 200
    attempts = [
        ("check_submitted", worker_user, f"/api/v1/sessions/{sid}/checks",
         {"step_id": step_ids(confirmed_sop)[1], "value": 0.1}),
        ("session_complete", worker_user, f"/api/v1/sessions/{sid}/complete", None),
        ("session_pause", worker_user, f"/api/v1/sessions/{sid}/pause", None),
        ("session_resume", worker_user, f"/api/v1/sessions/{sid}/resume", None),
        ("session_cancel", worker_user, f"/api/v1/sessions/{sid}/cancel", {"reason": "x"}),
        ("session_reopen", supervisor, f"/api/v1/sessions/{sid}/reopen", {"reason": "redo"}),
        ("session_approve", supervisor, f"/api/v1/sessions/{sid}/approve", None),
    ]
    for action, user, url, body in attempts:
        r = await http.post(url, json=body, headers=user.h)
        assert r.status_code == 409, (action, r.text)
        assert r.json()["type"].endswith("session-locked"), r.json()
    rejected = [e for e in await audit_of(http, supervisor, sid)
                if e["action"] == "modification_rejected"]
    assert [(e["detail"]["attempted"], e["actor_id"], e["actor_role"]) for e in rejected] == \
        [(a, str(u.id), u.role) for a, u, _, _ in attempts]
    assert all(e["outcome"] == "rejected" for e in rejected)
    stored = (await http.get(f"/api/v1/sessions/{sid}", headers=worker_user.h)).json()
    assert stored["status"] == "completed" and len(stored["checks"]) == 1


async def test_every_state_change_is_audited_oldest_first(http, worker_user, supervisor,
                                                          confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    await check(http, worker_user, s["id"], step_ids(confirmed_sop)[2])  # wrong step: 409
    await pass_step(http, worker_user, s)
    await http.post(f"/api/v1/sessions/{s['id']}/pause", headers=worker_user.h)
    await http.post(f"/api/v1/sessions/{s['id']}/resume", headers=worker_user.h)
    await http.post(f"/api/v1/sessions/{s['id']}/complete", headers=worker_user.h)
    audit = await audit_of(http, supervisor, s["id"])
    assert [(e["action"], e["outcome"]) for e in audit] == [
        ("session_start", "accepted"), ("check_submitted", "rejected"),
        ("check_submitted", "accepted"), ("session_pause", "accepted"),
        ("session_resume", "accepted"), ("session_complete", "accepted")]
    assert all(e["actor_id"] == str(worker_user.id) for e in audit)
    assert all(len(e["hash"]) == 64 and len(e["prev_hash"]) == 64 for e in audit)
    assert (await http.get("/api/v1/audit", headers=worker_user.h)).status_code == 403


async def test_pause_keeps_the_step_counts_as_active_and_rejects_checks(
        http, worker_user, supervisor, confirmed_sop):
    s = await pass_step(http, worker_user, await start(http, worker_user, confirmed_sop))
    r = await http.post(f"/api/v1/sessions/{s['id']}/pause", headers=worker_user.h)
    assert r.status_code == 200, r.text
    paused = r.json()
    assert paused["status"] == "paused" and paused["paused_at"] is not None
    assert paused["current_step_id"] == s["current_step_id"]
    r = await check(http, worker_user, s["id"], s["current_step_id"], value=0.1)
    assert r.status_code == 409
    assert (await http.post(f"/api/v1/sessions/{s['id']}/pause", headers=worker_user.h)
            ).status_code == 409
    other = await make_confirmed_sop(http, supervisor)
    r = await http.post("/api/v1/sessions", json={"sop_id": other["id"]}, headers=worker_user.h)
    assert r.status_code == 409 and r.json()["existing_session_id"] == s["id"]
    r = await http.delete(f"/api/v1/sops/{confirmed_sop['id']}", headers=supervisor.h)
    assert r.status_code == 400 and r.json()["active_sessions"][0]["id"] == s["id"]
    cur = (await http.get("/api/v1/sessions/current", headers=worker_user.h)).json()
    assert cur["status"] == "paused"

    await asyncio.sleep(0.3)
    r = await http.post(f"/api/v1/sessions/{s['id']}/resume", headers=worker_user.h)
    assert r.status_code == 200
    resumed = r.json()
    assert resumed["status"] == "in_progress" and resumed["paused_at"] is None
    assert resumed["paused_seconds"] >= 0.3
    assert resumed["current_step_id"] == s["current_step_id"]
    assert (await http.post(f"/api/v1/sessions/{s['id']}/resume", headers=worker_user.h)
            ).status_code == 409
    r = await check(http, worker_user, s["id"], s["current_step_id"], value=0.1)
    assert r.status_code == 200


async def test_cancel_needs_a_reason_closes_the_session_and_frees_the_worker(
        http, worker_user, confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    for body in (None, {}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 501}):
        r = await http.post(f"/api/v1/sessions/{s['id']}/cancel", json=body,
                            headers=worker_user.h)
        assert r.status_code == 422, (body, r.text)
    r = await http.post(f"/api/v1/sessions/{s['id']}/cancel", json={"reason": "press jammed"},
                        headers=worker_user.h)
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled" and r.json()["cancelled_at"] is not None
    assert r.json()["cancel_reason"] == "press jammed"
    assert (await http.post(f"/api/v1/sessions/{s['id']}/cancel", json={"reason": "again"},
                            headers=worker_user.h)).status_code == 409
    assert (await http.get("/api/v1/sessions/current", headers=worker_user.h)).status_code == 404
    again = await start(http, worker_user, confirmed_sop)
    assert again["id"] != s["id"]


async def test_cancel_a_paused_session(http, worker_user, confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    await http.post(f"/api/v1/sessions/{s['id']}/pause", headers=worker_user.h)
    r = await http.post(f"/api/v1/sessions/{s['id']}/cancel", json={"reason": "shift over"},
                        headers=worker_user.h)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert r.json()["paused_at"] is None


async def test_supervisor_reopens_a_completed_session_at_the_first_unpassed_step(
        http, worker_user, supervisor, confirmed_sop):
    s = await completed_session(http, worker_user, confirmed_sop)
    r = await http.post(f"/api/v1/sessions/{s['id']}/reopen", json={"reason": "missed steps"},
                        headers=supervisor.h)
    assert r.status_code == 200, r.text
    re = r.json()
    assert re["id"] == s["id"] and re["status"] == "in_progress"
    assert re["run_id"] != s["run_id"] and re["workflow_id"] == s["workflow_id"]
    assert re["current_step_id"] == step_ids(confirmed_sop)[1]
    assert re["completed_at"] is None and re["unchecked_step_ids"] is None
    assert [c["id"] for c in re["checks"]] == [c["id"] for c in s["checks"]]
    cur = (await http.get("/api/v1/sessions/current", headers=worker_user.h)).json()
    assert cur["id"] == s["id"] and cur["run_id"] == re["run_id"]
    s2 = await pass_step(http, worker_user, cur)
    s2 = await pass_step(http, worker_user, s2)
    assert s2["status"] == "completed" and len(s2["checks"]) == 3
    audit = await audit_of(http, supervisor, s["id"])
    reopen = next(e for e in audit if e["action"] == "session_reopen")
    assert reopen["detail"]["reason"] == "missed steps"
    assert reopen["actor_id"] == str(supervisor.id)


async def test_reopen_at_a_chosen_step_and_of_a_cancelled_session(
        http, worker_user, supervisor, confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    r = await http.post(f"/api/v1/sessions/{s['id']}/cancel", json={"reason": "wrong press"},
                        headers=worker_user.h)
    assert r.status_code == 200
    target = step_ids(confirmed_sop)[2]
    r = await http.post(f"/api/v1/sessions/{s['id']}/reopen",
                        json={"reason": "right press after all", "step_id": target},
                        headers=supervisor.h)
    assert r.status_code == 200, r.text
    assert r.json()["current_step_id"] == target and r.json()["cancelled_at"] is None
    r = await http.post(f"/api/v1/sessions/{s['id']}/reopen", json={"reason": "again"},
                        headers=supervisor.h)
    assert r.status_code == 409  # it is active now
    bad = await http.post(f"/api/v1/sessions/{s['id']}/reopen",
                          json={"reason": "x", "step_id": str(uuid.uuid4())},
                          headers=supervisor.h)
    assert bad.status_code == 422


async def test_reopen_is_refused_while_the_worker_has_another_active_session(
        http, worker_user, supervisor, confirmed_sop):
    first = await completed_session(http, worker_user, confirmed_sop)
    second = await start(http, worker_user, confirmed_sop)
    r = await http.post(f"/api/v1/sessions/{first['id']}/reopen", json={"reason": "redo"},
                        headers=supervisor.h)
    assert r.status_code == 409 and r.json()["existing_session_id"] == second["id"]
    assert (await http.get(f"/api/v1/sessions/{first['id']}", headers=supervisor.h)
            ).json()["status"] == "completed"


async def test_reopen_racing_approve_never_leaves_a_running_session_locked(
        http, client, supervisor, admin, confirmed_sop):
    from tests.conftest import User
    for _ in range(4):
        worker = User(uuid.uuid4(), "worker")
        s = await completed_session(http, worker, confirmed_sop)
        reopen, approve = await asyncio.gather(
            http.post(f"/api/v1/sessions/{s['id']}/reopen", json={"reason": "race"},
                      headers=supervisor.h),
            http.post(f"/api/v1/sessions/{s['id']}/approve", headers=admin.h))
        stored = (await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)).json()
        assert sorted([reopen.status_code, approve.status_code]) == [200, 409], \
            (reopen.text, approve.text)
        if reopen.status_code == 200:
            assert stored["status"] == "in_progress" and stored["locked"] is False
            cur = await http.get("/api/v1/sessions/current", headers=worker.h)
            assert cur.json()["id"] == s["id"]
            await http.post(f"/api/v1/sessions/{s['id']}/cancel", json={"reason": "done"},
                            headers=worker.h)
        else:
            assert stored["status"] == "completed" and stored["locked"] is True
            desc = await client.get_workflow_handle(s["workflow_id"]).describe()
            assert desc.status.name != "RUNNING"
