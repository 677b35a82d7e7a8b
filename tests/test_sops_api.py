"""The SOP catalog through HTTP (CONTRACT.md "SOPs"), one test per rule it proves."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import httpx

from tests.conftest import User, make_confirmed_sop, sop_body, start, step_ids

SOPS = "/api/v1/sops"

# Copied verbatim from CONTRACT.md.
CONTRACT_EXAMPLE: dict[str, Any] = \
    {"title": "Lockout/Tagout - Press 4",
     "description": "Isolate all energy sources before maintenance",
     "tasks": [
         {"title": "Isolate",
          "steps": [
              {"title": "Stop the press", "instructions": "Press the red stop button",
               "check": {"kind": "confirm", "prompt": "Press has stopped"}},
              {"title": "Measure residual voltage",
               "check": {"kind": "measurement", "prompt": "Voltage at terminal A",
                         "unit": "V", "min": 0, "max": 0.5}}]}]}


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == status
    return body


def error_fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body["errors"]]


def unique_title(prefix: str = "SOP") -> str:
    return f"{prefix} {uuid.uuid4().hex}"


async def create(http: httpx.AsyncClient, user: User, body: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    r = await http.post(SOPS, json=body or sop_body(title=unique_title()), headers=user.h)
    assert r.status_code == 201, r.text
    return r.json()


async def all_ids(http: httpx.AsyncClient, user: User, query: str = "") -> set[str]:
    """Every SOP id the user sees in the listing, paging through with limit=100."""
    ids: set[str] = set()
    offset = 0
    while True:
        r = await http.get(f"{SOPS}?limit=100&offset={offset}{query}", headers=user.h)
        assert r.status_code == 200, r.text
        page = r.json()
        ids |= {s["id"] for s in page["items"]}
        offset += 100
        if offset >= page["total"]:
            return ids


def content(sop: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The SOP's content without ids, for comparing copies."""
    return [(t["position"], t["title"], [(s["position"], s["title"], s["instructions"],
                                          s["check"]) for s in t["steps"]])
            for t in sop["tasks"]]


# --- creating -------------------------------------------------------------------------------

async def test_create_contract_example_returns_draft_v1_with_ids_and_positions(http, supervisor):
    r = await http.post(SOPS, json=CONTRACT_EXAMPLE, headers=supervisor.h)
    assert r.status_code == 201, r.text
    sop = r.json()
    uuid.UUID(sop["id"])
    uuid.UUID(sop["family_id"])
    assert sop["status"] == "draft"
    assert sop["version"] == 1
    assert datetime.fromisoformat(sop["created_at"]).utcoffset() is not None
    assert sop["confirmed_at"] is None
    assert sop["title"] == CONTRACT_EXAMPLE["title"]
    assert sop["description"] == CONTRACT_EXAMPLE["description"]

    assert [t["position"] for t in sop["tasks"]] == [0]
    task = sop["tasks"][0]
    uuid.UUID(task["id"])
    assert task["title"] == "Isolate"
    assert [s["position"] for s in task["steps"]] == [0, 1]
    assert [s["title"] for s in task["steps"]] == ["Stop the press", "Measure residual voltage"]
    ids = [task["id"], *(s["id"] for s in task["steps"])]
    assert len(set(ids)) == 3 and sop["id"] not in ids
    for s in ids:
        uuid.UUID(s)
    stop, measure = task["steps"]
    assert stop["instructions"] == "Press the red stop button"
    assert stop["check"]["kind"] == "confirm"
    assert stop["check"]["prompt"] == "Press has stopped"
    assert measure["check"]["kind"] == "measurement"
    assert measure["check"]["prompt"] == "Voltage at terminal A"
    assert measure["check"]["unit"] == "V"
    assert measure["check"]["min"] == 0 and measure["check"]["max"] == 0.5

    r = await http.get(f"{SOPS}/{sop['id']}", headers=supervisor.h)
    assert r.status_code == 200 and r.json() == sop


async def test_create_preserves_task_and_step_order_across_many_tasks(http, supervisor):
    body = sop_body(steps_per_task=(3, 1, 2), title=unique_title())
    sop = await create(http, supervisor, body)
    assert [t["title"] for t in sop["tasks"]] == ["Task 1", "Task 2", "Task 3"]
    assert [t["position"] for t in sop["tasks"]] == [0, 1, 2]
    assert [[s["position"] for s in t["steps"]] for t in sop["tasks"]] == [[0, 1, 2], [0], [0, 1]]
    assert [s["title"] for t in sop["tasks"] for s in t["steps"]] == \
        [f"Step {n}" for n in range(1, 7)]
    assert len(set(step_ids(sop))) == 6


async def test_admin_may_create_sops(http, admin):
    await create(http, admin)


async def test_worker_creating_an_sop_gets_403(http, worker_user):
    r = await http.post(SOPS, json=sop_body(), headers=worker_user.h)
    assert_problem(r, 403)


async def test_no_token_gets_401_problem_with_www_authenticate_bearer(http):
    r = await http.post(SOPS, json=sop_body())
    assert_problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"
    r = await http.get(SOPS)
    assert_problem(r, 401)
    assert r.headers["www-authenticate"] == "Bearer"


# --- validation -----------------------------------------------------------------------------

async def test_sop_without_tasks_is_422_naming_tasks(http, supervisor):
    body = {**sop_body(), "tasks": []}
    problem = assert_problem(await http.post(SOPS, json=body, headers=supervisor.h), 422)
    assert any(f.endswith("tasks") for f in error_fields(problem)), problem


async def test_sop_missing_tasks_is_422_naming_tasks(http, supervisor):
    body = {"title": "No tasks at all"}
    problem = assert_problem(await http.post(SOPS, json=body, headers=supervisor.h), 422)
    assert any(f.endswith("tasks") for f in error_fields(problem)), problem


async def test_task_without_steps_is_422_naming_that_tasks_steps(http, supervisor):
    body = sop_body(steps_per_task=(1, 1))
    body["tasks"][1]["steps"] = []
    problem = assert_problem(await http.post(SOPS, json=body, headers=supervisor.h), 422)
    assert any(f.endswith("tasks.1.steps") for f in error_fields(problem)), problem


async def test_measurement_with_min_above_max_is_422_naming_the_check(http, supervisor):
    body = sop_body(steps_per_task=(2,), measurement_at=1)
    body["tasks"][0]["steps"][1]["check"].update(min=5, max=1)
    problem = assert_problem(await http.post(SOPS, json=body, headers=supervisor.h), 422)
    assert any("tasks.0.steps.1.check" in f for f in error_fields(problem)), problem


async def test_measurement_with_neither_min_nor_max_is_422_naming_the_check(http, supervisor):
    body = sop_body(steps_per_task=(2,), measurement_at=1)
    check = body["tasks"][0]["steps"][1]["check"]
    del check["min"], check["max"]
    problem = assert_problem(await http.post(SOPS, json=body, headers=supervisor.h), 422)
    assert any("tasks.0.steps.1.check" in f for f in error_fields(problem)), problem


async def test_measurement_with_only_min_or_only_max_is_accepted(http, supervisor):
    for bound in ("min", "max"):
        body = sop_body(steps_per_task=(2,), measurement_at=1, title=unique_title())
        check = body["tasks"][0]["steps"][1]["check"]
        del check["max" if bound == "min" else "min"]
        sop = await create(http, supervisor, body)
        assert sop["tasks"][0]["steps"][1]["check"][bound] is not None


async def test_confirm_check_with_min_is_422_naming_the_check(http, supervisor):
    body = sop_body(steps_per_task=(2,), measurement_at=1)
    body["tasks"][0]["steps"][0]["check"]["min"] = 1
    problem = assert_problem(await http.post(SOPS, json=body, headers=supervisor.h), 422)
    assert any("tasks.0.steps.0.check" in f for f in error_fields(problem)), problem


async def test_unknown_check_kind_is_422_naming_the_kind(http, supervisor):
    body = sop_body(steps_per_task=(1,), measurement_at=None)
    body["tasks"][0]["steps"][0]["check"]["kind"] = "photo"
    problem = assert_problem(await http.post(SOPS, json=body, headers=supervisor.h), 422)
    assert any("tasks.0.steps.0.check.kind" in f for f in error_fields(problem)), problem


async def test_invalid_put_body_is_422_and_leaves_the_draft_unchanged(http, supervisor):
    sop = await create(http, supervisor)
    body = {**sop_body(), "tasks": []}
    assert_problem(await http.put(f"{SOPS}/{sop['id']}", json=body, headers=supervisor.h), 422)
    r = await http.get(f"{SOPS}/{sop['id']}", headers=supervisor.h)
    assert r.json() == sop


# --- editing and confirming -----------------------------------------------------------------

async def test_put_replaces_the_content_of_a_draft(http, supervisor):
    sop = await create(http, supervisor)
    new_title = unique_title("Edited")
    body = sop_body(steps_per_task=(1, 1, 1), title=new_title, measurement_at=2)
    body["description"] = "changed"
    r = await http.put(f"{SOPS}/{sop['id']}", json=body, headers=supervisor.h)
    assert r.status_code == 200, r.text
    edited = r.json()
    assert edited["id"] == sop["id"] and edited["family_id"] == sop["family_id"]
    assert edited["status"] == "draft" and edited["version"] == 1
    assert edited["title"] == new_title and edited["description"] == "changed"
    assert [len(t["steps"]) for t in edited["tasks"]] == [1, 1, 1]
    assert edited["tasks"][2]["steps"][0]["check"]["kind"] == "measurement"
    r = await http.get(f"{SOPS}/{sop['id']}", headers=supervisor.h)
    assert r.status_code == 200 and r.json() == edited


async def test_put_on_a_confirmed_sop_is_409_and_changes_nothing(http, supervisor):
    sop = await make_confirmed_sop(http, supervisor, sop_body(title=unique_title()))
    r = await http.put(f"{SOPS}/{sop['id']}", json=sop_body(title="changed"),
                       headers=supervisor.h)
    assert_problem(r, 409)
    r = await http.get(f"{SOPS}/{sop['id']}", headers=supervisor.h)
    assert r.json() == sop


async def test_confirm_turns_a_draft_confirmed_with_confirmed_at(http, supervisor):
    sop = await create(http, supervisor)
    r = await http.post(f"{SOPS}/{sop['id']}/confirm", headers=supervisor.h)
    assert r.status_code == 200, r.text
    confirmed = r.json()
    assert confirmed["status"] == "confirmed"
    assert datetime.fromisoformat(confirmed["confirmed_at"]).utcoffset() is not None
    assert content(confirmed) == content(sop)
    assert step_ids(confirmed) == step_ids(sop)


async def test_confirming_twice_is_409(http, supervisor):
    sop = await make_confirmed_sop(http, supervisor, sop_body(title=unique_title()))
    r = await http.post(f"{SOPS}/{sop['id']}/confirm", headers=supervisor.h)
    assert_problem(r, 409)


async def test_worker_editing_or_confirming_a_confirmed_sop_gets_403(http, supervisor,
                                                                      worker_user):
    sop = await make_confirmed_sop(http, supervisor, sop_body(title=unique_title()))
    assert_problem(await http.put(f"{SOPS}/{sop['id']}", json=sop_body(),
                                  headers=worker_user.h), 403)
    assert_problem(await http.post(f"{SOPS}/{sop['id']}/confirm", headers=worker_user.h), 403)
    assert_problem(await http.post(f"{SOPS}/{sop['id']}/revisions", headers=worker_user.h), 403)


async def test_editing_or_confirming_an_unknown_sop_is_404(http, supervisor):
    missing = uuid.uuid4()
    assert_problem(await http.put(f"{SOPS}/{missing}", json=sop_body(),
                                  headers=supervisor.h), 404)
    assert_problem(await http.post(f"{SOPS}/{missing}/confirm", headers=supervisor.h), 404)
    assert_problem(await http.post(f"{SOPS}/{missing}/revisions", headers=supervisor.h), 404)
    assert_problem(await http.delete(f"{SOPS}/{missing}", headers=supervisor.h), 404)


# --- revisions ------------------------------------------------------------------------------

async def test_revision_of_a_confirmed_sop_is_a_new_draft_version_2_in_the_same_family(
        http, supervisor):
    body = sop_body(title=unique_title())
    # every field of a check is copied, the ones that are not their default too
    body["tasks"][0]["steps"][0]["check"].update(evidence="required", verify=True)
    v1 = await make_confirmed_sop(http, supervisor, body)
    r = await http.post(f"{SOPS}/{v1['id']}/revisions", headers=supervisor.h)
    assert r.status_code == 201, r.text
    v2 = r.json()
    assert v2["tasks"][0]["steps"][0]["check"]["verify"] is True
    assert v2["id"] != v1["id"]
    assert v2["status"] == "draft" and v2["confirmed_at"] is None
    assert v2["version"] == 2
    assert v2["family_id"] == v1["family_id"]
    assert v2["title"] == v1["title"] and v2["description"] == v1["description"]
    assert content(v2) == content(v1)
    old_ids = {t["id"] for t in v1["tasks"]} | set(step_ids(v1))
    new_ids = {t["id"] for t in v2["tasks"]} | set(step_ids(v2))
    assert len(new_ids) == len(old_ids) and not new_ids & old_ids
    r = await http.get(f"{SOPS}/{v1['id']}", headers=supervisor.h)
    assert r.json() == v1


async def test_revision_of_a_draft_is_409(http, supervisor):
    draft = await create(http, supervisor)
    assert_problem(await http.post(f"{SOPS}/{draft['id']}/revisions", headers=supervisor.h), 409)


async def test_revision_of_an_older_version_still_gets_the_next_family_version(
        http, supervisor):
    v1 = await make_confirmed_sop(http, supervisor, sop_body(title=unique_title()))
    r = await http.post(f"{SOPS}/{v1['id']}/revisions", headers=supervisor.h)
    assert r.status_code == 201 and r.json()["version"] == 2
    r = await http.post(f"{SOPS}/{v1['id']}/revisions", headers=supervisor.h)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 3 and r.json()["family_id"] == v1["family_id"]


async def test_confirming_a_revision_leaves_v1_and_its_sessions_on_version_1(
        http, supervisor, worker_user):
    v1 = await make_confirmed_sop(http, supervisor, sop_body(title=unique_title()))
    session = await start(http, worker_user, v1)
    assert session["sop"]["version"] == 1

    r = await http.post(f"{SOPS}/{v1['id']}/revisions", headers=supervisor.h)
    assert r.status_code == 201, r.text
    v2 = r.json()
    body = sop_body(steps_per_task=(1,), title=v1["title"], measurement_at=None)
    r = await http.put(f"{SOPS}/{v2['id']}", json=body, headers=supervisor.h)
    assert r.status_code == 200, r.text
    r = await http.post(f"{SOPS}/{v2['id']}/confirm", headers=supervisor.h)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "confirmed" and r.json()["version"] == 2

    r = await http.get(f"{SOPS}/{v1['id']}", headers=supervisor.h)
    assert r.status_code == 200
    assert r.json()["status"] == "confirmed" and r.json() == v1

    r = await http.get(f"/api/v1/sessions/{session['id']}", headers=worker_user.h)
    assert r.status_code == 200, r.text
    s = r.json()
    assert s["sop"] == {"id": v1["id"], "title": v1["title"], "version": 1}
    assert s["status"] == "in_progress"
    assert s["current_step_id"] == step_ids(v1)[0]
    assert s["current_step"]["total"] == len(step_ids(v1))


# --- listing --------------------------------------------------------------------------------

async def test_listing_has_the_paging_shape_with_default_limit_20(http, supervisor):
    await create(http, supervisor)
    r = await http.get(SOPS, headers=supervisor.h)
    assert r.status_code == 200, r.text
    page = r.json()
    assert set(page) == {"items", "total", "limit", "offset"}
    assert page["limit"] == 20 and page["offset"] == 0
    assert page["total"] >= 1
    assert len(page["items"]) == min(20, page["total"])


async def test_listing_limit_is_capped_at_100(http, supervisor):
    r = await http.get(f"{SOPS}?limit=1000", headers=supervisor.h)
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["limit"] == 100
    assert len(page["items"]) <= 100


async def test_listing_limit_and_offset_page_through_newest_first(http, supervisor):
    mine = [(await create(http, supervisor))["id"] for _ in range(3)]
    newest_first = list(reversed(mine))
    r = await http.get(f"{SOPS}?limit=2&offset=0", headers=supervisor.h)
    first = r.json()
    assert first["limit"] == 2 and first["offset"] == 0
    assert [s["id"] for s in first["items"]] == newest_first[:2]
    r = await http.get(f"{SOPS}?limit=2&offset=1", headers=supervisor.h)
    second = r.json()
    assert second["offset"] == 1
    assert [s["id"] for s in second["items"]] == newest_first[1:3]
    assert second["total"] == first["total"]
    r = await http.get(f"{SOPS}?limit=2&offset={first['total']}", headers=supervisor.h)
    assert r.status_code == 200 and r.json()["items"] == []


async def test_listing_status_filter(http, supervisor):
    draft = await create(http, supervisor)
    confirmed = await make_confirmed_sop(http, supervisor, sop_body(title=unique_title()))
    drafts = await all_ids(http, supervisor, "&status=draft")
    confirmeds = await all_ids(http, supervisor, "&status=confirmed")
    everything = await all_ids(http, supervisor)
    assert draft["id"] in drafts and draft["id"] not in confirmeds
    assert confirmed["id"] in confirmeds and confirmed["id"] not in drafts
    assert {draft["id"], confirmed["id"]} <= everything
    r = await http.get(f"{SOPS}?status=draft&limit=100", headers=supervisor.h)
    assert {s["status"] for s in r.json()["items"]} == {"draft"}


async def test_listing_with_an_unknown_status_is_422(http, supervisor):
    problem = assert_problem(await http.get(f"{SOPS}?status=bogus", headers=supervisor.h), 422)
    assert any("status" in f for f in error_fields(problem)), problem


async def test_workers_only_ever_see_confirmed_sops(http, supervisor, worker_user):
    draft = await create(http, supervisor)
    confirmed = await make_confirmed_sop(http, supervisor, sop_body(title=unique_title()))

    assert_problem(await http.get(f"{SOPS}/{draft['id']}", headers=worker_user.h), 404)
    r = await http.get(f"{SOPS}/{confirmed['id']}", headers=worker_user.h)
    assert r.status_code == 200 and r.json() == confirmed

    seen = await all_ids(http, worker_user)
    assert confirmed["id"] in seen and draft["id"] not in seen
    assert draft["id"] not in await all_ids(http, worker_user, "&status=draft")
    r = await http.get(f"{SOPS}?status=draft&limit=100", headers=worker_user.h)
    assert r.status_code == 200
    assert all(s["status"] == "confirmed" for s in r.json()["items"])
    r = await http.get(f"{SOPS}?limit=100", headers=worker_user.h)
    assert all(s["status"] == "confirmed" for s in r.json()["items"])


async def test_archived_sops_are_hidden_unless_status_archived_is_asked(
        http, supervisor, worker_user):
    sop = await make_confirmed_sop(http, supervisor, sop_body(title=unique_title()))
    session = await start(http, worker_user, sop)
    r = await http.post(f"/api/v1/sessions/{session['id']}/cancel", json={"reason": "done"},
                        headers=worker_user.h)
    assert r.status_code == 200, r.text

    r = await http.delete(f"{SOPS}/{sop['id']}", headers=supervisor.h)
    assert r.status_code == 204, r.text
    r = await http.get(f"{SOPS}/{sop['id']}", headers=supervisor.h)
    assert r.status_code == 200 and r.json()["status"] == "archived"

    assert sop["id"] not in await all_ids(http, supervisor)
    assert sop["id"] not in await all_ids(http, supervisor, "&status=confirmed")
    assert sop["id"] in await all_ids(http, supervisor, "&status=archived")
    r = await http.get(f"{SOPS}?status=archived&limit=100", headers=supervisor.h)
    assert {s["status"] for s in r.json()["items"]} == {"archived"}

    r = await http.get(f"/api/v1/sessions/{session['id']}", headers=worker_user.h)
    assert r.status_code == 200 and r.json()["sop"]["id"] == sop["id"]


# --- deleting -------------------------------------------------------------------------------

async def test_deleting_an_unused_draft_is_204_and_then_404(http, supervisor):
    sop = await create(http, supervisor)
    r = await http.delete(f"{SOPS}/{sop['id']}", headers=supervisor.h)
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert_problem(await http.get(f"{SOPS}/{sop['id']}", headers=supervisor.h), 404)
    assert_problem(await http.delete(f"{SOPS}/{sop['id']}", headers=supervisor.h), 404)
    assert sop["id"] not in await all_ids(http, supervisor, "&status=archived")


async def test_deleting_an_unused_confirmed_sop_is_204_and_then_404(http, admin):
    sop = await make_confirmed_sop(http, admin, sop_body(title=unique_title()))
    r = await http.delete(f"{SOPS}/{sop['id']}", headers=admin.h)
    assert r.status_code == 204, r.text
    assert_problem(await http.get(f"{SOPS}/{sop['id']}", headers=admin.h), 404)


async def test_worker_deleting_gets_403_on_a_confirmed_sop_and_404_on_a_draft(
        http, supervisor, worker_user):
    confirmed = await make_confirmed_sop(http, supervisor, sop_body(title=unique_title()))
    draft = await create(http, supervisor)
    assert_problem(await http.delete(f"{SOPS}/{confirmed['id']}", headers=worker_user.h), 403)
    assert_problem(await http.delete(f"{SOPS}/{draft['id']}", headers=worker_user.h), 404)
    r = await http.get(f"{SOPS}/{confirmed['id']}", headers=supervisor.h)
    assert r.status_code == 200 and r.json()["status"] == "confirmed"
    r = await http.get(f"{SOPS}/{draft['id']}", headers=supervisor.h)
    assert r.status_code == 200 and r.json()["status"] == "draft"


async def test_worker_editing_a_draft_gets_404_not_403(http, supervisor, worker_user):
    draft = await create(http, supervisor)
    assert_problem(await http.put(f"{SOPS}/{draft['id']}", json=sop_body(),
                                  headers=worker_user.h), 404)
    assert_problem(await http.post(f"{SOPS}/{draft['id']}/confirm", headers=worker_user.h), 404)
