"""Nonconformances over HTTP (CONTRACT.md, "Nonconformances"): opened by failed checks on
`nonconformance` and `hold` steps and by hand, contained and closed (a signature), each bad
input refused and changing nothing; the hold released by containment; gap-free numbers; the
NC's own audit chain. Runs on SQLite and PostgreSQL, against the dev server and a worker."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from domain.audit_chain import verify_chain
from tests.conftest import (
    User,
    audit_cli,
    bearer,
    check,
    eventually,
    make_confirmed_sop,
    start,
    step_ids,
)


def nc_sop_body() -> dict[str, Any]:
    """Step 1 opens an NC on a failed check, step 2 holds the session, step 3 retries."""
    def step(n: int, **check: Any) -> dict[str, Any]:
        return {"title": f"Step {n}", "check": {"kind": "confirm", "prompt": f"Step {n} ok",
                                                **check}}
    return {"title": "Guard check - Press 4", "tasks": [{"title": "Guards", "steps": [
        step(1, on_fail="nonconformance", severity="minor"),
        step(2, on_fail="hold", severity="critical"),
        step(3)]}]}


async def ncs(http: httpx.AsyncClient, user: User, **params: Any) -> dict[str, Any]:
    r = await http.get("/api/v1/nonconformances", params=params, headers=user.h)
    assert r.status_code == 200, r.text
    return r.json()


async def chain(http: httpx.AsyncClient, user: User, name: str) -> list[dict[str, Any]]:
    r = await http.get("/api/v1/audit", params={"chain": name, "limit": 100}, headers=user.h)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def stale(user: User) -> dict[str, str]:
    """The user's token, signed in an hour ago."""
    return bearer(user.role, user.id, auth_time=datetime.now().astimezone() - timedelta(hours=1))


async def test_sop_steps_carry_on_fail_and_severity(http, supervisor):
    sop = await make_confirmed_sop(http, supervisor, nc_sop_body())
    checks = [s["check"] for t in sop["tasks"] for s in t["steps"]]
    assert [(c["on_fail"], c["severity"]) for c in checks] == [
        ("nonconformance", "minor"), ("hold", "critical"), ("retry", "major")]
    r = await http.post(f"/api/v1/sops/{sop['id']}/revisions", headers=supervisor.h)
    assert r.status_code == 201, r.text
    assert [(s["check"]["on_fail"], s["check"]["severity"])
            for t in r.json()["tasks"] for s in t["steps"]] == [
        ("nonconformance", "minor"), ("hold", "critical"), ("retry", "major")]
    for bad in ({"on_fail": "escalate"}, {"severity": "fatal"}, {"on_fail": None}):
        body = nc_sop_body()
        body["tasks"][0]["steps"][0]["check"].update(bad)
        r = await http.post("/api/v1/sops", json=body, headers=supervisor.h)
        assert r.status_code == 422, (bad, r.text)
        field = next(iter(bad))
        assert any(e["field"].endswith(f"check.{field}") for e in r.json()["errors"]), r.text


async def test_a_failed_check_opens_one_nc_per_step_with_its_own_audit_chain(
        http, supervisor, worker_user):
    sop = await make_confirmed_sop(http, supervisor, nc_sop_body())
    s = await start(http, worker_user, sop)
    first = step_ids(sop)[0]
    failed = str(uuid.uuid4())
    r = await check(http, worker_user, s["id"], first, result="failed", check_id=failed)
    assert r.status_code == 200, r.text
    assert r.json()["held"] is None  # a `nonconformance` step: the worker may retry
    page = await ncs(http, supervisor, session_id=s["id"])
    assert page["total"] == 1
    nc = page["items"][0]
    assert nc["status"] == "open" and nc["severity"] == "minor" and nc["hold"] is False
    assert nc["number"].startswith("NC-") and len(nc["number"]) == 9
    assert (nc["check_id"], nc["step_id"], nc["sop_id"]) == (failed, first, sop["id"])
    assert nc["opened_by"] is None and nc["overdue"] is False
    opened = datetime.fromisoformat(nc["opened_at"])
    assert datetime.fromisoformat(nc["containment_due"]) - opened == timedelta(hours=1)
    assert datetime.fromisoformat(nc["close_due"]) - opened == timedelta(days=7)
    # a second failure of the step while its NC is open opens none; the worker goes on
    r = await check(http, worker_user, s["id"], first, result="failed")
    assert r.status_code == 200, r.text
    assert (await ncs(http, supervisor, session_id=s["id"]))["total"] == 1
    r = await check(http, worker_user, s["id"], first)
    assert r.status_code == 200 and r.json()["current_step_id"] == step_ids(sop)[1]
    # its own chain: the opening, by the system, linked from the genesis hash
    entries = await chain(http, supervisor, f"nc:{nc['id']}")
    assert [(e["action"], e["actor_role"]) for e in entries] == [
        ("nonconformance_opened", "system")]
    assert entries[0]["detail"]["check_id"] == failed
    assert verify_chain(f"nc:{nc['id']}", entries) == (1, [])
    # the worker sees the NCs of their own session, another worker none of them
    assert (await ncs(http, worker_user))["total"] == 1
    other = User(uuid.uuid4(), "worker")
    assert (await ncs(http, other))["total"] == 0
    r = await http.get(f"/api/v1/nonconformances/{nc['id']}", headers=other.h)
    assert r.status_code == 404
    r = await http.get(f"/api/v1/nonconformances/{nc['id']}", headers=worker_user.h)
    assert r.status_code == 200 and r.json()["number"] == nc["number"]
    await http.post(f"/api/v1/sessions/{s['id']}/cancel", json={"reason": "test done"},
                    headers=worker_user.h)


async def test_hold_contain_close_lifecycle_and_every_bad_input(http, supervisor, worker_user,
                                                               database_url):
    sop = await make_confirmed_sop(http, supervisor, nc_sop_body())
    s = await start(http, worker_user, sop)
    first, held_step = step_ids(sop)[:2]
    assert (await check(http, worker_user, s["id"], first)).status_code == 200
    r = await check(http, worker_user, s["id"], held_step, result="failed")
    assert r.status_code == 200, r.text
    held = r.json()["held"]
    nc_id = held["nonconformance_id"]
    assert held["step_id"] == held_step
    nc = (await http.get(f"/api/v1/nonconformances/{nc_id}", headers=supervisor.h)).json()
    assert nc["hold"] is True and nc["severity"] == "critical"
    assert datetime.fromisoformat(nc["containment_due"]) - datetime.fromisoformat(
        nc["opened_at"]) == timedelta(minutes=15)
    # held: every check is 409 /held naming the NC, and records nothing
    r = await check(http, worker_user, s["id"], held_step)
    assert r.status_code == 409 and r.json()["type"].endswith("/held"), r.text
    assert r.json()["nonconformance_id"] == nc_id
    live = (await http.get("/api/v1/sessions/current", headers=worker_user.h)).json()
    assert live["held"]["nonconformance_id"] == nc_id and len(live["checks"]) == 2
    url = f"/api/v1/nonconformances/{nc_id}"
    before = await chain(http, supervisor, f"nc:{nc_id}")
    # bad input, each changing nothing (but its audit entry where it reached the NC)
    assert (await http.post(f"{url}/contain", json={"containment": "x"},
                            headers=worker_user.h)).status_code == 403
    for body in ({"containment": ""}, {"containment": "   "}, {}, {"containment": 5}):
        r = await http.post(f"{url}/contain", json=body, headers=supervisor.h)
        assert r.status_code == 422, (body, r.text)
    r = await http.post(f"{url}/close", json={"disposition": "scrap",
                                              "corrective_action": "new guard"},
                        headers=supervisor.h)
    assert r.status_code == 409 and r.json()["nonconformance_status"] == "open", r.text
    r = await http.post("/api/v1/nonconformances/" + str(uuid.uuid4()) + "/contain",
                        json={"containment": "x"}, headers=supervisor.h)
    assert r.status_code == 404
    assert (await http.get(url, headers=supervisor.h)).json()["status"] == "open"
    # contain: the hold is released, without polling by anyone
    r = await http.post(f"{url}/contain", json={"containment": "Press locked out, parts "
                                                "quarantined"}, headers=supervisor.h)
    assert r.status_code == 200, r.text
    nc = r.json()
    assert nc["status"] == "contained" and nc["contained_by"] == str(supervisor.id)
    assert nc["owner_id"] == str(supervisor.id)

    async def released() -> bool:
        r = await http.get("/api/v1/sessions/current", headers=worker_user.h)
        return r.json()["held"] is None
    await eventually(released)
    r = await check(http, worker_user, s["id"], held_step)
    assert r.status_code == 200 and r.json()["current_step_id"] == step_ids(sop)[2], r.text
    assert (await http.post(f"{url}/contain", json={"containment": "again"},
                            headers=supervisor.h)).status_code == 409
    # close: a signature under the re-authentication rule
    good = {"disposition": "rework", "corrective_action": "Guard switch replaced"}
    assert (await http.post(f"{url}/close", json=good, headers=worker_user.h)).status_code \
        == 403
    for body in ({**good, "disposition": "burn"}, {**good, "corrective_action": ""},
                 {"disposition": "rework"}, {**good, "extra": 1}):
        r = await http.post(f"{url}/close", json=body, headers=supervisor.h)
        assert r.status_code == 422, (body, r.text)
    r = await http.post(f"{url}/close", json=good, headers=stale(supervisor))
    assert r.status_code == 401 and r.json()["type"].endswith("/reauthentication-required")
    assert r.json()["max_age"] == 300
    assert (await http.get(url, headers=supervisor.h)).json()["status"] == "contained"
    r = await http.post(f"{url}/close", json={**good, "statement": "checked on the floor"},
                        headers=supervisor.h)
    assert r.status_code == 200, r.text
    nc = r.json()
    assert nc["status"] == "closed" and nc["disposition"] == "rework"
    assert nc["closed_by"] == str(supervisor.id)
    sig = nc["signature"]
    assert sig["meaning"] == "approved" and sig["signer_id"] == str(supervisor.id)
    assert sig["statement"] == "checked on the floor"
    assert (await http.post(f"{url}/close", json=good, headers=supervisor.h)).status_code \
        == 409
    entries = await chain(http, supervisor, f"nc:{nc_id}")
    assert verify_chain(f"nc:{nc_id}", entries) == (len(entries), [])
    actions = [(e["action"], e["outcome"]) for e in entries[len(before):]]
    assert actions == [("nonconformance_closed", "rejected"),
                       ("nonconformance_contained", "accepted"),
                       ("nonconformance_contained", "rejected"),
                       ("signed", "accepted"), ("nonconformance_closed", "accepted"),
                       ("nonconformance_closed", "rejected")]
    # the signature binds the record as it stood: the chain's head before its entry
    signed = next(e for e in entries if e["action"] == "signed")
    assert sig["record_hash"] == signed["prev_hash"]
    # every chain, the NCs' among them, ends where its head says
    code, out = await audit_cli(database_url, "verify")
    assert code == 0, out
    await http.post(f"/api/v1/sessions/{s['id']}/cancel", json={"reason": "test done"},
                    headers=worker_user.h)


async def test_open_by_hand_numbers_are_gap_free_even_when_opened_at_once(
        http, supervisor, worker_user, admin):
    sop = await make_confirmed_sop(http, supervisor, nc_sop_body())
    s = await start(http, worker_user, sop)
    body = {"session_id": s["id"], "severity": "major", "description": "Oil leak at press"}
    r = await http.post("/api/v1/nonconformances", json=body, headers=worker_user.h)
    assert r.status_code == 403
    for bad in ({**body, "description": ""}, {**body, "severity": "huge"},
                {**body, "step_id": str(uuid.uuid4())}, {"severity": "major"}):
        r = await http.post("/api/v1/nonconformances", json=bad, headers=supervisor.h)
        assert r.status_code == 422, (bad, r.text)
    r = await http.post("/api/v1/nonconformances", json={**body, "session_id": str(
        uuid.uuid4())}, headers=supervisor.h)
    assert r.status_code == 404, r.text  # as a start naming an unknown SOP
    assert (await ncs(http, supervisor, session_id=s["id"]))["total"] == 0
    answers = await asyncio.gather(*(
        http.post("/api/v1/nonconformances", json={**body, "step_id": step_ids(sop)[0]},
                  headers=(supervisor if i % 2 else admin).h) for i in range(8)))
    assert all(r.status_code == 201 for r in answers), [r.text for r in answers]
    numbers = sorted(int(r.json()["number"][3:]) for r in answers)
    assert numbers == list(range(numbers[0], numbers[0] + 8))
    nc = answers[0].json()
    assert nc["opened_by"] in (str(supervisor.id), str(admin.id)) and nc["hold"] is False
    assert nc["check_id"] is None and nc["description"] == "Oil leak at press"
    # by hand it holds nothing: the worker goes on
    assert (await check(http, worker_user, s["id"], step_ids(sop)[0])).status_code == 200
    # the list's filters, and a misspelt one refused
    assert (await ncs(http, supervisor, session_id=s["id"], status="open"))["total"] == 8
    assert (await ncs(http, supervisor, session_id=s["id"], status="closed"))["total"] == 0
    assert (await ncs(http, supervisor, sop_id=sop["id"], overdue="false"))["total"] == 8
    assert (await ncs(http, supervisor, sop_id=sop["id"], overdue="true"))["total"] == 0
    page = await ncs(http, supervisor, session_id=s["id"], limit=3, offset=1)
    assert len(page["items"]) == 3 and page["total"] == 8
    for params in ({"state": "open"}, {"status": "gone"}, {"overdue": "maybe"},
                   {"session_id": "x"}, {"limit": 0}):
        r = await http.get("/api/v1/nonconformances", params=params, headers=supervisor.h)
        assert r.status_code == 422, (params, r.text)
    for name in ("nc:1", "nc:", "job:" + str(uuid.uuid4()), "session:" + "z" * 36):
        r = await http.get("/api/v1/audit", params={"chain": name}, headers=supervisor.h)
        assert r.status_code == 422, (name, r.text)
    assert (await http.get("/api/v1/audit", params={"chain": f"nc:{nc['id']}"},
                           headers=worker_user.h)).status_code == 403
    entries = await chain(http, supervisor, f"nc:{nc['id']}")
    assert [(e["action"], e["actor_id"]) for e in entries] == [
        ("nonconformance_opened", nc["opened_by"])]
    # the session's own chain, by name, as by session_id
    by_name = await chain(http, supervisor, f"session:{s['id']}")
    assert by_name and all(e["chain"] == f"session:{s['id']}" for e in by_name)
    await http.post(f"/api/v1/sessions/{s['id']}/cancel", json={"reason": "test done"},
                    headers=worker_user.h)


@pytest.mark.parametrize("path", ["contain", "close"])
async def test_a_worker_may_not_contain_or_close_even_on_their_own_session(
        http, supervisor, worker_user, path):
    sop = await make_confirmed_sop(http, supervisor, nc_sop_body())
    s = await start(http, worker_user, sop)
    r = await check(http, worker_user, s["id"], step_ids(sop)[0], result="failed")
    assert r.status_code == 200
    nc = (await ncs(http, worker_user, session_id=s["id"]))["items"][0]
    body = {"containment": "x"} if path == "contain" else {
        "disposition": "scrap", "corrective_action": "x"}
    r = await http.post(f"/api/v1/nonconformances/{nc['id']}/{path}", json=body,
                        headers=worker_user.h)
    assert r.status_code == 403, r.text
    # 403 comes before the body is read
    r = await http.post(f"/api/v1/nonconformances/{nc['id']}/{path}", content=b"{",
                        headers=worker_user.h)
    assert r.status_code == 403
    assert (await http.get(f"/api/v1/nonconformances/{nc['id']}",
                           headers=supervisor.h)).json()["status"] == "open"
    await http.post(f"/api/v1/sessions/{s['id']}/cancel", json={"reason": "test done"},
                    headers=worker_user.h)
