"""No input, however malformed, gets a 5xx: every error is an RFC 9457 problem
(CONTRACT.md "Errors"), tokens are checked strictly ("Authentication and roles") and errors
come in the contract's order of precedence."""

from __future__ import annotations

import base64
import json
import os
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import SECRET, User, make_confirmed_sop, sop_body, start

SOPS = "/api/v1/sops"
SESSIONS = "/api/v1/sessions"
MAX_BODY = 256 * 1024
JSON = {"content-type": "application/json"}


def assert_problem(r: httpx.Response, status: int | None = None) -> dict[str, Any]:
    """A 4xx RFC 9457 problem: problem+json, type/title/status/detail, status matching."""
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if status is not None:
        assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), \
        (r.status_code, r.headers.get("content-type"), r.text)
    body = r.json()
    assert isinstance(body, dict), body
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == r.status_code, body
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str)
    return body


def error_fields(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body.get("errors", [])]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_token(header: dict[str, Any] | str, claims: dict[str, Any] | str,
              secret: bytes | None = SECRET) -> str:
    """A JWT built by hand (json.dumps lets NaN/Infinity through), HS256-signed if `secret`."""
    import hashlib
    import hmac

    h = header if isinstance(header, str) else json.dumps(header)
    c = claims if isinstance(claims, str) else json.dumps(claims)
    signing_input = f"{b64(h.encode())}.{b64(c.encode())}"
    sig = b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()) \
        if secret else ""
    return f"{signing_input}.{sig}"


def claims(**override: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    base: dict[str, Any] = {"sub": str(uuid.uuid4()), "role": "supervisor", "iat": now,
                            "exp": now + 3600}
    for k, v in override.items():
        if v is ...:
            base.pop(k, None)
        else:
            base[k] = v
    return base


# --- module-scoped setup: one SOP and one running session, shared by the malformed-input tests

@pytest.fixture(scope="module")
def boss() -> User:
    return User(uuid.uuid4(), "supervisor")


@pytest.fixture(scope="module")
def owner() -> User:
    return User(uuid.uuid4(), "worker")


@pytest.fixture(scope="module")
def measurer() -> User:
    return User(uuid.uuid4(), "worker")


@pytest.fixture(scope="module")
async def shared_sop(http: httpx.AsyncClient, boss: User) -> dict[str, Any]:
    return await make_confirmed_sop(http, boss, sop_body(title=f"errors {uuid.uuid4().hex}"))


@pytest.fixture(scope="module")
async def draft_sop(http: httpx.AsyncClient, boss: User) -> dict[str, Any]:
    r = await http.post(SOPS, json=sop_body(title=f"draft {uuid.uuid4().hex}"), headers=boss.h)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
async def running(http: httpx.AsyncClient, owner: User, shared_sop: dict[str, Any]
                  ) -> dict[str, Any]:
    return await start(http, owner, shared_sop)


@pytest.fixture(scope="module")
async def measuring(http: httpx.AsyncClient, boss: User, measurer: User) -> dict[str, Any]:
    """A running session whose current step is a measurement (min 0, max 0.5)."""
    body = sop_body(steps_per_task=(1, 1), measurement_at=0,
                    title=f"measure {uuid.uuid4().hex}")
    session = await start(http, measurer, await make_confirmed_sop(http, boss, body))
    assert session["current_step"]["check"]["kind"] == "measurement"
    return session


async def assert_session_untouched(http: httpx.AsyncClient, owner: User,
                                   session: dict[str, Any]) -> None:
    r = await http.get(f"{SESSIONS}/{session['id']}", headers=owner.h)
    assert r.status_code == 200, r.text
    now = r.json()
    assert now["status"] == "in_progress"
    assert now["current_step_id"] == session["current_step_id"]
    assert now["checks"] == []


# --- malformed bodies -----------------------------------------------------------------------

MALFORMED = {
    "truncated": b'{"title": "x", ',
    "single-quotes": b"{'title': 'x'}",
    "trailing-comma": b'{"title": "x",}',
    "missing-value": b'{"title": }',
    "not-json": b"hello world",
    "empty-object": b"{}",
    "null": b"null",
    "array": b"[]",
    "array-of-object": b'[{"title": "x"}]',
    "string": b'"a string"',
    "number": b"42",
    "true": b"true",
    "non-utf8": b"\xff\xfe\xfa\x00\x01",
    "utf16-bom": '{"title": "x"}'.encode("utf-16"),
    "nul-bytes": b"\x00" * 64,
    "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep-object-nesting": b'{"a":' * 40_000 + b"1" + b"}" * 40_000,
    "duplicate-keys": b'{"tasks": [], "tasks": "x"}',
    "huge-int": b'{"title": ' + b"9" * 5000 + b"}",
}


def malformed_targets(running: dict[str, Any], draft: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("POST", SOPS),
        ("PUT", f"{SOPS}/{draft['id']}"),
        ("POST", SESSIONS),
        ("POST", f"{SESSIONS}/{running['id']}/checks"),
        ("POST", f"{SESSIONS}/{running['id']}/cancel"),
    ]


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_malformed_json_bodies_get_a_4xx_problem_never_a_5xx(
        http, boss, owner, running, draft_sop, name):
    for method, path in malformed_targets(running, draft_sop):
        user = boss if path.startswith(SOPS) else owner
        r = await http.request(method, path, content=MALFORMED[name],
                               headers={**user.h, **JSON})
        assert_problem(r)
        if name in ("truncated", "single-quotes", "missing-value", "array", "string", "null"):
            assert r.status_code in (400, 422), (method, path, r.text)
    await assert_session_untouched(http, owner, running)


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=xyz",
    "application/xml", "application/octet-stream", "image/png", "application/json; charset=xx",
    "application/vnd.api+json", "garbage", "", "application/",
])
async def test_wrong_content_types_get_a_4xx_problem(http, boss, content_type):
    headers = {**boss.h, "content-type": content_type}
    r = await http.post(SOPS, content=json.dumps(sop_body()).encode(), headers=headers)
    if r.status_code == 201:  # a JSON flavour the API may legitimately accept
        assert content_type.startswith("application/") and "json" in content_type
        return
    assert_problem(r)


async def test_form_encoded_body_is_not_an_sop(http, boss):
    r = await http.post(SOPS, data={"title": "x", "tasks": "y"}, headers=boss.h)
    assert_problem(r, 422)
    r = await http.post(SOPS, files={"file": ("sop.json", b"{}")}, headers=boss.h)
    assert_problem(r, 422)


async def test_missing_body_is_422_naming_the_body(http, boss):
    body = assert_problem(await http.post(SOPS, headers=boss.h), 422)
    assert error_fields(body), body


async def test_wrong_json_types_inside_an_sop_are_422_with_fields(http, boss):
    cases = [
        {"title": 5, "tasks": "x"},
        {"title": ["x"], "tasks": [5]},
        {"title": "x", "tasks": [{"title": "t", "steps": [5]}]},
        {"title": "x", "tasks": [{"title": "t", "steps": [{"title": "s", "check": "confirm"}]}]},
        {"title": "x", "tasks": [{"title": "t", "steps": [{"title": "s", "check": {
            "kind": "measurement", "prompt": "p", "min": "low", "max": {"a": 1}}}]}]},
        {"title": None, "tasks": None},
        {"title": {"$gt": ""}, "tasks": [{}]},
    ]
    for case in cases:
        body = assert_problem(await http.post(SOPS, json=case, headers=boss.h), 422)
        assert error_fields(body), body


# --- numbers --------------------------------------------------------------------------------

def sop_with_bounds(lo: str, hi: str) -> bytes:
    text = json.dumps(sop_body(steps_per_task=(1,), measurement_at=0))
    text = text.replace('"min": 0', f'"min": {lo}').replace('"max": 0.5', f'"max": {hi}')
    assert lo in text and hi in text
    return text.encode()


@pytest.mark.parametrize("lo,hi", [
    ("1e400", "2e400"), ("-1e400", "0"), ("0", "1e400"), ("NaN", "1"), ("0", "NaN"),
    ("-Infinity", "0"), ("0", "Infinity"), ("-Infinity", "Infinity"),
    ("1" + "0" * 400, "2" + "0" * 400), ("-" + "9" * 400, "0"),
])
async def test_non_finite_or_overflowing_sop_bounds_are_422(http, boss, lo, hi):
    r = await http.post(SOPS, content=sop_with_bounds(lo, hi), headers={**boss.h, **JSON})
    body = assert_problem(r, 422)
    assert any("tasks.0.steps.0.check" in f for f in error_fields(body)), body


async def test_huge_but_finite_sop_bounds_are_accepted(http, boss):
    r = await http.post(SOPS, content=sop_with_bounds("-1e308", "1.7e308"),
                        headers={**boss.h, **JSON})
    assert r.status_code == 201, r.text
    check = r.json()["tasks"][0]["steps"][0]["check"]
    assert check["min"] == -1e308 and check["max"] == 1.7e308


@pytest.mark.parametrize("literal", [
    "NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400, '"NaN"', '"inf"',
    '"1e400"', '"abc"', '""', "[1]", "{}",
])
async def test_non_finite_or_invalid_measurement_values_are_422_and_record_nothing(
        http, measurer, measuring, literal):
    step = measuring["current_step_id"]
    raw = f'{{"step_id": "{step}", "value": {literal}}}'.encode()
    r = await http.post(f"{SESSIONS}/{measuring['id']}/checks", content=raw,
                        headers={**measurer.h, **JSON})
    body = assert_problem(r, 422)
    assert any("value" in f for f in error_fields(body)), body
    await assert_session_untouched(http, measurer, measuring)


BAD_PAGING = [
    "limit=1000000000000000000000000000000", "offset=1000000000000000000000000000000",
    "limit=-1", "limit=0", "offset=-1", "limit=abc", "offset=1.5", "limit=1e3",
    "limit=NaN", "limit=Infinity", "limit=", "limit=%00", "limit=" + "9" * 5000,
    "offset=-" + "9" * 5000, "limit=0x10", "limit=%EF%BC%91",
]
BAD_STATUS = ["status=bogus", "status=%00", "status=" + "x" * 10_000, "status=DRAFT%00"]


@pytest.mark.parametrize("query", BAD_PAGING + BAD_STATUS)
@pytest.mark.parametrize("path", [SOPS, SESSIONS])
async def test_bad_paging_or_filter_query_params_are_422(http, boss, path, query):
    body = assert_problem(await http.get(f"{path}?{query}", headers=boss.h), 422)
    assert error_fields(body), body


@pytest.mark.parametrize("query", BAD_PAGING + ["session_id=nope", "session_id=%00"])
async def test_bad_audit_query_params_are_422(http, boss, query):
    body = assert_problem(await http.get(f"/api/v1/audit?{query}", headers=boss.h), 422)
    assert error_fields(body), body


@pytest.mark.parametrize("path, good, misspelt", [
    (SOPS, "status=confirmed", "stauts"),
    (SESSIONS, "status=completed", "stauts"),
    ("/api/v1/audit", "session_id=00000000-0000-4000-8000-000000000001", "sesion_id"),
])
async def test_an_unknown_query_parameter_is_422_on_every_list(http, boss, path, good,
                                                                misspelt):
    """Ignored, a misspelt filter would answer as if it had matched: everything."""
    value = good.split("=", 1)[1]
    r = await http.get(f"{path}?{good}&limit=5", headers=boss.h)
    assert r.status_code == 200, r.text
    body = assert_problem(await http.get(f"{path}?{misspelt}={value}&limit=5",
                                         headers=boss.h), 422)
    assert error_fields(body) == [f"query.{misspelt}"] and misspelt in body["detail"], body
    # the error precedence holds: 401, then 403, before this 422
    assert_problem(await http.get(f"{path}?{misspelt}=1"), 401)
    if path == "/api/v1/audit":
        worker = User(uuid.uuid4(), "worker")
        assert_problem(await http.get(f"{path}?{misspelt}=1", headers=worker.h), 403)


@pytest.mark.parametrize("path, good, expect", [
    ("/api/v1/ops/stuck", "", 200),
    ("/api/v1/webhooks", "", 200),
    (f"/api/v1/webhooks/{uuid.UUID(int=7)}/deliveries", "limit=5&offset=0&", 404),
])
async def test_a_list_with_no_filter_refuses_any_other_parameter(http, admin, path, good,
                                                                  expect):
    assert (await http.get(f"{path}?{good}", headers=admin.h)).status_code == expect
    body = assert_problem(await http.get(f"{path}?{good}stauts=open", headers=admin.h), 422)
    assert error_fields(body) == ["query.stauts"] and "stauts" in body["detail"], body
    assert_problem(await http.get(f"{path}?stauts=1"), 401)
    worker = User(uuid.uuid4(), "worker")
    assert_problem(await http.get(f"{path}?stauts=1", headers=worker.h), 403)


async def test_huge_limit_within_int_range_is_capped_not_an_error(http, boss):
    r = await http.get(f"{SOPS}?limit=2147483647&offset=2147483647", headers=boss.h)
    assert r.status_code == 200, r.text
    assert r.json()["limit"] == 100 and r.json()["items"] == []


# --- ids and routes -------------------------------------------------------------------------

BAD_IDS = ["not-a-uuid", "1", "%00", "%FF%FE", "\u00fc\u00f1\u00ee", "x" * 5000,
           "00000000-0000-0000-0000-00000000000g", "'; DROP TABLE sops;--", "..%2F..%2Fetc"]


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_non_uuid_ids_in_paths_are_404_problems(http, boss, owner, bad):
    step = str(uuid.uuid4())
    calls = [
        (boss, "GET", f"{SOPS}/{bad}", None),
        (boss, "PUT", f"{SOPS}/{bad}", sop_body()),
        (boss, "DELETE", f"{SOPS}/{bad}", None),
        (boss, "POST", f"{SOPS}/{bad}/confirm", None),
        (boss, "POST", f"{SOPS}/{bad}/revisions", None),
        (boss, "GET", f"{SESSIONS}/{bad}", None),
        (boss, "POST", f"{SESSIONS}/{bad}/approve", None),
        (boss, "POST", f"{SESSIONS}/{bad}/reopen", {"reason": "r"}),
        (owner, "GET", f"{SESSIONS}/{bad}", None),
        (owner, "POST", f"{SESSIONS}/{bad}/checks", {"step_id": step, "result": "passed"}),
        (owner, "POST", f"{SESSIONS}/{bad}/complete", None),
        (owner, "POST", f"{SESSIONS}/{bad}/pause", None),
        (owner, "POST", f"{SESSIONS}/{bad}/resume", None),
        (owner, "POST", f"{SESSIONS}/{bad}/cancel", {"reason": "r"}),
    ]
    for user, method, path, body in calls:
        r = await http.request(method, path, json=body, headers=user.h)
        assert_problem(r, 404)


async def test_unknown_ids_are_404_problems(http, boss, owner):
    missing = uuid.uuid4()
    for user, method, path, body in [
        (boss, "GET", f"{SOPS}/{missing}", None),
        (boss, "GET", f"{SESSIONS}/{missing}", None),
        (boss, "POST", f"{SESSIONS}/{missing}/approve", None),
        (owner, "GET", f"{SOPS}/{missing}", None),
        (owner, "GET", f"{SESSIONS}/{missing}", None),
        (owner, "POST", f"{SESSIONS}/{missing}/checks",
         {"step_id": str(uuid.uuid4()), "result": "passed"}),
        (owner, "POST", f"{SESSIONS}/{missing}/pause", None),
        (User(uuid.uuid4(), "worker"), "POST", SESSIONS, {"sop_id": str(missing)}),
    ]:
        assert_problem(await http.request(method, path, json=body, headers=user.h), 404)


async def test_start_session_with_non_uuid_sop_id_is_422(http):
    worker = User(uuid.uuid4(), "worker")
    for sop_id in ("nope", 5, None, "", ["x"]):
        body = assert_problem(await http.post(SESSIONS, json={"sop_id": sop_id},
                                              headers=worker.h), 422)
        assert any("sop_id" in f for f in error_fields(body)), body


@pytest.mark.parametrize("path", [
    "/nope", "/api", "/api/v1", "/api/v1/nope", "/api/v2/sops", "/api/v1/sops/x/y/z",
    "/api/v1/sessions/current/extra", "/%00", "/" + "a" * 10_000, "/api/v1/sop\u00e9",
])
async def test_unknown_routes_are_404_problems(http, boss, path):
    assert_problem(await http.get(path, headers=boss.h), 404)
    assert_problem(await http.get(path), 404)


@pytest.mark.parametrize("method,path", [
    ("DELETE", SESSIONS), ("PUT", SESSIONS), ("PATCH", f"{SOPS}/{uuid.uuid4()}"),
    ("DELETE", "/healthz"), ("POST", "/readyz"), ("GET", f"{SOPS}/{uuid.uuid4()}/confirm"),
    ("PUT", f"{SESSIONS}/current"), ("POST", "/api/v1/audit"), ("OPTIONS", SOPS),
])
async def test_wrong_methods_are_405_problems_with_allow(http, boss, method, path):
    r = await http.request(method, path, headers=boss.h)
    assert_problem(r, 405)
    assert r.headers.get("allow"), r.headers


async def test_405_allow_header_lists_every_method_of_the_resource(http, boss):
    for path, expected in ((SOPS, {"GET", "POST"}), (SESSIONS, {"GET", "POST"}),
                           (f"{SOPS}/{uuid.uuid4()}", {"GET", "PUT", "DELETE"})):
        r = await http.request("PATCH", path, headers=boss.h)
        assert_problem(r, 405)
        allowed = {m.strip() for m in r.headers["allow"].split(",")}
        assert expected <= allowed, (path, allowed)


# --- lengths and size -----------------------------------------------------------------------

FIELD_PATHS: dict[str, tuple[Any, ...]] = {
    "title": ("title",),
    "description": ("description",),
    "task title": ("tasks", 0, "title"),
    "step title": ("tasks", 0, "steps", 0, "title"),
    "instructions": ("tasks", 0, "steps", 0, "instructions"),
    "prompt": ("tasks", 0, "steps", 0, "check", "prompt"),
    "unit": ("tasks", 0, "steps", 0, "check", "unit"),
}


def dig(obj: Any, path: tuple[Any, ...]) -> tuple[Any, Any]:
    for part in path[:-1]:
        obj = obj[part]
    return obj, path[-1]


def sop_with(where: str, text: str) -> tuple[dict[str, Any], str]:
    """A one-step measurement SOP with `text` at `where`, and that field's error location."""
    body = sop_body(steps_per_task=(1,), measurement_at=0)
    path = FIELD_PATHS[where]
    parent, key = dig(body, path)
    parent[key] = text
    return body, ".".join(str(p) for p in path)


@pytest.mark.parametrize("where,limit", [
    ("title", 200), ("description", 5000), ("task title", 200), ("step title", 200),
    ("instructions", 5000), ("prompt", 500), ("unit", 32),
])
async def test_strings_over_their_max_length_are_422_and_at_it_are_accepted(
        http, boss, where, limit):
    body, field = sop_with(where, "x" * (limit + 1))
    problem = assert_problem(await http.post(SOPS, json=body, headers=boss.h), 422)
    assert any(f.endswith(field) for f in error_fields(problem)), problem
    body, _ = sop_with(where, "x" * limit)
    r = await http.post(SOPS, json=body, headers=boss.h)
    assert r.status_code == 201, r.text


async def test_too_many_tasks_or_steps_are_422(http, boss):
    body = sop_body(steps_per_task=(1,) * 101, measurement_at=None)
    assert_problem(await http.post(SOPS, json=body, headers=boss.h), 422)
    body = sop_body(steps_per_task=(201,), measurement_at=None)
    assert_problem(await http.post(SOPS, json=body, headers=boss.h), 422)


async def test_session_strings_over_their_max_length_are_422(http, owner, running):
    sid, step = running["id"], running["current_step_id"]
    for body, field in [
        ({"step_id": step, "result": "passed", "notes": "n" * 2001}, "notes"),
        ({"step_id": step, "result": "passed", "evidence_uri": "u" * 2049}, "evidence_uri"),
    ]:
        problem = assert_problem(await http.post(f"{SESSIONS}/{sid}/checks", json=body,
                                                 headers=owner.h), 422)
        assert any(f.endswith(field) for f in error_fields(problem)), problem
    for reason in ("r" * 501, "", "   ", None):
        problem = assert_problem(await http.post(f"{SESSIONS}/{sid}/cancel",
                                                 json={"reason": reason}, headers=owner.h), 422)
        assert any(f.endswith("reason") for f in error_fields(problem)), problem
    await assert_session_untouched(http, owner, running)


async def test_body_over_the_size_limit_is_413_problem(http, boss):
    big = json.dumps({**sop_body(), "description": "x" * (MAX_BODY + 10)}).encode()
    r = await http.post(SOPS, content=big, headers={**boss.h, **JSON})
    assert_problem(r, 413)
    r = await http.post(SOPS, content=b" " * (MAX_BODY + 1), headers={**boss.h, **JSON})
    assert_problem(r, 413)


async def test_body_over_the_size_limit_without_a_token_is_413_or_401_problem(http):
    r = await http.post(SOPS, content=b"x" * (MAX_BODY + 1), headers=JSON)
    assert_problem(r)
    assert r.status_code in (401, 413)


async def test_declared_content_length_over_the_limit_is_413_problem(http, boss):
    headers = {**boss.h, **JSON, "content-length": str(10**12)}
    r = await http.post(SOPS, content=b"{}", headers=headers)
    assert_problem(r, 413)


async def test_streamed_body_over_the_size_limit_is_413_problem(http, boss):
    async def chunks():
        for _ in range(MAX_BODY // 4096 + 2):
            yield b" " * 4096

    r = await http.post(SOPS, content=chunks(), headers={**boss.h, **JSON})
    assert_problem(r, 413)


# --- unicode and control characters ---------------------------------------------------------

UNICODE_TITLES = {
    "emoji": "Lockout \U0001f512 Press 4",
    "cjk": "\u9396\u5b9a - \u30d7\u30ec\u30b9 4",
    "rtl-override": "Press \u202e4 sserP",
    "combining": "Pre\u0301ss 4\u0308",
    "zero-width": "Press\u200b\u200d 4\ufeff",
    "line-separators": "Press\u2028\u20294",
    "bell-and-escape": "Press\x07\x1b[31m 4",
    "tab-newline": "Press\t4\nline 2",
    "del": "Press\x7f4",
    "c1-controls": "Press\x85\x9b4",
    "astral": "\U0010fffd\U0001d11e",
    "noncharacters": "\ufffe\uffff",
}


@pytest.mark.parametrize("name", list(UNICODE_TITLES))
async def test_unicode_and_control_characters_in_titles_never_get_a_5xx(http, boss, name):
    title = UNICODE_TITLES[name]
    body = sop_body(title=title)
    body["tasks"][0]["title"] = title
    body["tasks"][0]["steps"][0]["check"]["prompt"] = title
    r = await http.post(SOPS, json=body, headers=boss.h)
    if r.status_code == 201:
        sop = r.json()
        assert sop["title"] == title.strip()
        r = await http.get(f"{SOPS}/{sop['id']}", headers=boss.h)
        assert r.status_code == 200 and r.json() == sop
        r = await http.get(f"{SOPS}?status=draft&limit=5", headers=boss.h)
        assert r.status_code == 200
    else:
        assert_problem(r, 422)


ON_POSTGRES = os.environ.get("WORKSESSION_TEST_DATABASE", "sqlite") == "postgresql"
@pytest.mark.parametrize("where", list(FIELD_PATHS))
async def test_nul_characters_in_sop_text_are_stored_or_refused_never_a_5xx(
        http, boss, where):
    text = "Press\x004"
    body, field = sop_with(where, text)
    r = await http.post(SOPS, json=body, headers=boss.h)
    if r.status_code == 201:
        r = await http.get(f"{SOPS}/{r.json()['id']}", headers=boss.h)
        assert r.status_code == 200
        parent, key = dig(r.json(), FIELD_PATHS[where])
        assert parent[key] == text
    else:
        problem = assert_problem(r, 422)
        assert any(f.endswith(field) for f in error_fields(problem)), problem


async def test_nul_characters_in_check_notes_and_cancel_reason_never_get_a_5xx(
        http, worker_user, confirmed_sop):
    s = await start(http, worker_user, confirmed_sop)
    body = {"step_id": s["current_step_id"], "result": "passed", "notes": "a\x00b",
            "evidence_uri": "file:///a\x00b"}
    r = await http.post(f"{SESSIONS}/{s['id']}/checks", json=body, headers=worker_user.h)
    if r.status_code == 200:
        assert r.json()["checks"][0]["notes"] == "a\x00b"
    else:
        assert_problem(r, 422)
    r = await http.post(f"{SESSIONS}/{s['id']}/cancel", json={"reason": "a\x00b"},
                        headers=worker_user.h)
    if r.status_code == 200:
        assert r.json()["status"] == "cancelled"
    else:
        assert_problem(r, 422)


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ud800\\u0041", "\\udc00\\ud800"])
async def test_lone_surrogates_in_titles_never_get_a_5xx(http, boss, escape):
    text = json.dumps(sop_body(title="PLACEHOLDER")).replace("PLACEHOLDER", escape)
    r = await http.post(SOPS, content=text.encode(), headers={**boss.h, **JSON})
    if r.status_code == 201:
        r = await http.get(f"{SOPS}/{r.json()['id']}", headers=boss.h)
        assert r.status_code == 200
    else:
        assert_problem(r, 422)


async def test_whitespace_only_title_is_422(http, boss):
    for title in ("", " ", "\t\n ", "\u3000"):
        body = assert_problem(await http.post(SOPS, json=sop_body(title=title),
                                              headers=boss.h), 422)
        assert any(f.endswith("title") for f in error_fields(body)), body


# --- tokens ---------------------------------------------------------------------------------

_ID = uuid.uuid4()
NON_CANONICAL_UUIDS = {
    "urn-uuid": f"urn:uuid:{_ID}", "braced": f"{{{_ID}}}", "upper-case": str(_ID).upper(),
    "32-hex-digits": _ID.hex, "odd-hyphens": f"{_ID.hex[:4]}-{_ID.hex[4:16]}-{_ID.hex[16:]}",
    "trailing-newline": f"{_ID}\n",
}


def _tokens() -> dict[str, str]:
    now = datetime.now(UTC)
    with warnings.catch_warnings():  # PyJWT warns that the test secret is short for HS512
        warnings.simplefilter("ignore")
        hs512 = jwt.encode(claims(), SECRET, algorithm="HS512")
    return {
        "alg-none": jwt.encode(claims(), None, algorithm="none"),
        "alg-none-by-hand": raw_token({"alg": "none", "typ": "JWT"}, claims(), secret=None),
        "alg-None-capitalised": raw_token({"alg": "None", "typ": "JWT"}, claims(),
                                          secret=None),
        "wrong-key": jwt.encode(claims(), b"another-secret-" + b"y" * 40, algorithm="HS256"),
        "expired": jwt.encode(claims(exp=int((now - timedelta(minutes=5)).timestamp())),
                              SECRET, algorithm="HS256"),
        "missing-exp": jwt.encode(claims(exp=...), SECRET, algorithm="HS256"),
        "missing-sub": jwt.encode(claims(sub=...), SECRET, algorithm="HS256"),
        "missing-role": jwt.encode(claims(role=...), SECRET, algorithm="HS256"),
        "unknown-role": jwt.encode(claims(role="root"), SECRET, algorithm="HS256"),
        "role-wrong-case": jwt.encode(claims(role="Admin"), SECRET, algorithm="HS256"),
        "role-list": jwt.encode(claims(role=["admin"]), SECRET, algorithm="HS256"),
        "role-object": jwt.encode(claims(role={"admin": True}), SECRET, algorithm="HS256"),
        "non-uuid-sub": jwt.encode(claims(sub="alice"), SECRET, algorithm="HS256"),
        # UUID() reads these as the id they spell: only str(UUID)'s own spelling is a user
        **{f"sub-{name}": jwt.encode(claims(sub=spelling), SECRET, algorithm="HS256")
           for name, spelling in NON_CANONICAL_UUIDS.items()},
        "empty-sub": jwt.encode(claims(sub=""), SECRET, algorithm="HS256"),
        "int-sub": raw_token({"alg": "HS256", "typ": "JWT"}, claims(sub=12345)),
        "exp-string": raw_token({"alg": "HS256", "typ": "JWT"}, claims(exp="tomorrow")),
        "exp-null": raw_token({"alg": "HS256", "typ": "JWT"}, claims(exp=None)),
        "nbf-future": jwt.encode(claims(nbf=int((now + timedelta(hours=1)).timestamp())),
                                 SECRET, algorithm="HS256"),
        "hs512-right-secret": hs512,
        "hs384-right-secret": jwt.encode(claims(), SECRET, algorithm="HS384"),
        "rs256-header-hmac-signed": raw_token({"alg": "RS256", "typ": "JWT"}, claims()),
        "header-not-object": raw_token("[]", claims()),
        "header-not-json": raw_token("{nope", claims()),
        # PyJWT 2.9 let json's RecursionError out of this header (503): the floor is past it
        "header-nested-1000-deep": raw_token("[" * 1000 + "]" * 1000, claims()),
        "claims-not-object": raw_token({"alg": "HS256", "typ": "JWT"}, "[1, 2]"),
        "claims-not-json": raw_token({"alg": "HS256", "typ": "JWT"}, "{nope"),
        "signature-stripped": jwt.encode(claims(), SECRET, algorithm="HS256").rsplit(".", 1)[0]
        + ".",
        "two-segments": ".".join(jwt.encode(claims(), SECRET, algorithm="HS256")
                                 .split(".")[:2]),
        "tampered-claims": _tampered(),
        "garbage": "garbage",
        "dots": "...",
        "not-base64": "!!!.@@@.###",
        "very-long": "a" * 8000,
    }


def _tampered() -> str:
    h, _, s = jwt.encode(claims(role="worker"), SECRET, algorithm="HS256").split(".")
    return f"{h}.{b64(json.dumps(claims(role='admin')).encode())}.{s}"


TOKENS = _tokens()


@pytest.mark.parametrize("name", list(TOKENS))
async def test_bad_bearer_tokens_are_401_problems(http, name):
    headers = {"Authorization": f"Bearer {TOKENS[name]}"}
    for method, path in (("GET", SOPS), ("GET", SESSIONS), ("POST", SOPS),
                         ("GET", f"{SESSIONS}/current")):
        r = await http.request(method, path, headers=headers,
                               json=sop_body() if method == "POST" else None)
        assert_problem(r, 401)
        assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers


@pytest.mark.parametrize("claim", [
    {"exp": float("inf")}, {"exp": float("-inf")}, {"exp": float("nan")}, {"exp": [1]},
    {"iat": float("inf")}, {"iat": "now"}, {"nbf": float("-inf")}, {"nbf": float("nan")},
    {"exp": -(10**400)},
], ids=lambda c: json.dumps(c)[:30])
async def test_tokens_with_non_finite_or_non_numeric_time_claims_are_401_problems(
        http, claim):
    token = raw_token({"alg": "HS256", "typ": "JWT"}, claims(**claim))
    r = await http.get(SOPS, headers={"Authorization": f"Bearer {token}"})
    assert_problem(r, 401)


async def test_token_with_an_enormous_exp_is_not_a_5xx(http):
    token = raw_token({"alg": "HS256", "typ": "JWT"}, claims(exp=10**400))
    r = await http.get(SOPS, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code in (200, 401), r.text
    if r.status_code == 401:
        assert_problem(r, 401)


@pytest.mark.parametrize("value", [
    "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer    ", "bearer", "Token abc",
    "Digest username=x", "Basic", "xxx", "Bearer a b c", "BearerX abc",
])
async def test_malformed_authorization_headers_are_401_problems(http, value):
    r = await http.get(SOPS, headers={"Authorization": value})
    assert_problem(r, 401)
    assert r.headers.get("www-authenticate", "").startswith("Bearer")


async def test_non_ascii_authorization_header_is_401_problem(http):
    value = b"Bearer " + "t\u00f6k\u00e9n".encode("latin-1")
    r = await http.get(SOPS, headers=[(b"authorization", value)])
    assert_problem(r, 401)
    r = await http.get(SOPS, headers=[(b"authorization", b"Bearer \xff\xfe\x80")])
    assert_problem(r, 401)


async def test_a_good_token_is_accepted_with_either_scheme_case(http, boss):
    token = boss.h["Authorization"].split(" ", 1)[1]
    for scheme in ("Bearer", "bearer", "BEARER"):
        r = await http.get(SOPS, headers={"Authorization": f"{scheme} {token}"})
        assert r.status_code == 200, (scheme, r.text)


async def test_every_api_route_wants_a_token(http, running, shared_sop):
    sid, sop = running["id"], shared_sop["id"]
    for method, path in [
        ("GET", SOPS), ("POST", SOPS), ("GET", f"{SOPS}/{sop}"), ("PUT", f"{SOPS}/{sop}"),
        ("DELETE", f"{SOPS}/{sop}"), ("POST", f"{SOPS}/{sop}/confirm"),
        ("POST", f"{SOPS}/{sop}/revisions"), ("GET", SESSIONS), ("POST", SESSIONS),
        ("GET", f"{SESSIONS}/current"), ("GET", f"{SESSIONS}/{sid}"),
        ("POST", f"{SESSIONS}/{sid}/checks"), ("POST", f"{SESSIONS}/{sid}/complete"),
        ("POST", f"{SESSIONS}/{sid}/pause"), ("POST", f"{SESSIONS}/{sid}/resume"),
        ("POST", f"{SESSIONS}/{sid}/cancel"), ("POST", f"{SESSIONS}/{sid}/approve"),
        ("POST", f"{SESSIONS}/{sid}/reopen"), ("GET", "/api/v1/audit"),
    ]:
        r = await http.request(method, path)
        assert_problem(r, 401)
        assert r.headers.get("www-authenticate") == "Bearer", (method, path)


# --- precedence -----------------------------------------------------------------------------

INVALID_CHECK_BODIES: list[Any] = [
    {}, {"step_id": "nope"}, {"step_id": str(uuid.uuid4()), "result": "maybe"},
    {"step_id": str(uuid.uuid4()), "value": "high"}, [], "x", None,
]


async def test_checks_with_invalid_body_another_worker_gets_404_not_422(
        http, owner, running):
    other = User(uuid.uuid4(), "worker")
    for body in INVALID_CHECK_BODIES:
        r = await http.post(f"{SESSIONS}/{running['id']}/checks", json=body, headers=other.h)
        assert_problem(r, 404)
    r = await http.post(f"{SESSIONS}/{running['id']}/checks", headers=other.h)
    assert_problem(r, 404)
    await assert_session_untouched(http, owner, running)


async def test_checks_with_invalid_body_a_supervisor_gets_403_not_422(http, boss, running):
    for user in (boss, User(uuid.uuid4(), "admin")):
        for body in INVALID_CHECK_BODIES:
            r = await http.post(f"{SESSIONS}/{running['id']}/checks", json=body,
                                headers=user.h)
            assert_problem(r, 403)
        r = await http.post(f"{SESSIONS}/{running['id']}/checks", headers=user.h)
        assert_problem(r, 403)


async def test_checks_with_invalid_body_the_owner_gets_422(http, owner, running):
    for body in INVALID_CHECK_BODIES:
        r = await http.post(f"{SESSIONS}/{running['id']}/checks", json=body, headers=owner.h)
        assert_problem(r, 422)
    await assert_session_untouched(http, owner, running)


async def test_create_sop_with_empty_body_by_a_worker_is_403_not_422(http):
    worker = User(uuid.uuid4(), "worker")
    assert_problem(await http.post(SOPS, headers=worker.h), 403)
    assert_problem(await http.post(SOPS, content=b"", headers={**worker.h, **JSON}), 403)
    for body in ({}, [], {"title": ""}):
        assert_problem(await http.post(SOPS, json=body, headers=worker.h), 403)


async def test_invalid_body_without_a_token_is_401_not_422(http, running):
    assert_problem(await http.post(SOPS, json={}), 401)
    assert_problem(await http.post(f"{SESSIONS}/{running['id']}/checks", json={}), 401)
    assert_problem(await http.post(SESSIONS, json={"sop_id": "nope"}), 401)


async def test_malformed_json_without_a_token_is_401_not_422(http):
    r = await http.post(SOPS, content=b"{", headers=JSON)
    assert_problem(r, 401)


async def test_malformed_json_to_create_sop_by_a_worker_is_403_not_422(http):
    worker = User(uuid.uuid4(), "worker")
    r = await http.post(SOPS, content=b"{", headers={**worker.h, **JSON})
    assert_problem(r, 403)


async def test_malformed_json_to_another_workers_checks_is_404_not_422(http, running):
    other = User(uuid.uuid4(), "worker")
    r = await http.post(f"{SESSIONS}/{running['id']}/checks", content=b"{",
                        headers={**other.h, **JSON})
    assert_problem(r, 404)


async def test_worker_editing_a_draft_with_invalid_body_gets_404_not_422(http, draft_sop):
    worker = User(uuid.uuid4(), "worker")
    r = await http.put(f"{SOPS}/{draft_sop['id']}", json={}, headers=worker.h)
    assert_problem(r, 404)


async def test_supervisor_starting_a_session_gets_403_even_with_invalid_body(
        http, boss, shared_sop):
    for body in ({"sop_id": shared_sop["id"]}, {}, {"sop_id": "nope"}):
        assert_problem(await http.post(SESSIONS, json=body, headers=boss.h), 403)


# --- health ---------------------------------------------------------------------------------

async def test_healthz_is_200_without_a_token(http):
    r = await http.get("/healthz")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok"


async def test_readyz_is_200_without_a_token_with_every_check_ok(http):
    r = await http.get("/readyz")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert checks["database"] == "ok"
    assert checks["temporal"] == "ok"
    assert checks["worker"] == "ok"


async def test_health_endpoints_ignore_a_bad_token(http):
    headers = {"Authorization": "Bearer garbage"}
    assert (await http.get("/healthz", headers=headers)).status_code == 200
    assert (await http.get("/readyz", headers=headers)).status_code == 200


async def test_a_request_past_its_deadline_is_answered_503_at_once_and_its_work_finishes(
        http, app, supervisor, monkeypatch):
    """The bound holds however long the work takes, and the work is not cancelled: it ends
    in the background (a cancellation in the middle of a database statement would leave a
    connection holding its transaction)."""
    import asyncio
    import time

    from application import sessions as uc

    finished = asyncio.Event()
    cancelled = []

    async def slow(*_: Any, **__: Any) -> Any:
        try:
            await asyncio.sleep(2)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        finished.set()
        return [], 0

    monkeypatch.setattr(uc, "list_sessions", slow)
    monkeypatch.setattr(app.state, "request_deadline", 0.3)
    t0 = time.monotonic()
    r = await http.get("/api/v1/sessions", headers=supervisor.h)
    took = time.monotonic() - t0
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert took < 1.5, took
    await asyncio.wait_for(finished.wait(), 5)  # the work went on to its end
    assert cancelled == []
