"""End-to-end through HTTP against the real Temporal dev server, one test per spec scenario
(spec session-001 … 004, 006, 009) plus the contract's idempotency and race rules."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta

from persistence.sessions import SessionRepository
from tests.conftest import (
    check,
    eventually,
    make_confirmed_sop,
    pass_step,
    sop_body,
    start,
    step_ids,
)


async def test_start_work_session_from_sop(http, worker_user, confirmed_sop):
    """session-001: in_progress, first step of the first task, linked, started_at set."""
    s = await start(http, worker_user, confirmed_sop)
    assert s["status"] == "in_progress"
    assert s["current_step_id"] == step_ids(confirmed_sop)[0]
    assert s["current_step"]["task"]["title"] == "Task 1"
    assert s["current_step"]["index"] == 0 and s["current_step"]["total"] == 3
    assert s["sop"] == {"id": confirmed_sop["id"], "title": confirmed_sop["title"],
                        "version": 1}
    assert s["worker_id"] == str(worker_user.id)
    assert datetime.fromisoformat(s["started_at"]).utcoffset() == timedelta(0)
    assert s["workflow_id"] == f"work-session-{worker_user.id}" and s["run_id"]
    assert s["checks"] == [] and s["locked"] is False


async def test_advance_to_next_step_after_passed_check(http, worker_user, confirmed_sop):
    """session-002: a passed check moves to the next step, status stays in_progress and the
    next step is returned."""
    s = await start(http, worker_user, confirmed_sop)
    steps = step_ids(confirmed_sop)
    r = await check(http, worker_user, s["id"], steps[0], result="passed", notes="red button")
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["status"] == "in_progress"
    assert s["current_step_id"] == steps[1]
    assert s["next_step"]["id"] == steps[2]
    assert [(c["step_id"], c["result"], c["notes"]) for c in s["checks"]] == \
        [(steps[0], "passed", "red button")]
    assert s["checks"][0]["checked_by"] == str(worker_user.id)


async def test_next_step_after_last_step_of_a_task_is_first_step_of_next_task(
        http, worker_user, confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    s = await pass_step(http, worker_user, s)
    s = await pass_step(http, worker_user, s)
    assert s["current_step"]["task"]["title"] == "Task 2"
    assert s["current_step"]["index"] == 2 and s["next_step"] is None


async def test_failed_check_is_recorded_and_the_step_stays(http, worker_user, confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    first = step_ids(confirmed_sop)[0]
    r = await check(http, worker_user, s["id"], first, result="failed", notes="still moving")
    assert r.status_code == 200, r.text
    assert r.json()["current_step_id"] == first
    assert [c["result"] for c in r.json()["checks"]] == ["failed"]


async def test_measurement_result_is_decided_from_min_and_max(http, worker_user, confirmed_sop):
    s = await pass_step(http, worker_user, await start(http, worker_user, confirmed_sop))
    volt = s["current_step"]
    assert volt["check"] == {"kind": "measurement", "prompt": "Voltage at terminal A",
                             "unit": "V", "min": 0.0, "max": 0.5,
                             "evidence": "optional", "verify": False, "on_fail": "retry",
                             "severity": "major"}
    r = await check(http, worker_user, s["id"], volt["id"], value=0.7)
    assert r.status_code == 200 and r.json()["checks"][-1]["result"] == "failed"
    assert r.json()["current_step_id"] == volt["id"]
    r = await check(http, worker_user, s["id"], volt["id"], value=0.2, result="failed")
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    r = await check(http, worker_user, s["id"], volt["id"])  # no value
    assert r.status_code == 422
    r = await check(http, worker_user, s["id"], volt["id"], value=0.2)
    assert r.status_code == 200 and r.json()["checks"][-1]["result"] == "passed"
    assert r.json()["checks"][-1]["value"] == 0.2


async def test_complete_session_after_final_step(http, worker_user, confirmed_sop):
    """session-002: the final passed check completes the session."""
    s = await start(http, worker_user, confirmed_sop)
    for _ in range(3):
        s = await pass_step(http, worker_user, s)
    assert s["status"] == "completed"
    assert s["completed_at"] is not None and s["current_step_id"] is None
    assert s["current_step"] is None and s["next_step"] is None
    stored = (await http.get(f"/api/v1/sessions/{s['id']}", headers=worker_user.h)).json()
    assert stored["status"] == "completed" and len(stored["checks"]) == 3
    assert (await http.get("/api/v1/sessions/current", headers=worker_user.h)).status_code == 404


async def test_get_active_session_for_worker_with_checks_and_next_step(
        http, worker_user, supervisor, confirmed_sop):
    """session-003: current session from the live workflow, with checks and next step."""
    r = await http.get("/api/v1/sessions/current", headers=worker_user.h)
    assert r.status_code == 404 and r.json()["status"] == 404
    s = await start(http, worker_user, confirmed_sop)
    await check(http, worker_user, s["id"], s["current_step_id"], result="failed")
    await pass_step(http, worker_user, s)
    r = await http.get("/api/v1/sessions/current", headers=worker_user.h)
    assert r.status_code == 200
    cur = r.json()
    assert cur["id"] == s["id"] and [c["result"] for c in cur["checks"]] == ["failed", "passed"]
    assert cur["current_step_id"] == step_ids(confirmed_sop)[1]
    assert cur["next_step"]["id"] == step_ids(confirmed_sop)[2]
    assert (await http.get("/api/v1/sessions/current", headers=supervisor.h)).status_code == 404


async def test_list_worker_session_history_newest_first_with_filter_and_paging(
        http, worker_user, other_worker, confirmed_sop):
    """session-003: own sessions only, newest first, status filter, limit and offset."""
    ids = []
    for _ in range(3):
        s = await start(http, worker_user, confirmed_sop)
        ids.append(s["id"])
        r = await http.post(f"/api/v1/sessions/{s['id']}/complete", headers=worker_user.h)
        assert r.status_code == 200
    active = await start(http, worker_user, confirmed_sop)
    await start(http, other_worker, confirmed_sop)

    r = await http.get("/api/v1/sessions", headers=worker_user.h)
    page = r.json()
    assert page["total"] == 4 and page["limit"] == 20 and page["offset"] == 0
    assert [i["id"] for i in page["items"]] == [active["id"], *reversed(ids)]
    item = page["items"][0]
    assert item["sop"]["title"] == confirmed_sop["title"] and item["status"] == "in_progress"
    assert set(item) >= {"id", "status", "sop", "started_at", "completed_at", "locked"}

    r = await http.get("/api/v1/sessions?status=completed&limit=2&offset=1",
                       headers=worker_user.h)
    page = r.json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 1
    assert [i["id"] for i in page["items"]] == [ids[1], ids[0]]
    assert (await http.get("/api/v1/sessions?status=bogus", headers=worker_user.h)
            ).status_code == 422
    assert (await http.get("/api/v1/sessions?limit=1000", headers=worker_user.h)
            ).json()["limit"] == 100


async def test_worker_completes_session_manually(http, worker_user, confirmed_sop):
    """session-004: owner completes; unchecked steps stay visible; no more changes."""
    s = await pass_step(http, worker_user, await start(http, worker_user, confirmed_sop))
    r = await http.post(f"/api/v1/sessions/{s['id']}/complete", headers=worker_user.h)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "completed" and done["current_step_id"] is None
    assert done["completed_at"] is not None
    assert done["unchecked_step_ids"] == step_ids(confirmed_sop)[1:]
    r = await check(http, worker_user, s["id"], step_ids(confirmed_sop)[1], value=0.1)
    assert r.status_code == 409
    r = await http.post(f"/api/v1/sessions/{s['id']}/complete", headers=worker_user.h)
    assert r.status_code == 409
    stored = (await http.get(f"/api/v1/sessions/{s['id']}", headers=worker_user.h)).json()
    assert stored["unchecked_step_ids"] == step_ids(confirmed_sop)[1:]


async def test_only_the_owner_completes_supervisor_403_other_worker_404(
        http, worker_user, other_worker, supervisor, admin, confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    url = f"/api/v1/sessions/{s['id']}/complete"
    assert (await http.post(url, headers=supervisor.h)).status_code == 403
    assert (await http.post(url, headers=admin.h)).status_code == 403
    r = await http.post(url, headers=other_worker.h)
    assert r.status_code == 404 and str(worker_user.id) not in r.text
    assert (await http.get(f"/api/v1/sessions/{s['id']}", headers=other_worker.h)
            ).status_code == 404
    assert (await http.get("/api/v1/sessions", headers=other_worker.h)).json()["total"] == 0
    assert (await http.get(f"/api/v1/sessions/{s['id']}", headers=supervisor.h)
            ).status_code == 200
    assert (await http.get("/api/v1/sessions/current", headers=worker_user.h)
            ).json()["status"] == "in_progress"


async def test_check_on_a_step_other_than_the_current_is_409_with_current_step_id(
        http, worker_user, confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    r = await check(http, worker_user, s["id"], step_ids(confirmed_sop)[2])
    assert r.status_code == 409
    assert r.json()["current_step_id"] == step_ids(confirmed_sop)[0]
    r = await check(http, worker_user, s["id"], str(uuid.uuid4()))
    assert r.status_code == 409


async def test_start_session_while_one_is_active_is_409_with_existing_session_id(
        http, worker_user, confirmed_sop, supervisor):
    """session-009."""
    s = await start(http, worker_user, confirmed_sop)
    other_sop = await make_confirmed_sop(http, supervisor)
    r = await http.post("/api/v1/sessions", json={"sop_id": other_sop["id"]},
                        headers=worker_user.h)
    assert r.status_code == 409
    body = r.json()
    assert body["existing_session_id"] == s["id"]
    assert "complete or cancel" in body["detail"]


async def test_concurrent_starts_for_one_worker_exactly_one_wins(
        http, worker_user, confirmed_sop):
    rs = await asyncio.gather(*[
        http.post("/api/v1/sessions", json={"sop_id": confirmed_sop["id"]},
                  headers=worker_user.h) for _ in range(5)])
    codes = sorted(r.status_code for r in rs)
    assert codes == [201, 409, 409, 409, 409], [r.text for r in rs]
    winner = next(r.json()["id"] for r in rs if r.status_code == 201)
    assert all(r.json()["existing_session_id"] == winner for r in rs if r.status_code == 409)
    assert (await http.get("/api/v1/sessions", headers=worker_user.h)).json()["total"] == 1


async def test_next_session_starts_as_soon_as_previous_answered_completed(
        http, worker_user, confirmed_sop):
    for _ in range(3):
        s = await start(http, worker_user, confirmed_sop)
        r = await http.post(f"/api/v1/sessions/{s['id']}/complete", headers=worker_user.h)
        assert r.json()["status"] == "completed"


async def test_start_from_unknown_or_unconfirmed_sop(http, worker_user, supervisor):
    r = await http.post("/api/v1/sessions", json={"sop_id": str(uuid.uuid4())},
                        headers=worker_user.h)
    assert r.status_code == 404
    draft = (await http.post("/api/v1/sops", json=sop_body(), headers=supervisor.h)).json()
    r = await http.post("/api/v1/sessions", json={"sop_id": draft["id"]}, headers=worker_user.h)
    assert r.status_code in (404, 409)  # a worker cannot see drafts at all
    r = await http.post("/api/v1/sessions", json={"sop_id": draft["id"]}, headers=supervisor.h)
    assert r.status_code == 403


async def test_prevent_sop_deletion_with_active_sessions(
        http, worker_user, other_worker, supervisor, confirmed_sop):
    """session-006: 400 listing the active sessions; complete them and the SOP is archived."""
    a = await start(http, worker_user, confirmed_sop)
    b = await start(http, other_worker, confirmed_sop)
    r = await http.delete(f"/api/v1/sops/{confirmed_sop['id']}", headers=supervisor.h)
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert {x["id"] for x in body["active_sessions"]} == {a["id"], b["id"]}
    assert {x["worker_id"] for x in body["active_sessions"]} == \
        {str(worker_user.id), str(other_worker.id)}
    assert all(x["started_at"] for x in body["active_sessions"])
    assert "complete or cancel" in body["detail"]
    assert (await http.get(f"/api/v1/sops/{confirmed_sop['id']}", headers=supervisor.h)
            ).json()["status"] == "confirmed"

    for user, s in ((worker_user, a), (other_worker, b)):
        assert (await http.post(f"/api/v1/sessions/{s['id']}/complete", headers=user.h)
                ).status_code == 200
    r = await http.delete(f"/api/v1/sops/{confirmed_sop['id']}", headers=supervisor.h)
    assert r.status_code == 204
    sop = (await http.get(f"/api/v1/sops/{confirmed_sop['id']}", headers=supervisor.h)).json()
    assert sop["status"] == "archived"
    listed = (await http.get("/api/v1/sops?limit=100", headers=supervisor.h)).json()["items"]
    assert confirmed_sop["id"] not in {x["id"] for x in listed}
    archived = (await http.get("/api/v1/sops?status=archived&limit=100",
                               headers=supervisor.h)).json()["items"]
    assert confirmed_sop["id"] in {x["id"] for x in archived}
    r = await http.post("/api/v1/sessions", json={"sop_id": confirmed_sop["id"]},
                        headers=worker_user.h)
    assert r.status_code in (404, 409)
    # the history still renders
    assert (await http.get(f"/api/v1/sessions/{a['id']}", headers=worker_user.h)
            ).json()["sop"]["title"] == confirmed_sop["title"]


async def test_sop_delete_racing_session_starts_never_leaves_a_session_on_an_archived_sop(
        http, db, supervisor):
    """Whatever the interleaving, either the delete is refused (a session started first)
    or every start is refused (the SOP went first)."""
    from tests.conftest import User

    for _ in range(4):
        sop = await make_confirmed_sop(http, supervisor)
        workers = [User(uuid.uuid4(), "worker") for _ in range(3)]
        calls = [http.post("/api/v1/sessions", json={"sop_id": sop["id"]}, headers=w.h)
                 for w in workers]
        calls.insert(1, http.delete(f"/api/v1/sops/{sop['id']}", headers=supervisor.h))
        rs = await asyncio.gather(*calls)
        delete = rs[1]
        started = [r for i, r in enumerate(rs) if i != 1 and r.status_code == 201]
        status = (await http.get(f"/api/v1/sops/{sop['id']}", headers=supervisor.h))
        async with db.read() as conn:
            active = await SessionRepository(conn).active_for_sop(uuid.UUID(sop["id"]))
        if delete.status_code == 204:
            assert active == [] and started == []
            assert status.status_code == 404 or status.json()["status"] == "archived"
        else:
            assert delete.status_code == 400
            assert {str(a.id) for a in active} == {r.json()["id"] for r in started}
            assert status.json()["status"] == "confirmed"


async def test_repeated_check_id_returns_the_session_as_it_is_and_records_once(
        http, worker_user, confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    cid = str(uuid.uuid4())
    first = await check(http, worker_user, s["id"], s["current_step_id"], check_id=cid)
    s2 = await pass_step(http, worker_user, first.json())
    again = await check(http, worker_user, s["id"], s["current_step_id"], check_id=cid)
    assert again.status_code == 200
    assert again.json()["current_step_id"] == s2["current_step_id"]  # as it is now
    assert [c["id"] for c in again.json()["checks"]].count(cid) == 1
    assert len(again.json()["checks"]) == 2
    different = await check(http, worker_user, s["id"], s["current_step_id"], check_id=cid,
                            result="failed")
    assert different.status_code == 422
    # also after the session closed
    await http.post(f"/api/v1/sessions/{s['id']}/complete", headers=worker_user.h)
    after = await check(http, worker_user, s["id"], s["current_step_id"], check_id=cid)
    assert after.status_code == 200 and after.json()["status"] == "completed"
    assert len(after.json()["checks"]) == 2


async def test_same_check_id_sent_five_times_concurrently_is_recorded_once(
        http, worker_user, supervisor, confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    cid = str(uuid.uuid4())
    rs = await asyncio.gather(*[check(http, worker_user, s["id"], s["current_step_id"],
                                      check_id=cid) for _ in range(5)])
    assert [r.status_code for r in rs] == [200] * 5
    assert {r.json()["current_step_id"] for r in rs} == {step_ids(confirmed_sop)[1]}
    stored = (await http.get(f"/api/v1/sessions/{s['id']}", headers=worker_user.h)).json()
    assert [c["id"] for c in stored["checks"]] == [cid]
    audit = (await http.get(f"/api/v1/audit?session_id={s['id']}&limit=100",
                            headers=supervisor.h)).json()["items"]
    assert [e["detail"]["check_id"] for e in audit if e["action"] == "check_submitted"] == [cid]


async def test_supervisor_finds_running_sessions_by_search_attributes(
        http, client, worker_user, confirmed_sop):
    """The Temporal UI query `SessionStatus = "in_progress" AND SopId = "…"` finds it."""
    s = await start(http, worker_user, confirmed_sop)
    s = await pass_step(http, worker_user, s)
    query = f'SessionStatus = "in_progress" AND SopId = "{confirmed_sop["id"]}" ' \
            f'AND WorkerId = "{worker_user.id}"'

    async def listed():
        return [w async for w in client.list_workflows(query)]

    found = await eventually(listed)
    assert [w.id for w in found] == [s["workflow_id"]]
    attrs = found[0].typed_search_attributes
    from workflows import search_attributes as sa
    assert attrs.get(sa.SESSION_ID) == s["id"]
    handle = client.get_workflow_handle(s["workflow_id"])
    # a passed check that only moves the step upserts no search attribute (contract v1.1)
    assert not [e async for e in handle.fetch_history_events()
                if e.HasField("upsert_workflow_search_attributes_event_attributes")]
    desc = await handle.describe()
    summary = desc.static_summary
    summary = summary() if callable(summary) else summary
    if asyncio.iscoroutine(summary):
        summary = await summary
    assert confirmed_sop["title"] in summary and str(worker_user.id) in summary
    meta = await handle.query("__temporal_workflow_metadata")
    details = meta.current_details if hasattr(meta, "current_details") else \
        meta.get("currentDetails")
    assert details.splitlines()[0] == "Step 2 of 3: Step 2"
    assert confirmed_sop["title"] in details and str(worker_user.id) in details

    # failed checks leave the step where it is; the third one raises NeedsAttention (the
    # run upserts only the attributes that change)
    fail = {"value": 9.0} if s["current_step"]["check"]["kind"] == "measurement" \
        else {"result": "failed"}
    for _ in range(3):
        r = await check(http, worker_user, s["id"], s["current_step_id"], **fail)
        assert r.status_code == 200, r.text
    assert r.json()["needs_attention"] is True
    await eventually(lambda: _attr(client, s["workflow_id"], sa.NEEDS_ATTENTION, True))
    assert await _attr(client, s["workflow_id"], sa.SESSION_STATUS, "in_progress")

    r = await http.post(f"/api/v1/sessions/{s['id']}/complete", headers=worker_user.h)
    assert r.status_code == 200
    done = await eventually(lambda: _closed_with(client, s["workflow_id"], "completed"))
    assert done.typed_search_attributes.get(sa.SESSION_ID) == s["id"]


async def _attr(client, workflow_id, key, value):
    desc = await client.get_workflow_handle(workflow_id).describe()
    return desc.typed_search_attributes.get(key) == value


async def _closed_with(client, workflow_id, status):
    from workflows import search_attributes as sa
    async for w in client.list_workflows(f'WorkflowId = "{workflow_id}" AND '
                                         f'SessionStatus = "{status}" AND '
                                         f'ExecutionStatus = "Completed"'):
        assert w.typed_search_attributes.get(sa.SESSION_STATUS) == status
        return w
    return None


async def test_step_times_in_the_session_as_stored_and_as_live(http, worker_user, confirmed_sop):
    """Contract v1.1 `step_times`: one entry per step reached, in SOP order, the same in
    the stored session and in the live run's answer."""
    s = await start(http, worker_user, confirmed_sop)
    steps = step_ids(confirmed_sop)
    await check(http, worker_user, s["id"], steps[0], result="failed")
    s = await pass_step(http, worker_user, s)
    passed_at = s["checks"][-1]["checked_at"]
    await asyncio.sleep(0.3)
    stored = (await http.get(f"/api/v1/sessions/{s['id']}", headers=worker_user.h)).json()
    live = (await http.get("/api/v1/sessions/current", headers=worker_user.h)).json()
    for view in (stored, live):
        first, second = view["step_times"]
        assert (first["step_id"], first["started_at"], first["passed_at"], first["attempts"]) \
            == (steps[0], s["started_at"], passed_at, 2)
        took = (datetime.fromisoformat(passed_at)
                - datetime.fromisoformat(s["started_at"])).total_seconds()
        assert first["active_seconds"] == round(took, 3)  # never paused
        assert (second["step_id"], second["started_at"], second["passed_at"],
                second["attempts"]) == (steps[1], passed_at, None, 0)
        assert second["active_seconds"] >= 0.3  # counted up to now while current
    r = await http.post(f"/api/v1/sessions/{s['id']}/cancel", json={"reason": "end"},
                        headers=worker_user.h)
    assert [t["step_id"] for t in r.json()["step_times"]] == steps[:2]
    frozen = r.json()["step_times"][1]["active_seconds"]
    await asyncio.sleep(0.2)
    again = (await http.get(f"/api/v1/sessions/{s['id']}", headers=worker_user.h)).json()
    assert again["step_times"][1]["active_seconds"] == frozen  # closed: the clock stopped
