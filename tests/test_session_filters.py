"""Session list filters through HTTP (contract v1.1): applied by the database before paging,
`total` counts the filtered set, a worker's list stays their own."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import User, make_confirmed_sop, sop_body
from tests.seed import Step, failed, passed, seed

T0 = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


@pytest.fixture
async def fleet(http: Any, app: Any, supervisor: User) -> dict[str, Any]:
    """Two versions of one SOP family and another SOP; sessions of four workers, an hour
    apart, newest last:

    0 w1 A1 completed · 1 w1 A1 cancelled · 2 w1 A2 completed, approved (locked) ·
    3 w2 A1 in progress, needs attention · 4 w3 B completed · 5 w3 B in progress ·
    6 w4 A2 paused
    """
    ctx = app.state.ctx
    a1 = await make_confirmed_sop(http, supervisor, sop_body(title=f"A {uuid.uuid4()}"))
    r = await http.post(f"/api/v1/sops/{a1['id']}/revisions", headers=supervisor.h)
    assert r.status_code == 201, r.text
    r = await http.post(f"/api/v1/sops/{r.json()['id']}/confirm", headers=supervisor.h)
    a2 = r.json()
    b = await make_confirmed_sop(http, supervisor, sop_body(title=f"B {uuid.uuid4()}"))
    w = [User(uuid.uuid4(), "worker") for _ in range(4)]
    done = (passed(60), passed(60), passed(60))
    plays: list[tuple[User, dict, tuple[Step, ...], int]] = [
        (w[0], a1, done, 0),
        (w[0], a1, (Step("cancel", 30),), 0),
        (w[0], a2, (*done, Step("approve", 600)), 0),
        (w[1], a1, (failed(10), failed(10)), 2),
        (w[2], b, done, 0),
        (w[2], b, (passed(5),), 0),
        (w[3], a2, (Step("pause", 5),), 0),
    ]
    ids = []
    for i, (user, sop, script, escalate) in enumerate(plays):
        s = await seed(ctx, sop["id"], user.id, T0 + timedelta(hours=i), *script,
                       escalate_after_failures=escalate)
        ids.append(str(s.state.id))
    return {"a1": a1, "a2": a2, "b": b, "w": w, "ids": ids}


async def listed(http: Any, user: User, query: str, expect: int = 200) -> Any:
    r = await http.get(f"/api/v1/sessions?{query}", headers=user.h)
    assert r.status_code == expect, r.text
    return r.json()


def order(fleet: dict[str, Any], *indexes: int) -> list[str]:
    """The sessions named by index, as the list shows them (newest first)."""
    return [fleet["ids"][i] for i in sorted(indexes, reverse=True)]


async def test_each_filter_selects_its_sessions(http, supervisor, fleet):
    f, ids = fleet, fleet["ids"]
    family = f"sop_family_id={f['a1']['family_id']}"
    cases = {
        f"sop_id={f['a1']['id']}": (0, 1, 3),
        f"sop_id={f['a2']['id']}": (2, 6),
        family: (0, 1, 2, 3, 6),
        f"worker_id={f['w'][0].id}": (0, 1, 2),
        f"{family}&needs_attention=true": (3,),
        f"{family}&needs_attention=false": (0, 1, 2, 6),
        f"{family}&locked=true": (2,),
        f"{family}&locked=false": (0, 1, 3, 6),
        f"{family}&status=paused": (6,),
        f"{family}&started_after={(T0 + timedelta(hours=2)).isoformat()}": (2, 3, 6),
        f"{family}&started_before=2026-03-02T08:00:00Z": (0, 1),
        # a window, a date without a time, and a time without a zone (UTC)
        f"{family}&started_after=2026-03-02T07:00:00&started_before=2026-03-02T09:30:00%2B00:00":
            (1, 2, 3),
        f"{family}&started_after=2026-03-03": (),
        f"{family}&started_after=2026-03-02T09:00Z&started_before=2026-03-02T09:00Z": (),
        f"sop_id={f['b']['id']}&worker_id={f['w'][2].id}&status=completed": (4,),
    }
    for query, expected in cases.items():
        page = await listed(http, supervisor, query)
        assert [i["id"] for i in page["items"]] == order(f, *expected), query
        assert page["total"] == len(expected), query
    item = (await listed(http, supervisor, f"sop_id={f['a1']['id']}&needs_attention=true")
            )["items"][0]
    assert item["id"] == ids[3] and item["needs_attention"] is True
    assert item["worker_id"] == str(f["w"][1].id)
    assert item["sop"] == {"id": f["a1"]["id"], "title": f["a1"]["title"], "version": 1}
    assert item["status"] == "in_progress" and item["locked"] is False


async def test_totals_count_the_filtered_set_across_pages(http, supervisor, fleet):
    query = f"sop_family_id={fleet['a1']['family_id']}&limit=2"
    pages = [await listed(http, supervisor, f"{query}&offset={o}") for o in (0, 2, 4, 6)]
    assert [p["total"] for p in pages] == [5, 5, 5, 5]
    assert [len(p["items"]) for p in pages] == [2, 2, 1, 0]
    assert [i["id"] for p in pages for i in p["items"]] == order(fleet, 0, 1, 2, 3, 6)


async def test_a_worker_sees_only_their_own_whatever_they_send(http, fleet):
    w0, w1 = fleet["w"][0], fleet["w"][1]
    own = await listed(http, w0, "")
    assert [i["id"] for i in own["items"]] == order(fleet, 0, 1, 2) and own["total"] == 3
    other = await listed(http, w0, f"worker_id={w1.id}")
    assert other == {"items": [], "total": 0, "limit": 20, "offset": 0}
    other = await listed(http, w0, f"sop_id={fleet['b']['id']}")  # only w3 ran B
    assert other["items"] == [] and other["total"] == 0
    mine = await listed(http, w0, f"worker_id={w0.id}&locked=true")
    assert [i["id"] for i in mine["items"]] == order(fleet, 2)


@pytest.mark.parametrize("query, field", [
    ("sop_id=nope", "query.sop_id"),
    ("sop_family_id=123", "query.sop_family_id"),
    ("worker_id=", "query.worker_id"),
    ("needs_attention=maybe", "query.needs_attention"),
    ("locked=2", "query.locked"),
    ("status=done", "query.status"),
    ("started_after=yesterday", "query.started_after"),
    ("started_before=2026-13-01", "query.started_before"),
    ("started_before=0001-01-01T00:00:00%2B05:00", "query.started_before"),
    ("needs_atention=true", "query.needs_atention"),  # misspelt: refused, not ignored
    ("limit=0", "query.limit"),
])
async def test_bad_filters_are_422_naming_the_field(http, supervisor, query, field):
    r = await http.get(f"/api/v1/sessions?{query}", headers=supervisor.h)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]], r.json()


async def test_sqlite_keeps_statistics_for_its_query_planner(db, fleet):
    """Without them SQLite picks the `locked` index for `sop + status + locked` and reads
    half the table (75 ms at 100,000 sessions against 2 ms; benchmarks/read_model.py)."""
    if not db.is_sqlite:
        pytest.skip("PostgreSQL's autovacuum keeps its own")
    await db.refresh_planner_statistics()
    async with db.read() as conn:
        tables = {r[0] for r in (await conn.exec_driver_sql("SELECT tbl FROM sqlite_stat1"))}
    assert {"work_sessions", "session_steps"} <= tables
