"""SPC through HTTP (CONTRACT.md v1.2, "Statistical process control"), on SQLite and
PostgreSQL alike: the published chart's figures, a supervisor's baseline, the chart kept
across a revision, an in-spec point beyond 3 sigma flagging its session, and bad input."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from domain.changes import AuditFacts, SessionChange
from domain.spc import Baseline
from domain.work_session import CheckSubmission, WorkSession
from persistence.tables import audit_log
from tests.conftest import User, check, make_confirmed_sop, start, step_ids
from tests.test_domain_spc import CONCENTRATION
from workflows.messages import workflow_id_for
from workflows.search_attributes import NEEDS_ATTENTION

T0 = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)


def spc_sop(title: str = "Concentration", lo: float = 90.0, hi: float = 110.0
            ) -> dict[str, Any]:
    return {"title": f"{title} {uuid.uuid4()}", "tasks": [{"title": "Sample", "steps": [
        {"title": "Concentration", "check": {"kind": "measurement", "prompt": "Concentration",
                                             "unit": "g/l", "min": lo, "max": hi}},
        {"title": "Label", "check": {"kind": "confirm", "prompt": "Labelled?"}}]}]}


async def record(ctx: Any, sop_id: str, values: list[float], at: datetime = T0) -> None:
    """One session per value, its check written by the one write path at `at` + i hours."""
    async with ctx.uow(read_only=True) as uow:
        plan = await uow.sops.plan(uuid.UUID(sop_id))
    for i, v in enumerate(values):
        now = at + timedelta(hours=i)
        worker = uuid.uuid4()
        session = WorkSession.start(uuid.uuid4(), worker, plan, now)
        before = session.mark()
        session.add_check(CheckSubmission(check_id=uuid.uuid4(), step_id=plan.steps[0].id,
                                          value=v), worker, now)
        change = SessionChange.of(session.state, before.__class__(0, -1), [
            AuditFacts("check_submitted", worker, "worker")], now, workflow_id_for(worker),
            "seeded")
        async with ctx.uow() as uow:
            assert await uow.sessions.write_change(change)


async def spc(http: Any, user: User, sop: dict[str, Any], query: str = "",
              expect: int = 200, step: str | None = None) -> Any:
    step = step or step_ids(sop)[0]
    r = await http.get(f"/api/v1/sops/{sop['id']}/steps/{step}/spc{query}", headers=user.h)
    assert r.status_code == expect, r.text
    return r.json()


async def test_the_published_chart_through_the_api(http, app, supervisor, admin) -> None:
    sop = await make_confirmed_sop(http, supervisor, spc_sop())
    await record(app.state.ctx, sop["id"], CONCENTRATION)
    got = await spc(http, supervisor, sop)
    b = Baseline.of(CONCENTRATION)
    assert got["n"] == 20 and got["unit"] == "g/l"
    assert (got["lsl"], got["usl"]) == (90.0, 110.0)
    for name in ("mean", "sigma", "ucl", "lcl", "mr_bar", "mr_ucl"):
        assert got[name] == pytest.approx(getattr(b, name), abs=1e-9), name
    assert round(got["ucl"], 2) == pytest.approx(105.99, abs=0.01)  # as printed
    assert got["cp"] == pytest.approx(20 / (6 * b.sigma))
    assert got["cpk"] == pytest.approx((b.mean - 90) / (3 * b.sigma))
    assert got["baseline"] == {"n": 20, "from": "2026-11-02T06:00:00Z",
                               "to": "2026-11-03T01:00:00Z", "set_by": "first values"}
    assert [p["value"] for p in got["points"]] == CONCENTRATION
    assert all(p["rules"] == [] for p in got["points"])
    assert await spc(http, admin, sop) == got
    # a window: since included, until excluded; the last `limit` of it
    part = await spc(http, supervisor, sop, "?since=2026-11-02T08:00:00Z"
                     "&until=2026-11-02T12:00:00Z&limit=3")
    assert part["n"] == 4 and [p["value"] for p in part["points"]] == CONCENTRATION[3:6]


async def test_a_supervisors_baseline_sets_the_limits_and_is_audited(http, app,
                                                                     supervisor) -> None:
    sop = await make_confirmed_sop(http, supervisor, spc_sop())
    await record(app.state.ctx, sop["id"], CONCENTRATION)
    url = f"/api/v1/sops/{sop['id']}/steps/{step_ids(sop)[0]}/spc/baseline"
    window = {"from": "2026-11-02T10:00:00Z", "to": "2026-11-02T21:00:00Z"}  # values 5..16
    r = await http.post(url, json=window, headers=supervisor.h)
    assert r.status_code == 200, r.text
    b = Baseline.of(CONCENTRATION[4:16])
    got = await spc(http, supervisor, sop)
    assert got["baseline"] == {"n": 12, "from": "2026-11-02T10:00:00Z",
                               "to": "2026-11-02T21:00:00Z", "set_by": "supervisor"}
    assert got["ucl"] == pytest.approx(b.ucl) and got["mean"] == pytest.approx(b.mean)
    async with app.state.ctx.uow(read_only=True) as uow:
        entries = (await uow.sessions.conn.execute(select(audit_log).where(
            audit_log.c.chain == f"sop:{sop['family_id']}",
            audit_log.c.action == "spc_baseline_set"))).mappings().all()
    assert len(entries) == 1 and entries[0]["actor_id"] == supervisor.id
    assert entries[0]["detail"]["n"] == 12
    # too few values, or from after to: 422, nothing changed
    for body in ({"from": "2026-11-02T10:00:00Z", "to": "2026-11-02T12:00:00Z"},
                 {"from": "2026-11-02T21:00:00Z", "to": "2026-11-02T10:00:00Z"},
                 {"from": "2026-11-02T10:00:00Z"}, {**window, "extra": 1},
                 {"from": "2026-11-02T10:00:00", "to": "2026-11-02T21:00:00Z"}):
        r = await http.post(url, json=body, headers=supervisor.h)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    assert await spc(http, supervisor, sop) == got


async def test_a_revision_that_copies_the_step_keeps_its_chart_new_limits_start_one(
        http, app, supervisor) -> None:
    v1 = await make_confirmed_sop(http, supervisor, spc_sop())
    await record(app.state.ctx, v1["id"], CONCENTRATION[:12])
    r = await http.post(f"/api/v1/sops/{v1['id']}/revisions", headers=supervisor.h)
    assert r.status_code == 201, r.text
    v2 = (await http.post(f"/api/v1/sops/{r.json()['id']}/confirm", headers=supervisor.h)
          ).json()
    await record(app.state.ctx, v2["id"], CONCENTRATION[12:], at=T0 + timedelta(days=1))
    both = await spc(http, supervisor, v2)
    assert both["n"] == 20
    assert {**both, "step_id": None} == {**await spc(http, supervisor, v1), "step_id": None}
    r = await http.post(f"/api/v1/sops/{v2['id']}/revisions", headers=supervisor.h)
    body = spc_sop(hi=105.0)
    body["title"] = v2["title"]
    r = await http.put(f"/api/v1/sops/{r.json()['id']}", json=body, headers=supervisor.h)
    assert r.status_code == 200, r.text
    v3 = (await http.post(f"/api/v1/sops/{r.json()['id']}/confirm", headers=supervisor.h)
          ).json()
    fresh = await spc(http, supervisor, v3)
    assert fresh["n"] == 0 and fresh["points"] == [] and fresh["usl"] == 105.0
    assert fresh["ucl"] is None and fresh["cpk"] is None


async def test_an_in_spec_point_beyond_3_sigma_flags_its_session_once(
        http, app, supervisor, worker_user) -> None:
    sop = await make_confirmed_sop(http, supervisor, spc_sop())
    await record(app.state.ctx, sop["id"], CONCENTRATION[:12])
    chart = await spc(http, supervisor, sop)
    assert chart["ucl"] < 108.0 < 110.0  # in spec, beyond 3 sigma
    step = step_ids(sop)[0]
    quiet = await start(http, worker_user, sop)
    r = await check(http, worker_user, quiet["id"], step, value=99.0)
    assert r.status_code == 200 and r.json()["needs_attention"] is False
    await check(http, worker_user, quiet["id"], step_ids(sop)[1], result="passed")
    session = await start(http, worker_user, sop)
    r = await check(http, worker_user, session["id"], step, value=108.0)
    assert r.status_code == 200, r.text
    assert r.json()["checks"][-1]["result"] == "passed"
    assert r.json()["needs_attention"] is True
    # the run is told too: the live session and the Temporal UI's NeedsAttention say so
    handle = app.state.ctx.workflows.client.get_workflow_handle(workflow_id_for(
        worker_user.id))
    for _ in range(100):
        live = (await http.get("/api/v1/sessions/current", headers=worker_user.h)).json()
        if live["needs_attention"]:
            break
        await asyncio.sleep(0.05)
    assert live["needs_attention"] is True and live["id"] == session["id"]
    assert (await handle.describe()).typed_search_attributes.get(NEEDS_ATTENTION) is True
    # it stays flagged as the session goes on (the step passed long ago), to its end
    r = await check(http, worker_user, session["id"], step_ids(sop)[1], result="passed")
    assert r.json()["status"] == "completed"
    await handle.result()
    assert (await handle.describe()).typed_search_attributes.get(NEEDS_ATTENTION) is True
    got = (await http.get(f"/api/v1/sessions/{session['id']}", headers=supervisor.h)).json()
    assert got["needs_attention"] is True
    listed = (await http.get(f"/api/v1/sessions?needs_attention=true&sop_id={sop['id']}",
                             headers=supervisor.h)).json()
    assert [s["id"] for s in listed["items"]] == [session["id"]]
    audit = (await http.get(f"/api/v1/audit?session_id={session['id']}&limit=100",
                            headers=supervisor.h)).json()["items"]
    flagged = [e for e in audit if e["action"] == "session_escalated"]
    assert len(flagged) == 1
    assert flagged[0]["actor_role"] == "system" and flagged[0]["actor_id"] is None
    assert flagged[0]["detail"]["reason"] == "spc" and flagged[0]["detail"]["rules"] == [1]
    assert flagged[0]["detail"]["value"] == 108.0
    # reopened before approval: its new run knows the point (the record still says so)
    r = await http.post(f"/api/v1/sessions/{session['id']}/reopen", headers=supervisor.h,
                        json={"reason": "relabel", "step_id": step_ids(sop)[1]})
    assert r.status_code == 200 and r.json()["needs_attention"] is True, r.text
    live = (await http.get("/api/v1/sessions/current", headers=worker_user.h)).json()
    assert live["id"] == session["id"] and live["needs_attention"] is True
    handle = app.state.ctx.workflows.client.get_workflow_handle(workflow_id_for(
        worker_user.id))
    assert (await handle.describe()).typed_search_attributes.get(NEEDS_ATTENTION) is True
    r = await check(http, worker_user, session["id"], step_ids(sop)[1], result="passed")
    assert r.json()["status"] == "completed" and r.json()["needs_attention"] is True
    await handle.result()
    assert (await handle.describe()).typed_search_attributes.get(NEEDS_ATTENTION) is True
    chart = await spc(http, supervisor, sop)
    assert chart["points"][-1]["value"] == 108.0 and chart["points"][-1]["rules"] == [1]
    assert chart["n"] == 14
    r = await http.get(f"/api/v1/audit?session_id={quiet['id']}&limit=100",
                       headers=supervisor.h)
    assert not [e for e in r.json()["items"] if e["action"] == "session_escalated"]


async def test_bad_requests_are_refused(http, app, supervisor, worker_user) -> None:
    sop = await make_confirmed_sop(http, supervisor, spc_sop())
    other = await make_confirmed_sop(http, supervisor, spc_sop())
    measured, confirm = step_ids(sop)
    await spc(http, worker_user, sop, expect=403)
    await spc(http, supervisor, sop, step=confirm, expect=422)
    await spc(http, supervisor, sop, step=str(uuid.uuid4()), expect=404)
    await spc(http, supervisor, sop, step="not-a-uuid", expect=404)
    await spc(http, supervisor, sop, step=step_ids(other)[0], expect=404)
    await spc(http, supervisor, {"id": str(uuid.uuid4())}, step=measured, expect=404)
    for q in ("?sinse=2026-01-01", "?limit=0", "?limit=5001", "?since=yesterday",
              "?limit=ten"):
        await spc(http, supervisor, sop, q, expect=422)
    empty = await spc(http, supervisor, sop)
    assert empty["n"] == 0 and empty["mean"] is None and empty["baseline"]["n"] == 0
    url = f"/api/v1/sops/{sop['id']}/steps/{measured}/spc/baseline"
    window = {"from": "2026-01-01T00:00:00Z", "to": "2026-12-31T00:00:00Z"}
    r = await http.post(url, json=window, headers=worker_user.h)
    assert r.status_code == 403
    r = await http.post(url, json=window, headers=supervisor.h)
    assert r.status_code == 422  # no values at all
    r = await http.post(f"/api/v1/sops/{sop['id']}/steps/{confirm}/spc/baseline",
                        json=window, headers=supervisor.h)
    assert r.status_code == 422
