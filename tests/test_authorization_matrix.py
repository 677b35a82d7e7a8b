"""The authorization matrix of CONTRACT.md ("Authentication and roles", "Error precedence"):
every /api/v1 endpoint x every kind of caller, one test case each, with the exact answer the
contract gives that caller. The table must cover every route the app serves under /api/v1,
so a new endpoint without a row fails `test_matrix_covers_every_api_route`.

Callers: anonymous, the worker who owns the session (`worker-owner`), another worker
(`worker-other`), a supervisor and an admin. Every case builds its own world (fresh users, a
confirmed SOP on which the owner runs a session, and a draft SOP), so state-changing cases
never disturb one another. An expected status of 401/403/404 is a denial (an RFC 9457
problem; nothing changes); any other expected status means the role was allowed and the
answer is decided by state (2xx, or 400/409 where the world is in a state that refuses it)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import SECRET, User, make_confirmed_sop, sop_body, start
from tests.evidence_files import jpeg

SOPS = "/api/v1/sops"
SESSIONS = "/api/v1/sessions"
NCS = "/api/v1/nonconformances"
DENIALS = {401, 403, 404}

ANON, OWNER, OTHER, SUP, ADMIN = "anonymous", "worker-owner", "worker-other", "supervisor", \
    "admin"
CALLERS = (ANON, OWNER, OTHER, SUP, ADMIN)


# --- the world each case runs in ---------------------------------------------------------

@dataclass
class World:
    http: httpx.AsyncClient
    users: dict[str, User | None]
    sop: dict[str, Any]        # confirmed; the owner runs `session` on it
    draft: dict[str, Any]      # never confirmed
    session: dict[str, Any]    # the owner's, as returned by the last preparation step
    evidence: dict[str, Any] | None = None  # a file the owner uploaded to it, when asked
    nc: dict[str, Any] | None = None  # a nonconformance a supervisor opened on it, when asked

    @property
    def owner(self) -> User:
        user = self.users[OWNER]
        assert user is not None
        return user

    @property
    def supervisor(self) -> User:
        user = self.users[SUP]
        assert user is not None
        return user

    def headers(self, caller: str) -> dict[str, str]:
        user = self.users[caller]
        return user.h if user else {}


async def build_world(http: httpx.AsyncClient, owner: User, other: User, supervisor: User,
                      admin: User, prep: str | None, evidence: bool = False,
                      nc: bool = False) -> World:
    sop = await make_confirmed_sop(http, supervisor,
                                   sop_body(title=f"authz {uuid.uuid4().hex}"))
    r = await http.post(SOPS, json=sop_body(title=f"authz draft {uuid.uuid4().hex}"),
                        headers=supervisor.h)
    assert r.status_code == 201, r.text
    draft = r.json()
    session = await start(http, owner, sop)
    uploaded = None
    if evidence:
        r = await http.post(f"{SESSIONS}/{session['id']}/evidence", content=jpeg(),
                            headers=owner.h)
        assert r.status_code == 201, r.text
        uploaded = r.json()
    opened = None
    if nc:
        r = await http.post(NCS, json={"session_id": session["id"], "severity": "minor",
                                       "description": "guard loose"}, headers=supervisor.h)
        assert r.status_code == 201, r.text
        opened = r.json()
    if prep is not None:  # "pause" or "complete", done by the owner
        r = await http.post(f"{SESSIONS}/{session['id']}/{prep}", headers=owner.h)
        assert r.status_code == 200, r.text
        session = r.json()
    users: dict[str, User | None] = {ANON: None, OWNER: owner, OTHER: other, SUP: supervisor,
                                     ADMIN: admin}
    return World(http, users, sop, draft, session, uploaded, opened)


# --- the table ---------------------------------------------------------------------------

Body = Callable[[World], Any]
Verify = Callable[[World, str, httpx.Response], Any]


@dataclass(frozen=True)
class Row:
    method: str
    path: str                         # as the app spells it, with every path id as {id}
    expect: dict[str, int]            # caller -> exact status
    target: str | None = None         # what {id} is: "session", "sop" (confirmed), "draft",
    #                                   "person" (the owner, in the directory of people),
    #                                   "nc" (a nonconformance on the owner's session)
                                      # "evidence" (a file the owner uploaded)
                                      # "unknown" (an id nothing has: a webhook, a delivery)
                                      # "measurement" (the confirmed SOP's measurement step)
    prep: str | None = None           # owner's session state: None (in progress), pause, ...
    body: Body | None = None
    content: Callable[[World], bytes] | None = None  # a raw body (a file), instead of JSON
    verify: Verify | None = None      # extra checks on an allowed answer
    variant: str = ""                 # shown in the case id when one endpoint has two rows
    changes: bool = True              # a denied call must leave the target unchanged

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.path}"

    @property
    def label(self) -> str:
        return f"{self.endpoint} ({self.variant})" if self.variant else self.endpoint


def by_role(worker: int, supervisor_admin: int, other: int | None = None) -> dict[str, int]:
    return {ANON: 401, OWNER: worker, OTHER: worker if other is None else other,
            SUP: supervisor_admin, ADMIN: supervisor_admin}


def owner_only(ok: int = 200) -> dict[str, int]:
    """Worker actions: the owner only; the other worker may not see it; 403 otherwise."""
    return {ANON: 401, OWNER: ok, OTHER: 404, SUP: 403, ADMIN: 403}


def override(ok: int = 200) -> dict[str, int]:
    """approve/reopen: 403 to the owner (who sees it), 404 to other workers."""
    return {ANON: 401, OWNER: 403, OTHER: 404, SUP: ok, ADMIN: ok}


def visible(ok: int = 200) -> dict[str, int]:
    return {ANON: 401, OWNER: ok, OTHER: 404, SUP: ok, ADMIN: ok}


def check_body(w: World) -> dict[str, Any]:
    return {"step_id": w.session["current_step_id"], "result": "passed"}


def reason(_: World) -> dict[str, Any]:
    return {"reason": "authorization matrix"}


def new_sop(_: World) -> dict[str, Any]:
    return sop_body(title=f"authz edit {uuid.uuid4().hex}")


def verify_session_list(w: World, caller: str, r: httpx.Response) -> None:
    items = r.json()["items"]
    ids = {i["id"] for i in items}
    if caller == OWNER:
        assert w.session["id"] in ids, items
    if caller in (OWNER, OTHER):
        me = w.users[caller]
        assert me is not None
        assert all(i["worker_id"] == str(me.id) for i in items), items
    if caller == OTHER:
        assert r.json()["total"] == 0, r.json()
    if caller in (SUP, ADMIN):
        assert w.session["id"] in ids, items


def verify_current(w: World, caller: str, r: httpx.Response) -> None:
    assert r.json()["id"] == w.session["id"]


def verify_sop_list(w: World, caller: str, r: httpx.Response) -> None:
    if caller in (OWNER, OTHER):
        assert all(s["status"] == "confirmed" for s in r.json()["items"]), r.json()


def verify_started(w: World, caller: str, r: httpx.Response) -> None:
    if caller == OWNER:  # already running one: the role is allowed, the state refuses
        assert r.json()["existing_session_id"] == w.session["id"], r.json()
    else:
        me = w.users[caller]
        assert me is not None and r.json()["worker_id"] == str(me.id), r.json()


def verify_people(w: World, caller: str, r: httpx.Response) -> None:
    # every caller who made a request is in the directory; the owner has run a session
    assert r.json()["total"] >= 1, r.json()


def verify_person(w: World, caller: str, r: httpx.Response) -> None:
    assert r.json()["id"] == str(w.owner.id) and r.json()["role"] == "worker", r.json()


def verify_me(w: World, caller: str, r: httpx.Response) -> None:
    me = w.users[caller]
    assert me is not None
    assert r.json() == {"id": str(me.id), "name": me.name, "role": me.role}, r.json()


def verify_stats(w: World, caller: str, r: httpx.Response) -> None:
    assert r.json()["sessions"]["in_progress"] >= 1, r.json()  # the owner's session


def verify_uploaded(w: World, caller: str, r: httpx.Response) -> None:
    assert r.json()["session_id"] == w.session["id"], r.json()


def verify_file(w: World, caller: str, r: httpx.Response) -> None:
    assert w.evidence is not None and r.headers["etag"] == f'"{w.evidence["sha256"]}"'


SID = f"{SESSIONS}/{{id}}"
SOP_ID = f"{SOPS}/{{id}}"

TABLE: list[Row] = [
    # --- SOPs ---
    Row("POST", SOPS, by_role(403, 201), body=new_sop),
    Row("GET", SOPS, by_role(200, 200), verify=verify_sop_list, changes=False),
    Row("GET", SOP_ID, by_role(200, 200), target="sop", variant="confirmed SOP",
        changes=False),
    Row("GET", SOP_ID, by_role(404, 200), target="draft", variant="draft SOP", changes=False),
    Row("PUT", SOP_ID, by_role(403, 409), target="sop", body=new_sop, variant="confirmed SOP"),
    Row("PUT", SOP_ID, by_role(404, 200), target="draft", body=new_sop, variant="draft SOP"),
    Row("POST", f"{SOP_ID}/confirm", by_role(403, 409), target="sop", variant="confirmed SOP"),
    Row("POST", f"{SOP_ID}/confirm", by_role(404, 200), target="draft", variant="draft SOP"),
    Row("POST", f"{SOP_ID}/revisions", by_role(403, 201), target="sop",
        variant="confirmed SOP"),
    Row("POST", f"{SOP_ID}/revisions", by_role(404, 409), target="draft", variant="draft SOP"),
    Row("GET", f"{SOP_ID}/stats", by_role(403, 200), target="sop", variant="confirmed SOP",
        verify=verify_stats, changes=False),
    Row("GET", f"{SOP_ID}/stats", by_role(404, 200), target="draft", variant="draft SOP",
        changes=False),
    # the confirmed SOP has the owner's session in progress: deleting it is refused (400)
    Row("DELETE", SOP_ID, by_role(403, 400), target="sop", variant="confirmed SOP"),
    Row("DELETE", SOP_ID, by_role(404, 204), target="draft", variant="draft SOP"),
    # --- statistical process control (v1.2): supervisors and admins; the baseline window
    # of the new SOP holds no values, so setting it is refused for its content (422) ---
    Row("GET", f"{SOP_ID}/steps/{{id}}/spc", by_role(403, 200), target="measurement",
        changes=False),
    Row("POST", f"{SOP_ID}/steps/{{id}}/spc/baseline", by_role(403, 422),
        target="measurement", body=lambda _: {"from": "2026-01-01T00:00:00Z",
                                              "to": "2026-12-31T00:00:00Z"}),
    # --- sessions ---
    Row("POST", SESSIONS, {ANON: 401, OWNER: 409, OTHER: 201, SUP: 403, ADMIN: 403},
        body=lambda w: {"sop_id": w.sop["id"]}, verify=verify_started),
    Row("GET", f"{SESSIONS}/current", {ANON: 401, OWNER: 200, OTHER: 404, SUP: 404,
                                       ADMIN: 404}, verify=verify_current, changes=False),
    Row("GET", SESSIONS, by_role(200, 200), verify=verify_session_list, changes=False),
    Row("GET", SID, visible(), target="session", changes=False),
    Row("POST", f"{SID}/checks", owner_only(), target="session", body=check_body),
    Row("POST", f"{SID}/pause", owner_only(), target="session"),
    Row("POST", f"{SID}/resume", owner_only(), target="session", prep="pause"),
    Row("POST", f"{SID}/complete", owner_only(), target="session"),
    Row("POST", f"{SID}/cancel", owner_only(), target="session", body=reason),
    Row("POST", f"{SID}/approve", override(), target="session", prep="complete",
        variant="completed session"),
    Row("POST", f"{SID}/approve", override(409), target="session",
        variant="session in progress"),
    Row("POST", f"{SID}/reopen", override(), target="session", prep="complete", body=reason),
    # --- signatures (v1.2): each meaning has its signers ---
    Row("POST", f"{SID}/signatures", owner_only(201), target="session", prep="complete",
        body=lambda _: {"meaning": "performed"}, variant="performed"),
    Row("POST", f"{SID}/signatures", override(201), target="session", prep="complete",
        body=lambda _: {"meaning": "approved"}, variant="approved"),
    # nothing awaits verification on the owner's session: 409 to those who may verify
    Row("POST", f"{SID}/signatures", override(409), target="session",
        body=lambda w: {"meaning": "verified", "step_id": w.session["current_step_id"]},
        variant="verified"),
    # --- evidence files: uploaded by the session's worker, read by who may read it ---
    Row("POST", f"{SID}/evidence", owner_only(201), target="session",
        content=lambda _: jpeg(), verify=verify_uploaded),
    Row("GET", "/api/v1/evidence/{id}", visible(), target="evidence", changes=False,
        verify=verify_file),
    # --- audit ---
    Row("GET", "/api/v1/audit", by_role(403, 200), changes=False),
    # --- ops: admins only; a session that is making progress is not stuck (409) ---
    Row("GET", "/api/v1/ops/stuck", {ANON: 401, OWNER: 403, OTHER: 403, SUP: 403, ADMIN: 200},
        changes=False),
    Row("POST", "/api/v1/ops/sessions/{id}/retry",
        {ANON: 401, OWNER: 403, OTHER: 404, SUP: 403, ADMIN: 409}, target="session"),
    # --- nonconformances (v1.2): supervisors and admins act; a worker reads their own ---
    Row("GET", NCS, by_role(200, 200), changes=False),
    Row("POST", NCS, by_role(403, 201), body=lambda w: {
        "session_id": w.session["id"], "severity": "major", "description": "oil leak"}),
    Row("GET", NCS + "/{id}", visible(), target="nc", changes=False),
    Row("POST", NCS + "/{id}/contain", {ANON: 401, OWNER: 403, OTHER: 404, SUP: 200,
                                        ADMIN: 200}, target="nc",
        body=lambda _: {"containment": "guard taped off"}),
    # open, not contained: closing it is refused (409) to those who may close
    Row("POST", NCS + "/{id}/close", {ANON: 401, OWNER: 403, OTHER: 404, SUP: 409,
                                      ADMIN: 409}, target="nc",
        body=lambda _: {"disposition": "rework", "corrective_action": "new guard"}),
    # --- people (v1.2): the directory is for supervisors and admins; /me for everyone ---
    Row("GET", "/api/v1/people", by_role(403, 200), verify=verify_people, changes=False),
    Row("GET", "/api/v1/people/{id}", by_role(403, 200), target="person",
        verify=verify_person, changes=False),
    Row("GET", "/api/v1/me", by_role(200, 200), verify=verify_me, changes=False),
    # --- webhooks (v1.2): admins only; 403 before the id or the body is looked at ---
    Row("POST", "/api/v1/webhooks", by_role(403, 403) | {ADMIN: 201},
        body=lambda _: {"url": "https://1.1.1.1/hook", "events": ["spc.out_of_control"]},
        changes=False),
    Row("GET", "/api/v1/webhooks", by_role(403, 403) | {ADMIN: 200}, changes=False),
    Row("DELETE", "/api/v1/webhooks/{id}", by_role(403, 403) | {ADMIN: 404},
        target="unknown", changes=False),
    Row("GET", "/api/v1/webhooks/{id}/deliveries", by_role(403, 403) | {ADMIN: 404},
        target="unknown", changes=False),
    Row("POST", "/api/v1/webhooks/{id}/deliveries/{id}/redeliver",
        by_role(403, 403) | {ADMIN: 404}, target="unknown", changes=False),
]

# Known defects of the service, by case id -> "BUG: ...": they become strict xfails.
KNOWN_BUGS: dict[str, str] = {}


def case_id(row: Row, caller: str) -> str:
    return f"{row.label}-{caller}"


CASES = [pytest.param(row, caller, id=case_id(row, caller),
                      marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[case_id(row, c)])
                             for c in [caller] if case_id(row, c) in KNOWN_BUGS])
         for row in TABLE for caller in CALLERS]


def normalize(path: str) -> str:
    return re.sub(r"\{[A-Za-z_]*\}", "{id}", path)


def _walk(routes: list[Any], prefix: str = "") -> set[str]:
    """Every (method, path) served, through included routers (FastAPI wraps them in newer
    versions) and mounts."""
    found: set[str] = set()
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:  # fastapi >= 0.16x: an included router, kept as a wrapper
            context = getattr(route, "include_context", None)
            found |= _walk(inner.routes, prefix + getattr(context, "prefix", ""))
        elif hasattr(route, "methods") and hasattr(route, "path"):
            for method in route.methods or {"ANY"}:
                found.add(f"{method} {prefix}{route.path}")
        elif hasattr(route, "routes"):  # a Mount or a plain router
            found |= _walk(route.routes, prefix + getattr(route, "path", ""))
        elif hasattr(route, "path"):  # e.g. a websocket route
            found.add(f"ANY {prefix}{route.path}")
    return found


def api_routes(app: Any) -> set[str]:
    """The /api/v1 endpoints the app serves: its routing table and its OpenAPI document."""
    found = _walk(app.routes)
    for path, item in app.openapi().get("paths", {}).items():
        for method in item:
            found.add(f"{method.upper()} {path}")
    return {f"{m} {normalize(p)}" for m, _, p in (e.partition(" ") for e in found)
            if p == "/api/v1" or p.startswith("/api/v1/")}


# --- the tests ---------------------------------------------------------------------------

def test_table_rows_are_complete_and_unique() -> None:
    labels = [row.label for row in TABLE]
    assert len(labels) == len(set(labels)), labels
    for row in TABLE:
        assert set(row.expect) == set(CALLERS), row.label
        assert row.expect[ANON] == 401, row.label
        assert ("{id}" in row.path) == (row.target is not None), row.label


def test_matrix_covers_every_api_route(app: Any) -> None:
    served = api_routes(app)
    tabled = {row.endpoint for row in TABLE}
    assert served, "no /api/v1 routes found"
    assert not served - tabled, f"endpoints without a row in the matrix: {served - tabled}"
    assert not tabled - served, f"rows for endpoints the app does not serve: {tabled - served}"


async def snapshot(w: World, row: Row) -> Any:
    """What a denied call must not change, read as a supervisor."""
    h = w.supervisor.h
    if row.target == "session":
        r = await w.http.get(f"{SESSIONS}/{w.session['id']}", headers=h)
        assert r.status_code == 200, r.text
        s = r.json()
        return (s["status"], s["current_step_id"], len(s["checks"]), s["locked"], s["run_id"],
                len(s["signatures"]))
    if row.target == "nc":
        r = await w.http.get(f"{NCS}/{target_id(w, row)}", headers=h)
        assert r.status_code == 200, r.text
        return r.json()["status"]
    if row.target in ("sop", "draft"):
        r = await w.http.get(f"{SOPS}/{target_id(w, row)}", headers=h)
        assert r.status_code == 200, r.text
        s = r.json()
        return (s["status"], s["updated_at"], s["title"], s["version"])
    totals = []
    for listing in (SESSIONS, SOPS):  # nothing was started or created
        r = await w.http.get(listing, params={"limit": 1}, headers=h)
        assert r.status_code == 200, r.text
        totals.append(r.json()["total"])
    return totals


def target_id(w: World, row: Row) -> str:
    return {"session": w.session["id"], "sop": w.sop["id"], "draft": w.draft["id"],
            "measurement": w.sop["id"],
            "person": str(w.owner.id),
            "evidence": (w.evidence or {}).get("id"), "nc": (w.nc or {}).get("id"),
            "unknown": str(uuid.uuid4())}[row.target or ""]


def assert_problem(r: httpx.Response) -> None:
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == r.status_code, body


@pytest.mark.parametrize(("row", "caller"), CASES)
async def test_authorization_matrix(http: httpx.AsyncClient, worker_user: User,
                                    other_worker: User, supervisor: User, admin: User,
                                    row: Row, caller: str) -> None:
    w = await build_world(http, worker_user, other_worker, supervisor, admin, row.prep,
                          evidence=row.target == "evidence", nc=row.target == "nc")
    path = row.path
    if row.target == "measurement":  # two ids: the SOP's, then its measurement step's
        step = next(st["id"] for t in w.sop["tasks"] for st in t["steps"]
                    if st["check"]["kind"] == "measurement")
        path = path.replace("{id}", w.sop["id"], 1).replace("{id}", step, 1)
    elif row.target:
        path = path.replace("{id}", target_id(w, row))
    kwargs: dict[str, Any] = {"headers": w.headers(caller)}
    if row.body is not None:
        kwargs["json"] = row.body(w)
    if row.content is not None:
        kwargs["content"] = row.content(w)
    want = row.expect[caller]
    before = await snapshot(w, row) if want in DENIALS and row.changes else None

    r = await http.request(row.method, path, **kwargs)

    what = f"{row.label} as {caller}: {r.status_code} {r.text[:500]}"
    if want in DENIALS:
        assert r.status_code == want, what
        assert_problem(r)
        if want == 401:
            assert r.headers.get("www-authenticate", "").lower().startswith("bearer"), r.headers
        if before is not None:
            assert await snapshot(w, row) == before, f"a denied call changed state: {what}"
    else:
        assert r.status_code not in DENIALS, f"the role was refused: {what}"
        assert r.status_code == want, what
        assert r.status_code < 500, what
        if r.status_code >= 400:
            assert_problem(r)
        if row.verify is not None:
            row.verify(w, caller, r)
    if caller == OTHER:
        assert str(w.owner.id) not in r.text, f"the owner's id leaked to another worker: {what}"


# --- JWT negatives ------------------------------------------------------------------------

def _claims(**override: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    claims: dict[str, Any] = {"sub": str(uuid.uuid4()), "role": "supervisor", "iat": now,
                              "exp": now + 3600}
    for k, v in override.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


def _hs256(**override: Any) -> str:
    return jwt.encode(_claims(**override), SECRET, algorithm="HS256")


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "alg-none": lambda: jwt.encode(_claims(), None, algorithm="none"),
    "wrong-key": lambda: jwt.encode(_claims(), b"another-secret-" + b"y" * 40,
                                    algorithm="HS256"),
    "expired": lambda: _hs256(exp=int(datetime.now(UTC).timestamp()) - 60),
    "missing-exp": lambda: _hs256(exp=None),
    "missing-sub": lambda: _hs256(sub=None),
    "unknown-role": lambda: _hs256(role="superuser"),
    "non-uuid-sub": lambda: _hs256(sub="alice"),
    "hs512-right-secret": lambda: jwt.encode(_claims(), SECRET, algorithm="HS512"),
}


async def test_a_valid_token_is_accepted_on_the_jwt_probe_endpoint(
        http: httpx.AsyncClient) -> None:
    r = await http.get(SESSIONS, headers={"Authorization": f"Bearer {_hs256()}"})
    assert r.status_code == 200, r.text


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("name", list(BAD_TOKENS))
async def test_bad_jwt_is_401(http: httpx.AsyncClient, name: str) -> None:
    token = BAD_TOKENS[name]()
    r = await http.get(SESSIONS, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, (name, r.status_code, r.text)
    assert_problem(r)
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer"), r.headers
