"""API fuzzing: schemathesis against the real stack (issue "API fuzzing").

Every operation of the OpenAPI document is fuzzed (schemathesis' examples, coverage and
fuzzing phases) as a supervisor, as a worker and as an admin, and then statefully (chains of
calls following the links schemathesis infers between operations), with all of schemathesis'
default checks: no server error, documented status codes, content types, headers and response
schemas, auth enforced, schema-valid data accepted, schema-invalid data rejected, and more.

Why a server of its own: schemathesis' pytest integration is synchronous and Hypothesis-driven,
and its ASGI transport runs the application in a portal thread with another event loop (and
runs the lifespan a second time there). The session's Temporal client, database engine and
worker belong to the session event loop, which does not run while a synchronous test does, so
the worker would not poll and the engine would be used from the wrong loop. The fuzz run
therefore serves the app with uvicorn on 127.0.0.1 (a free port) from a thread with its own
event loop, its own Temporal client to the session's dev server, its own database (a fresh
SQLite file, or a fresh PostgreSQL database with WORKSESSION_TEST_DATABASE=postgresql), its
own worker on its own task queue, and schemathesis talks to it over real HTTP.

Below the fuzzing: regression tests for what it found (request schemas that admitted bodies
the service refuses, statuses and error bodies the document did not state).
WORKSESSION_FUZZ_STATS=FILE writes the (who, operation, status, count) seen to FILE as JSON.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import jsonschema_rs
import pytest
import schemathesis
from hypothesis import Phase
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import FlakyStrategyDefinition
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from tests.conftest import SECRET, sop_body
from tests.live_server import LiveServer
from worksession.settings import Settings
from worksession.tokens import mint

SEED = 20240601  # fixed: CI runs the same examples every time
MAX_EXAMPLES = 30  # per operation and phase
STATEFUL_SCENARIOS = 80
STATEFUL_STEPS = 15
MAX_BODY = Settings().max_body_bytes

# The OpenAPI document of the application, exactly as it serves it on /openapi.json (the
# document does not depend on the database, Temporal or secrets, so it is built in-process).
OPENAPI: dict[str, Any] = create_app(Settings(), jwt_secret=SECRET).openapi()

STATUSES: Counter[tuple[str, str, int]] = Counter()  # (who, operation, status) seen


def token(role: str, sub: uuid.UUID | None = None) -> str:
    return mint(SECRET, role, sub, ttl=timedelta(hours=2))


def auth(role: str, sub: uuid.UUID | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(role, sub)}"}


SUPERVISOR_ID, WORKER_ID, ADMIN_ID = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


@pytest.fixture(scope="module")
def fuzz_server(temporal_env: WorkflowEnvironment) -> Iterator[LiveServer]:
    server = LiveServer(temporal_env.client.service_client.config.target_host, "fuzz")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        if os.environ.get("WORKSESSION_FUZZ_STATS"):  # what the fuzzing reached, for humans
            Path(os.environ["WORKSESSION_FUZZ_STATS"]).write_text(json.dumps(
                sorted([*key, n] for key, n in STATUSES.items()), indent=0))


def confirmed_sop(client: httpx.Client, title: str = "Lockout/Tagout - Press 4"
                  ) -> dict[str, Any]:
    """A new confirmed SOP: step 1 confirm, step 2 measurement (0..0.5 V), step 3 confirm."""
    supervisor = auth("supervisor", SUPERVISOR_ID)
    r = client.post("/api/v1/sops", json=sop_body(title=title), headers=supervisor)
    assert r.status_code == 201, r.text
    r = client.post(f"/api/v1/sops/{r.json()['id']}/confirm", headers=supervisor)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def fuzz_data(fuzz_server: LiveServer) -> dict[str, Any]:
    """Real ids for the fuzzer to find: confirmed SOPs, a draft, the worker's live session and
    another worker's completed one."""
    supervisor = auth("supervisor", SUPERVISOR_ID)
    with httpx.Client(base_url=fuzz_server.base_url, timeout=30) as c:
        sops = [confirmed_sop(c), confirmed_sop(c, "Forklift pre-shift check")]
        r = c.post("/api/v1/sops", json=sop_body(title="Draft"), headers=supervisor)
        assert r.status_code == 201, r.text
        draft = r.json()
        r = c.post("/api/v1/sessions", json={"sop_id": sops[0]["id"]},
                   headers=auth("worker", WORKER_ID))
        assert r.status_code == 201, r.text
        session = r.json()
        other = auth("worker", uuid.uuid4())
        r = c.post("/api/v1/sessions", json={"sop_id": sops[1]["id"]}, headers=other)
        assert r.status_code == 201, r.text
        r = c.post(f"/api/v1/sessions/{r.json()['id']}/complete", headers=other)
        assert r.status_code == 200, r.text
        return {"sops": sops, "draft": draft, "session": session, "completed": r.json()}


# ---- schemathesis configuration -------------------------------------------------------------
# Bodies whose documented request schema does not express every rule the service applies (see
# the regression tests below): for these operations a 422 answer to a schema-valid body
# is accepted by `positive_data_acceptance`; the 422 response itself is still checked against
# the documented Problem schema like every other response.
CONTENT_RULES = [
    ("/api/v1/sops", "POST"),
    ("/api/v1/sops/{sop_id}", "PUT"),
    ("/api/v1/sessions/{session_id}/checks", "POST"),
    ("/api/v1/sessions/{session_id}/cancel", "POST"),
    ("/api/v1/sessions/{session_id}/reopen", "POST"),
    # `step_id`: required for `verified` (a step of the session's SOP), refused otherwise
    ("/api/v1/sessions/{session_id}/signatures", "POST"),
    # `url`: a URL whose host resolves to public addresses (a DNS lookup, not a schema)
    ("/api/v1/webhooks", "POST"),
    # `step_id`: one of the session's SOP's steps
    ("/api/v1/nonconformances", "POST"),
]
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # the default


def schema_config(**extra: Any) -> schemathesis.config.SchemathesisConfig:
    return schemathesis.config.SchemathesisConfig.from_dict({
        "seed": SEED,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True,
                       "database": "none"},
        "operations": [
            {"include-name": f"{method} {path}",
             "checks": {"positive_data_acceptance": {
                 "expected-statuses": [*POSITIVE_STATUSES, "422"]}}}
            for path, method in CONTENT_RULES
        ] + [
            # CONTRACT.md: deleting an SOP that sessions refer to archives it, and an archived
            # SOP stays readable (kept for history), so a GET after that DELETE is 200, not 404.
            {"include-name": ["GET /api/v1/sops/{sop_id}", "DELETE /api/v1/sops/{sop_id}"],
             "checks": {"use_after_free": {"enabled": False}}},
            # An evidence upload's body is a file whose type the service reads from its first
            # bytes (CONTRACT.md, "Evidence files"): a schema-valid body (any binary) is mostly
            # none of the types taken, 415 by design.
            {"include-name": "POST /api/v1/sessions/{session_id}/evidence",
             "checks": {"positive_data_acceptance": {
                 "expected-statuses": [*POSITIVE_STATUSES, "413", "415", "422"]}}},
            # CONTRACT.md: DELETE of an SOP with in-progress or paused sessions is answered 400
            # (documented), a refusal of a schema-valid request by design.
            {"include-name": "DELETE /api/v1/sops/{sop_id}",
             "checks": {"positive_data_acceptance": {
                 "expected-statuses": [*POSITIVE_STATUSES, "400"]}}},
        ],
        **extra,
    })


# Headers that frame the message and belong to the HTTP client, not to the request a client
# means: one the fuzzer makes up (a `Content-Length: JxK3f`) is malformed HTTP, which the
# HTTP server refuses 400 before any of the application runs (a problem all the same,
# api/server.py; tests/test_front_door.py covers it). Seen in a CI run, with made-up header
# names beside it.
FRAMING = frozenset({"content-length", "transfer-encoding", "host", "connection", "upgrade",
                     "expect", "te", "trailer"})


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    if case.headers:
        case.headers = {k: v for k, v in case.headers.items() if k.lower() not in FRAMING}


PROBLEM = jsonschema_rs.Draft202012Validator(
    {"$ref": "#/components/schemas/Problem", "components": OPENAPI["components"]})


@schemathesis.check
def problem_details_conformance(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every error body is the documented RFC 9457 Problem, with the response's own status.

    The document lists the Problem model under `application/json`, which no error is sent as,
    and `application/problem+json` with no schema, so `response_schema_conformance` cannot
    check error bodies (see test_error_responses_document_their_problem_schema)."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/problem+json"), (
        f"error {response.status_code} sent as {content_type!r}, not application/problem+json")
    body = response.json()
    errors = [e.message for e in PROBLEM.iter_errors(body)]
    assert not errors, f"problem body does not match the Problem schema: {errors}"
    assert body["status"] == response.status_code, (
        f"problem status {body['status']} but HTTP status {response.status_code}")
    return True


def role_schema(role: str, sub: uuid.UUID) -> Any:
    """The app's schema, authenticated as `role` (schemathesis leaves the token off where it
    tests that auth is enforced)."""
    config = schema_config(auth={"openapi": {"HTTPBearer": {"bearer": token(role, sub)}}})
    return schemathesis.openapi.from_dict(OPENAPI, config=config)


supervisor_schema = role_schema("supervisor", SUPERVISOR_ID)
worker_schema = role_schema("worker", WORKER_ID)
admin_schema = role_schema("admin", ADMIN_ID)


def call(case: Any, who: str, base_url: str) -> None:
    response = case.call(base_url=base_url)
    STATUSES[(who, case.operation.label, response.status_code)] += 1
    case.validate_response(response, transport_kwargs={"base_url": base_url})


# ---- stateless fuzzing ----------------------------------------------------------------------
@supervisor_schema.parametrize()
def test_fuzz_as_supervisor(case: Any, fuzz_server: LiveServer, fuzz_data: Any) -> None:
    call(case, "supervisor", fuzz_server.base_url)


@worker_schema.parametrize()
def test_fuzz_as_worker(case: Any, fuzz_server: LiveServer, fuzz_data: Any) -> None:
    call(case, "worker", fuzz_server.base_url)


@admin_schema.parametrize()
def test_fuzz_as_admin(case: Any, fuzz_server: LiveServer, fuzz_data: Any) -> None:
    call(case, "admin", fuzz_server.base_url)


# ---- stateful fuzzing -----------------------------------------------------------------------
WORKER_OPERATIONS = {
    "POST /api/v1/sessions", "GET /api/v1/sessions/current",
    "POST /api/v1/sessions/{session_id}/checks", "POST /api/v1/sessions/{session_id}/complete",
    "POST /api/v1/sessions/{session_id}/pause", "POST /api/v1/sessions/{session_id}/resume",
    "POST /api/v1/sessions/{session_id}/cancel",
}


def test_stateful(fuzz_server: LiveServer, fuzz_data: Any) -> None:
    """Chains of calls along the links schemathesis infers between operations (the document
    declares no OpenAPI links). Each call is made by the role that may make it (SOP authoring,
    reads, approve/reopen and audit: a supervisor; session work: a worker; ops: an admin).
    Every scenario has a worker of its own: every other one with a session already in progress
    (which `GET /sessions/current` hands on to the session operations), the others without one
    (so they can start one from an SOP that `GET /sops` lists), so chains reach both working
    and starting sessions whatever the stateless tests left behind."""
    schema = schemathesis.openapi.from_dict(OPENAPI, config=schema_config(**{
        "base-url": fuzz_server.base_url,
        # Chains exist to reach deep states; malformed input is the stateless tests' job.
        "phases": {"stateful": {"generation": {"mode": "positive"}}},
    }))
    run = {"worker": WORKER_ID, "scenarios": 0}
    failures: list[BaseException] = []
    client = httpx.Client(base_url=fuzz_server.base_url, timeout=30)
    # The newest SOPs head `GET /sops`, the list the chains pick an SOP to start from.
    sops = [confirmed_sop(client) for _ in range(3)]

    def worker_with_live_session() -> uuid.UUID:
        worker = uuid.uuid4()
        for _ in range(3):
            r = client.post("/api/v1/sessions", json={"sop_id": sops[-1]["id"]},
                            headers=auth("worker", worker))
            if r.status_code == 201:
                return worker
            sops.append(confirmed_sop(client))  # the chains archived or deleted that SOP
        raise AssertionError(f"cannot start a session: {r.status_code} {r.text}")

    @schema.auth(refresh_interval=None)
    class RoleAuth:
        def get(self, case: Any, ctx: Any) -> str:
            label = case.operation.label
            if label in WORKER_OPERATIONS:
                return token("worker", run["worker"])
            if label.split(" ", 1)[1].startswith("/api/v1/ops/"):
                return token("admin", ADMIN_ID)
            return token("supervisor", SUPERVISOR_ID)

        def set(self, case: Any, data: str, ctx: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            run["scenarios"] += 1
            run["worker"] = (worker_with_live_session() if run["scenarios"] % 2
                             else uuid.uuid4())

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            STATUSES[("stateful", case.operation.label, response.status_code)] += 1

        def validate_response(self, response: Any, case: Any, *args: Any, **kw: Any) -> None:
            try:
                super().validate_response(response, case, *args, **kw)
            except BaseException as e:
                failures.append(e)  # kept even if Hypothesis' replay of it goes astray
                raise

    settings = hypothesis_settings(
        stateful_step_count=STATEFUL_STEPS, deadline=None, derandomize=True, database=None,
        # Generation only, as schemathesis' own stateful engine does: shrinking replays a
        # scenario against a server whose state has moved on, which cannot reproduce it.
        phases=[Phase.generate])
    restarts = 0
    try:
        while run["scenarios"] < STATEFUL_SCENARIOS:
            try:
                Machine.run(settings=hypothesis_settings(
                    settings, max_examples=STATEFUL_SCENARIOS - run["scenarios"]))
                break
            except FlakyStrategyDefinition:
                # The live server's state (not the API's correctness) changed which links a
                # replayed choice prefix could follow; schemathesis' own engine then re-runs
                # the suite, and so does this test, for the scenarios left.
                if failures:
                    raise failures[0] from None
                restarts += 1
                assert restarts <= 10, "the state machine kept hitting inconsistent generation"
    finally:
        client.close()
    if failures:
        raise failures[0]
    # The chains must have reached live workflows, not just bounced off unknown ids.
    reached = {op for (who, op, status) in STATUSES if who == "stateful" and status < 300}
    assert "GET /api/v1/sessions/current" in reached, sorted(reached)
    assert reached & (WORKER_OPERATIONS - {"GET /api/v1/sessions/current"}), sorted(reached)


# ---- what the fuzzing found, kept as regression tests ------------------------------------
def request_schema(name: str) -> Any:
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]})


@pytest.fixture
def api(fuzz_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.base_url, timeout=30) as c:
        yield c


def live_session(api: httpx.Client) -> tuple[dict[str, str], dict[str, Any]]:
    """A new worker's session on a new confirmed SOP (step 1 confirm, step 2 measurement
    0..0.5 V)."""
    worker = auth("worker", uuid.uuid4())
    r = api.post("/api/v1/sessions", json={"sop_id": confirmed_sop(api)["id"]}, headers=worker)
    assert r.status_code == 201, r.text
    return worker, r.json()


def one_step_sop(check: dict[str, Any], title: str = "Press 4") -> dict[str, Any]:
    return {"title": title, "tasks": [{"title": "Isolate", "steps": [
        {"title": "Stop the press", "check": check}]}]}


CONFIRM = {"kind": "confirm", "prompt": "Press has stopped"}
# Bodies an earlier schema admitted although the service refuses them: the schema now says
# so (the first assertion of the test fails if it admits one again).
SCHEMA_REFUSES = [
    pytest.param("sop", one_step_sop({**CONFIRM, "unit": "V", "min": 0, "max": 1}),
                 id="POST-sops-confirm-check-with-unit-min-max"),
    pytest.param("sop", one_step_sop({"kind": "measurement", "prompt": "Voltage"}),
                 id="POST-sops-measurement-without-bounds"),
    pytest.param("sop", one_step_sop(CONFIRM, title="   "), id="POST-sops-blank-title"),
    pytest.param("sop", one_step_sop(CONFIRM, title="Press\x004"), id="POST-sops-nul-in-text"),
    pytest.param("cancel-blank-reason", None, id="POST-cancel-blank-reason"),
]
# Rules that depend on more than the body (the step's check kind, min <= max across two
# fields) cannot be stated in JSON Schema: the service answers 422 with the offending field,
# which CONTRACT.md requires ("a result that contradicts it is 422"); CONTENT_RULES above lets
# schemathesis accept that 422.


@pytest.mark.parametrize(("kind", "body"), SCHEMA_REFUSES)
def test_body_the_service_refuses_is_refused_by_the_schema(api: httpx.Client, kind: str,
                                                          body: Any) -> None:
    if kind == "sop":
        schema, url, headers = "SopIn", "/api/v1/sops", auth("supervisor", SUPERVISOR_ID)
    else:
        headers, session = live_session(api)
        schema, body = "CancelIn", {"reason": "   "}
        url = f"/api/v1/sessions/{session['id']}/cancel"
    assert not request_schema(schema).is_valid(body), "the documented schema admits it"
    r = api.post(url, json=body, headers=headers)
    assert r.status_code == 422, r.text


def operations() -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, item in OPENAPI["paths"].items()
            for method in item]


def documented(method: str, path: str) -> set[str]:
    return set(OPENAPI["paths"][path][method.lower()]["responses"])


def fill(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", quote(value, safe=""), path)


def test_oversized_request_status_is_documented(api: httpx.Client) -> None:
    body = b"{" + b" " * MAX_BODY + b"}"
    headers = {**auth("supervisor", SUPERVISOR_ID), "Content-Type": "application/json"}
    undocumented = []
    for method, path in operations():
        r = api.request(method, fill(path, str(uuid.uuid4())), content=body, headers=headers)
        if str(r.status_code) not in documented(method, path):
            undocumented.append(f"{method} {path}: {r.status_code}")
    assert not undocumented, "undocumented: " + ", ".join(undocumented)


def test_path_parameter_status_is_documented(api: httpx.Client) -> None:
    """E.g. `PUT /api/v1/sops/x%2Fconfirm` is PUT /api/v1/sops/{sop_id} with the schema-valid
    sop_id 'x/confirm', which the server routes to POST-only /api/v1/sops/{sop_id}/confirm
    (405, documented for every operation); `GET /api/v1/sops/` (sop_id '') is a 404 problem
    (no slash redirects)."""
    headers = {**auth("supervisor", SUPERVISOR_ID), "Content-Type": "application/json"}
    undocumented = set()
    for method, path in operations():
        if not path.endswith("}"):
            continue
        prefix = path[:path.rindex("{")]
        tails = {p[len(prefix):].split("/", 1)[1] for _, p in operations()
                 if p.startswith(prefix) and p.count("/") > path.count("/")}
        for value in ["", *(f"{uuid.uuid4()}/{tail}" for tail in sorted(tails))]:
            r = api.request(method, fill(path, value), content=b"{}", headers=headers)
            if str(r.status_code) not in documented(method, path):
                undocumented.add(f"{method} {path}: {r.status_code}")
    assert not undocumented, "undocumented: " + ", ".join(sorted(undocumented))


def test_error_responses_document_their_problem_schema() -> None:
    missing = []
    for method, path in operations():
        responses = OPENAPI["paths"][path][method.lower()]["responses"]
        codes = [code for code, response in responses.items() if int(code) >= 400 and "schema"
                 not in response.get("content", {}).get("application/problem+json", {})]
        if codes:
            missing.append(f"{method} {path} ({', '.join(codes)})")
    assert not missing, "no application/problem+json schema: " + "; ".join(missing)
