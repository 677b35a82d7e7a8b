"""SOP statistics through HTTP (contract v1.1), against a dataset with known answers.

The SOP has three steps; times are seconds after each session's start (`seed`):

    A  T0     s1 passed at 10 · s2 passed +20 · s3 passed +30            completed, 60 s
    B  T0+1h  s1 failed 5, passed 20 · pause 30–120 · s2 passed 140 · s3 +50
                                                                         completed, 100 s
    C  T0+2h  s1 passed 30 · s2 failed, failed, passed at +40 · s3 +70   completed, 140 s
    D  T0+3h  s1 passed 40 · cancelled 5 s into s2
    E  T0+4h  s1 failed at 3                                             in progress
    G  T0+5h  s1 passed 50 · paused on s2
    and one session of another SOP, which must not count.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import User, make_confirmed_sop, sop_body, step_ids
from tests.seed import Step, failed, passed, seed

T0 = datetime(2026, 4, 6, 6, 0, tzinfo=UTC)


@pytest.fixture
async def measured_sop(http: Any, app: Any, supervisor: User) -> dict[str, Any]:
    ctx = app.state.ctx
    sop = await make_confirmed_sop(http, supervisor, sop_body(title=f"Stats {uuid.uuid4()}"))
    other = await make_confirmed_sop(http, supervisor, sop_body(title=f"Other {uuid.uuid4()}"))
    plays = [
        (passed(10), passed(20), passed(30)),
        (failed(5), passed(15), Step("pause", 10), Step("resume", 90), passed(20), passed(50)),
        (passed(30), failed(10), failed(10), passed(20), passed(70)),
        (passed(40), Step("cancel", 5)),
        (failed(3),),
        (passed(50), Step("pause", 1)),
    ]
    for hour, script in enumerate(plays):
        await seed(ctx, sop["id"], uuid.uuid4(), T0 + timedelta(hours=hour), *script)
    await seed(ctx, other["id"], uuid.uuid4(), T0, passed(999), passed(999), passed(999))
    return sop


async def stats(http: Any, user: User, sop_id: str, query: str = "",
                expect: int = 200) -> Any:
    r = await http.get(f"/api/v1/sops/{sop_id}/stats{query}", headers=user.h)
    assert r.status_code == expect, r.text
    return r.json()


async def test_statistics_of_an_sop_match_the_known_answers(http, supervisor, admin,
                                                            measured_sop):
    got = await stats(http, supervisor, measured_sop["id"])
    assert got["sop_id"] == measured_sop["id"] and got["version"] == 1
    assert got["sessions"] == {"started": 6, "completed": 3, "cancelled": 1,
                               "in_progress": 2, "median_seconds": 100.0,
                               "p90_seconds": 132.0}  # 100 + 0.8 * (140 - 100)
    s1, s2, s3 = step_ids(measured_sop)
    titles = [s["title"] for t in measured_sop["tasks"] for s in t["steps"]]
    assert got["steps"] == [
        {"step_id": s1, "title": titles[0], "reached": 6, "passed": 5,
         "first_try_pass_rate": 0.6667, "failed_checks": 2,
         "median_seconds": 30.0, "p90_seconds": 46.0},   # of 10 20 30 40 50
        {"step_id": s2, "title": titles[1], "reached": 5, "passed": 3,
         "first_try_pass_rate": 0.6667, "failed_checks": 2,
         "median_seconds": 30.0, "p90_seconds": 38.0},   # of 20 30 40
        {"step_id": s3, "title": titles[2], "reached": 3, "passed": 3,
         "first_try_pass_rate": 1.0, "failed_checks": 0,
         "median_seconds": 50.0, "p90_seconds": 66.0},   # of 30 50 70
    ]
    assert await stats(http, admin, measured_sop["id"]) == got


async def test_since_and_until_narrow_by_start(http, supervisor, measured_sop):
    got = await stats(http, supervisor, measured_sop["id"],
                      "?since=2026-04-06T07:00:00Z&until=2026-04-06T09:00:00Z")  # B and C
    assert got["sessions"] == {"started": 2, "completed": 2, "cancelled": 0,
                               "in_progress": 0, "median_seconds": 120.0,
                               "p90_seconds": 136.0}
    first = got["steps"][0]
    assert (first["reached"], first["passed"], first["median_seconds"],
            first["p90_seconds"], first["first_try_pass_rate"]) == (2, 2, 25.0, 29.0, 0.5)
    empty = await stats(http, supervisor, measured_sop["id"], "?since=2027-01-01")
    assert empty["sessions"] == {"started": 0, "completed": 0, "cancelled": 0,
                                 "in_progress": 0, "median_seconds": None,
                                 "p90_seconds": None}
    assert {(s["reached"], s["first_try_pass_rate"], s["median_seconds"])
            for s in empty["steps"]} == {(0, None, None)}


async def test_who_may_ask_and_bad_requests(http, supervisor, worker_user, measured_sop):
    sid = measured_sop["id"]
    assert (await stats(http, worker_user, sid, expect=403))["status"] == 403
    await stats(http, supervisor, str(uuid.uuid4()), expect=404)
    await stats(http, worker_user, str(uuid.uuid4()), expect=404)  # 404 before 403
    await stats(http, supervisor, "not-a-uuid", expect=404)
    for query, field in (("?since=last-week", "query.since"), ("?until=2026-02-30", "query.until"),
                         ("?from=2026-01-01", "query.from")):
        problem = await stats(http, supervisor, sid, query, expect=422)
        assert field in [e["field"] for e in problem["errors"]]
