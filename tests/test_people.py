"""The directory of people through HTTP (contract v1.2, "People"), `/me`, `worker_name` on
sessions, and `/` sending a browser to the console: the real app on the real database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import httpx
import pytest

from api.app import create_app
from application import people as uc
from application.authz import Actor, Role
from application.context import Context, SeenPeople
from persistence.people import PeopleRepository
from persistence.uow import SqlStore
from tests import test_oidc
from tests.conftest import SECRET, User, bearer, make_confirmed_sop, pass_step, start
from tests.test_oidc import AUDIENCE, ROLE_MAP, Provider, h
from worksession.settings import Settings

provider = test_oidc.provider  # the stand-in identity provider, one per test

PEOPLE = "/api/v1/people"


def tag() -> str:
    """A word no other test's names contain (the database is shared by the whole run)."""
    return f"t{uuid.uuid4().hex[:10]}"


async def found(http: httpx.AsyncClient, supervisor: User, **params: Any) -> dict[str, Any]:
    r = await http.get(PEOPLE, params=params, headers=supervisor.h)
    assert r.status_code == 200, r.text
    return r.json()


async def person(http: httpx.AsyncClient, supervisor: User, who: uuid.UUID) -> dict[str, Any]:
    r = await http.get(f"{PEOPLE}/{who}", headers=supervisor.h)
    assert r.status_code == 200, r.text
    return r.json()


# ---- written as tokens are accepted ------------------------------------------------------

async def test_a_person_is_listed_after_their_first_request_by_their_tokens_name(
        http: httpx.AsyncClient, supervisor: User) -> None:
    name = f"Ada Lovelace {tag()}"
    ada = User(uuid.uuid4(), "worker", name)
    r = await http.get(f"{PEOPLE}/{ada.id}", headers=supervisor.h)
    assert r.status_code == 404  # not seen yet
    assert (await http.get("/api/v1/sops", headers=ada.h)).status_code == 200
    page = await found(http, supervisor, q=name)
    assert page["total"] == 1 and page["limit"] == 20 and page["offset"] == 0, page
    (item,) = page["items"]
    assert set(item) == {"id", "name", "role", "first_seen", "last_seen"}
    assert item["id"] == str(ada.id) and item["name"] == name and item["role"] == "worker"
    assert item["first_seen"] == item["last_seen"]
    assert datetime.fromisoformat(item["first_seen"]).tzinfo is not None
    assert await person(http, supervisor, ada.id) == item


async def test_the_name_follows_the_token_and_a_token_without_one_keeps_it(
        http: httpx.AsyncClient, supervisor: User) -> None:
    t, who = tag(), uuid.uuid4()
    assert (await http.get("/api/v1/me", headers=bearer("worker", who, name=f"Bob {t}"))
            ).status_code == 200
    assert (await person(http, supervisor, who))["name"] == f"Bob {t}"
    # a new token says another name: updated at once, not a minute later
    r = await http.get("/api/v1/me", headers=bearer("worker", who, name=f"Robert {t}"))
    assert r.json()["name"] == f"Robert {t}"
    assert (await person(http, supervisor, who))["name"] == f"Robert {t}"
    # a token without a name (a service's, a development token) does not erase it
    assert (await http.get("/api/v1/me", headers=bearer("worker", who))).json()["name"] is None
    assert (await person(http, supervisor, who))["name"] == f"Robert {t}"
    # and a role that changed is the directory's at once too
    await http.get("/api/v1/me", headers=bearer("supervisor", who))
    assert (await person(http, supervisor, who))["role"] == "supervisor"


async def test_preferred_username_when_no_name_and_what_is_not_a_name_is_ignored(
        http: httpx.AsyncClient, supervisor: User) -> None:
    t = tag()
    cases = {  # the token's claims -> the directory's name
        "preferred_username alone": ({"preferred_username": f"ada.{t}"}, f"ada.{t}"),
        "name not a string": ({"name": ["Ada"], "preferred_username": f"ada2.{t}"},
                              f"ada2.{t}"),
        "name blank": ({"name": " \n ", "preferred_username": f"ada3.{t}"}, f"ada3.{t}"),
        "control characters": ({"name": f"Ada\x00\x1b[31m\nL {t}\u202e"},
                               f"Ada [31m L {t}"),
        "absurdly long": ({"name": f"{t} " + "A" * 5000}, f"{t} " + "A" * (200 - len(t) - 1)),
        "nothing usable": ({"name": 7, "preferred_username": {"x": 1}}, None),
    }
    for label, (claims, want) in cases.items():
        who = uuid.uuid4()
        r = await http.get("/api/v1/me", headers={"Authorization": "Bearer " + _token(
            "worker", who, claims)})
        assert r.status_code == 200, (label, r.text)
        assert r.json()["name"] == want, label
        assert (await person(http, supervisor, who))["name"] == want, label


def _token(role: str, sub: uuid.UUID, claims: dict[str, Any]) -> str:
    import jwt

    now = int(datetime.now(UTC).timestamp())
    return jwt.encode({"sub": str(sub), "role": role, "iat": now, "exp": now + 600, **claims},
                      SECRET, algorithm="HS256")


async def test_last_seen_is_written_at_most_once_a_minute_per_person(
        app: Any, http: httpx.AsyncClient, supervisor: User,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ctx: Context = app.state.ctx
    now = datetime(2031, 5, 6, 7, 0, tzinfo=UTC)
    monkeypatch.setattr(ctx, "clock", lambda: now)
    writes: list[uuid.UUID] = []
    seen = PeopleRepository.seen

    async def counted(self: PeopleRepository, person_id: uuid.UUID, *a: Any, **kw: Any) -> None:
        writes.append(person_id)
        await seen(self, person_id, *a, **kw)

    monkeypatch.setattr(PeopleRepository, "seen", counted)
    carol = User(uuid.uuid4(), "worker", f"Carol {tag()}")

    async def request_at(at: datetime) -> dict[str, Any]:
        nonlocal now
        now = at
        assert (await http.get("/api/v1/me", headers=carol.h)).status_code == 200
        row = await person(http, supervisor, carol.id)
        return {k: datetime.fromisoformat(row[k]) for k in ("first_seen", "last_seen")}

    t0 = now
    assert await request_at(t0) == {"first_seen": t0, "last_seen": t0}
    assert await request_at(t0 + timedelta(seconds=30)) == {"first_seen": t0, "last_seen": t0}
    assert writes.count(carol.id) == 1  # the second request wrote nothing
    later = t0 + timedelta(seconds=61)
    assert await request_at(later) == {"first_seen": t0, "last_seen": later}
    assert writes.count(carol.id) == 2


async def test_another_process_within_the_minute_moves_nothing_and_racing_ones_agree(
        app: Any, http: httpx.AsyncClient, supervisor: User) -> None:
    """Each API process has a memo of its own: the database's upsert holds the rule across
    them, and two processes writing the same new person at once both succeed."""
    store: SqlStore = app.state.ctx.store
    t0 = datetime(2031, 6, 1, 8, 0, tzinfo=UTC)

    def process(at: datetime) -> Context:
        return Context(store=store, workflows=app.state.ctx.workflows, people=SeenPeople(),
                       clock=lambda: at)

    dave = Actor(uuid.uuid4(), Role.WORKER, f"Dave {tag()}")
    await asyncio.gather(*(uc.note_seen(process(t0), dave) for _ in range(4)))
    await uc.note_seen(process(t0 + timedelta(seconds=20)), dave)
    row = await person(http, supervisor, dave.id)
    assert datetime.fromisoformat(row["first_seen"]) == t0
    assert datetime.fromisoformat(row["last_seen"]) == t0
    assert (await found(http, supervisor, q=dave.name))["total"] == 1
    later = t0 + timedelta(minutes=2)
    await uc.note_seen(process(later), dave)
    assert datetime.fromisoformat((await person(http, supervisor, dave.id))["last_seen"]) \
        == later


# ---- the directory's list ----------------------------------------------------------------

async def test_q_matches_names_case_insensitively_in_name_order(
        http: httpx.AsyncClient, supervisor: User) -> None:
    t = tag()
    names = [f"Zoe Zola {t}", f"ada lovelace {t}", f"ADA BYRON {t}", f"Grace {t}"]
    ids = {}
    for n in names:
        u = User(uuid.uuid4(), "worker", n)
        ids[n] = str(u.id)
        await http.get("/api/v1/me", headers=u.h)
    page = await found(http, supervisor, q=f"ada {t}".upper())
    assert page["items"] == []  # "ada <tag>" is in no name
    page = await found(http, supervisor, q="ADA", role="worker", limit=100)
    assert {f"ada lovelace {t}", f"ADA BYRON {t}"} <= {i["name"] for i in page["items"]}
    page = await found(http, supervisor, q=t.upper())
    # by name, whatever its case
    assert [i["name"] for i in page["items"]] == [
        f"ADA BYRON {t}", f"ada lovelace {t}", f"Grace {t}", f"Zoe Zola {t}"]
    # paging: total counts them all, the page holds `limit`
    page = await found(http, supervisor, q=t, limit=2, offset=1)
    assert page["total"] == 4 and page["limit"] == 2 and page["offset"] == 1
    assert [i["id"] for i in page["items"]] == [ids[f"ada lovelace {t}"], ids[f"Grace {t}"]]
    # case-folding is Unicode's, not ASCII's only (SQLite's own lower() is ASCII's)
    await http.get("/api/v1/me", headers=User(uuid.uuid4(), "worker", f"ÉMILE {t}").h)
    assert [i["name"] for i in (await found(http, supervisor, q=f"émile {t}"))["items"]] \
        == [f"ÉMILE {t}"]
    assert (await found(http, supervisor, limit=1000))["limit"] == 100  # capped


async def test_q_is_plain_text_wildcards_quotes_and_markup_included(
        http: httpx.AsyncClient, supervisor: User) -> None:
    t = tag()
    names = {"percent": f"{t} 100% sure", "percent-less": f"{t} 100 sure",
             "underscore": f"{t} a_b", "underscore-less": f"{t} axb",
             "backslash": f"{t} c\\d", "backslash-less": f"{t} cd",
             "slash": f"{t} e/f", "slash-less": f"{t} ef",
             "sql": f"{t} Bobby' OR 1=1 --", "script": f"{t} <script>alert(1)</script>"}
    for n in names.values():
        await http.get("/api/v1/me", headers=User(uuid.uuid4(), "worker", n).h)

    async def named(q: str) -> list[str]:
        page = await found(http, supervisor, q=q, limit=100)
        assert page["total"] == len(page["items"])
        return sorted(i["name"] for i in page["items"])

    assert await named(f"{t} 100%") == [names["percent"]]
    assert await named(f"{t} a_b") == [names["underscore"]]
    assert await named(f"{t} c\\") == [names["backslash"]]
    assert await named(f"{t} e/") == [names["slash"]]
    for wildcard, kind in (("%", "percent"), ("_", "underscore")):  # not "anything"
        matched = await named(wildcard)
        assert names[kind] in matched and names[f"{kind}-less"] not in matched
        assert all(wildcard in n for n in matched)
    everyone = (await found(http, supervisor))["total"]
    injected = await named("' OR 1=1 --")  # the names that contain that text, not everyone
    assert names["sql"] in injected and len(injected) < everyone
    assert all("' or 1=1 --" in n.casefold() for n in injected)
    assert await named(f"{t} bobby' or 1=1 --") == [names["sql"]]
    assert names["script"] in await named("<script>alert(1)</script>")
    assert await named(f"{t} <SCRIPT>") == [names["script"]]
    # the name comes back as the text it is, in JSON
    r = await http.get(PEOPLE, params={"q": f"{t} <script>"}, headers=supervisor.h)
    assert r.headers["content-type"] == "application/json"
    assert r.json()["items"][0]["name"] == names["script"]
    # characters no name holds are read as a name's would be: not refused, not an error
    assert await named(f"{t}\x00\u202e") == sorted(names.values())
    # nothing to search for is no filter (the nameless included), not "has a name"
    assert (await found(http, supervisor, q=" \n "))["total"] == everyone


async def test_role_selects_people_by_their_role(http: httpx.AsyncClient,
                                                 supervisor: User, admin: User) -> None:
    t = tag()
    for role in ("worker", "supervisor", "admin"):
        await http.get("/api/v1/me", headers=User(uuid.uuid4(), role, f"{role} {t}").h)
    for role in ("worker", "supervisor", "admin"):
        page = await found(http, admin, q=t, role=role)
        assert [(i["name"], i["role"]) for i in page["items"]] == [(f"{role} {t}", role)]
    assert (await found(http, supervisor, q=t))["total"] == 3


async def test_workers_may_not_read_the_directory(http: httpx.AsyncClient,
                                                  worker_user: User, supervisor: User) -> None:
    await http.get("/api/v1/me", headers=supervisor.h)
    for path, params in ((PEOPLE, {}), (PEOPLE, {"bogus": "1"}), (PEOPLE, {"role": "x"}),
                         (f"{PEOPLE}/{supervisor.id}", {}), (f"{PEOPLE}/not-a-uuid", {})):
        r = await http.get(path, params=params, headers=worker_user.h)
        assert r.status_code == 403, (path, params, r.text)
        assert r.headers["content-type"] == "application/problem+json"


async def test_unknown_people_and_parameters_are_problems(http: httpx.AsyncClient,
                                                          supervisor: User) -> None:
    r = await http.get(f"{PEOPLE}/{uuid.uuid4()}", headers=supervisor.h)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 404 and r.json()["type"].endswith("/not-found")
    # as everywhere in a path: an id that is no UUID names no one (README)
    r = await http.get(f"{PEOPLE}/alice", headers=supervisor.h)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    for params, field in (({"name": "x"}, "query.name"), ({"role": "boss"}, "role"),
                          ({"limit": 0}, "limit"), ({"q": "x" * 201}, "q")):
        r = await http.get(PEOPLE, params=params, headers=supervisor.h)
        assert r.status_code == 422, (params, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        assert field in r.text, (params, r.text)
    assert (await http.get(PEOPLE)).status_code == 401


# ---- /me ---------------------------------------------------------------------------------

async def test_me_is_the_caller_as_the_api_sees_them(http: httpx.AsyncClient) -> None:
    me = User(uuid.uuid4(), "supervisor", "Sam Supervisor")
    r = await http.get("/api/v1/me", headers=me.h)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": str(me.id), "name": "Sam Supervisor", "role": "supervisor"}
    anonymous = await http.get("/api/v1/me")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"


@pytest.fixture
async def idp_api(provider: Provider, database_url: str, task_queue: str, client: Any,
                  db: Any, worker: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=database_url, task_queue=task_queue,
                        oidc_issuer=provider.issuer, jwt_audience=AUDIENCE,
                        role_claim="groups", role_map=ROLE_MAP)
    app = create_app(settings, jwt_secret=SECRET, client=client, db=db)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield http


async def test_me_for_a_provider_token_gives_the_role_the_groups_claim_maps_to(
        idp_api: httpx.AsyncClient, provider: Provider, supervisor: User) -> None:
    sub = f"auth0|{tag()}"
    # the token also says `role: admin`: this service reads roles from `groups` only
    token = provider.token(sub=sub, groups=["floor-staff", "shift-leads", "canteen"],
                           role="admin", name="Grace Hopper", preferred_username="ghopper")
    r = await idp_api.get("/api/v1/me", headers=h(token))
    assert r.status_code == 200, r.text
    me = r.json()
    assert me == {"id": str(uuid5(NAMESPACE_URL, f"{provider.issuer}#{sub}")),
                  "name": "Grace Hopper", "role": "supervisor"}
    # and so the directory has them
    row = await person(idp_api, supervisor, uuid.UUID(me["id"]))
    assert (row["name"], row["role"]) == ("Grace Hopper", "supervisor")
    # preferred_username when the provider sends no name; no role mapped is 403, not seen
    lean = provider.token(sub=f"auth0|{tag()}", preferred_username="kjohnson")
    assert (await idp_api.get("/api/v1/me", headers=h(lean))).json()["name"] == "kjohnson"
    nobody = f"Nobody {tag()}"
    stranger = provider.token(sub=f"auth0|{tag()}", groups=["visitors"], name=nobody)
    r = await idp_api.get("/api/v1/me", headers=h(stranger))
    assert r.status_code == 403 and "groups" in r.json()["detail"]
    assert (await found(idp_api, supervisor, q=nobody))["total"] == 0


# ---- worker_name on sessions -------------------------------------------------------------

async def test_sessions_and_their_summaries_name_the_worker(
        http: httpx.AsyncClient, supervisor: User) -> None:
    sop = await make_confirmed_sop(http, supervisor)
    named = User(uuid.uuid4(), "worker", f"Wendy Worker {tag()}")
    session = await start(http, named, sop)
    assert session["worker_name"] == named.name
    checked = await pass_step(http, named, session)  # the check's answer
    assert checked["worker_name"] == named.name
    r = await http.get("/api/v1/sessions/current", headers=named.h)
    assert r.json()["worker_name"] == named.name
    for who in (named, supervisor):
        r = await http.get(f"/api/v1/sessions/{session['id']}", headers=who.h)
        assert r.status_code == 200 and r.json()["worker_name"] == named.name
    listed = await http.get("/api/v1/sessions", params={"worker_id": str(named.id)},
                            headers=supervisor.h)
    (summary,) = listed.json()["items"]
    assert summary["worker_name"] == named.name and summary["worker_id"] == str(named.id)
    # renamed: every answer read from the record says the new name
    renamed = User(named.id, "worker", f"Wendy Smith {tag()}")
    r = await http.post(f"/api/v1/sessions/{session['id']}/pause", headers=renamed.h)
    assert r.status_code == 200 and r.json()["worker_name"] == renamed.name
    listed = await http.get("/api/v1/sessions", params={"worker_id": str(named.id)},
                            headers=supervisor.h)
    assert listed.json()["items"][0]["worker_name"] == renamed.name
    # a worker whose tokens carry no name: null, not their id nor an empty string
    nameless = User(uuid.uuid4(), "worker")
    other = await start(http, nameless, sop)
    assert other["worker_name"] is None
    r = await http.get(f"/api/v1/sessions/{other['id']}", headers=supervisor.h)
    assert r.json()["worker_name"] is None
    for s in (session, other):
        owner = renamed if s is session else nameless
        r = await http.post(f"/api/v1/sessions/{s['id']}/cancel", json={"reason": "test"},
                            headers=owner.h)
        assert r.status_code == 200, r.text


# ---- the console's address ---------------------------------------------------------------

async def test_the_root_sends_a_browser_to_the_console(http: httpx.AsyncClient) -> None:
    r = await http.get("/")
    assert r.status_code == 307 and r.headers["location"] == "/app/"
    console = await http.get(r.headers["location"])
    assert console.status_code == 200 and "text/html" in console.headers["content-type"]
