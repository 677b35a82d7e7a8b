"""Evidence files over real HTTP (CONTRACT.md, "Evidence files", v1.2): a server of its own
(uvicorn on a socket: chunked bodies, uploads refused while the client still sends), on the
test database (WORKSESSION_TEST_DATABASE), with a directory store of its own.

Every refused case leaves nothing behind: no upload recorded, no file under a hash, no
check recorded or file attached; what a refusal leaves is its audit entry, as every refused
attempt on a session does (`rejected`, or `modification_rejected` on a locked session)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from temporalio.testing import WorkflowEnvironment

from persistence.db import Database
from persistence.tables import evidence, session_checks
from tests.conftest import User, sop_body, step_ids
from tests.evidence_files import REFUSED, TAKEN, jpeg, pdf, png, sha256
from tests.live_server import LiveServer

LIMIT = 1024 * 1024  # the server's WORKSESSION_MAX_EVIDENCE_BYTES here
SESSIONS = "/api/v1/sessions"


@pytest.fixture(scope="module")
def server(temporal_env: WorkflowEnvironment) -> Iterator[LiveServer]:
    s = LiveServer(temporal_env.client.service_client.config.target_host, "evidence",
                   max_evidence_bytes=LIMIT)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
async def http(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def store_dir(server: LiveServer) -> Path:
    return server.data_dir / "evidence"


@pytest.fixture
async def db(server: LiveServer) -> AsyncIterator[Database]:
    database = Database(server.database_url)
    yield database
    await database.dispose()


RULES = ("optional", "required", "required_on_fail", "none")


def rules_sop() -> dict[str, Any]:
    """Step 1 optional, 2 required, 3 a measurement required on fail, 4 none."""
    body = sop_body((4,), title=f"Evidence {uuid.uuid4().hex[:6]}", measurement_at=2)
    for step, rule in zip(body["tasks"][0]["steps"], RULES, strict=True):
        step["check"]["evidence"] = rule
    return body


async def confirmed(http: httpx.AsyncClient, supervisor: User,
                    body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = await http.post("/api/v1/sops", json=body or rules_sop(), headers=supervisor.h)
    assert r.status_code == 201, r.text
    r = await http.post(f"/api/v1/sops/{r.json()['id']}/confirm", headers=supervisor.h)
    assert r.status_code == 200, r.text
    return r.json()


async def start(http: httpx.AsyncClient, worker: User, sop: dict[str, Any]) -> dict[str, Any]:
    r = await http.post(SESSIONS, json={"sop_id": sop["id"]}, headers=worker.h)
    assert r.status_code == 201, r.text
    return r.json()


async def upload(http: httpx.AsyncClient, user: User, session_id: str, data: Any,
                 filename: str | None = "photo.jpg", content_type: str = "image/jpeg",
                 **kw: Any) -> httpx.Response:
    params = {"filename": filename} if filename else {}
    return await http.post(f"{SESSIONS}/{session_id}/evidence", content=data, params=params,
                           headers={**user.h, "Content-Type": content_type}, **kw)


async def uploaded(http: httpx.AsyncClient, user: User, session_id: str,
                   data: bytes | None = None) -> dict[str, Any]:
    r = await upload(http, user, session_id, data or jpeg())
    assert r.status_code == 201, r.text
    return r.json()


async def check(http: httpx.AsyncClient, user: User, session_id: str, step_id: str,
                **body: Any) -> httpx.Response:
    if "result" not in body and "value" not in body:
        body["result"] = "passed"
    return await http.post(f"{SESSIONS}/{session_id}/checks",
                           json={"step_id": step_id, **body}, headers=user.h)


async def rows(db: Database, session_id: str) -> list[dict[str, Any]]:
    async with db.read() as conn:
        return [dict(r) for r in (await conn.execute(sa.select(evidence).where(
            evidence.c.session_id == uuid.UUID(session_id)))).mappings()]


def stored(store_dir: Path) -> set[str]:
    """The files kept under a hash, and any scratch file with a name."""
    names = {p.name for p in store_dir.iterdir() if not p.name.startswith(".")}
    incoming = store_dir / ".incoming"
    return names | ({f".incoming/{p.name}" for p in incoming.iterdir()} if incoming.exists()
                    else set())


async def audit(http: httpx.AsyncClient, supervisor: User, session_id: str
                ) -> list[dict[str, Any]]:
    r = await http.get("/api/v1/audit", params={"session_id": session_id, "limit": 100},
                       headers=supervisor.h)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def nothing_left(db: Database, store_dir: Path, session_id: str,
                       files_before: set[str]) -> None:
    assert await rows(db, session_id) == []
    assert stored(store_dir) == files_before


# ---- uploads ---------------------------------------------------------------------------------
async def test_an_upload_is_stored_under_its_hash_and_answered_201(
        http, db, store_dir, worker_user, supervisor):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    data = jpeg(5000)
    r = await upload(http, worker_user, s["id"], data, filename="Prüfung 1.jpg",
                     content_type="application/octet-stream")
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "sha256", "content_type", "bytes", "filename", "uploaded_at",
                         "uploaded_by", "session_id"}
    assert body["sha256"] == sha256(data) and body["bytes"] == len(data)
    assert body["content_type"] == "image/jpeg"  # from the bytes, not the header
    assert body["filename"] == "Prüfung 1.jpg"
    assert body["uploaded_by"] == str(worker_user.id) and body["session_id"] == s["id"]
    assert r.headers["location"] == f"/api/v1/evidence/{body['id']}"
    assert (store_dir / body["sha256"]).read_bytes() == data
    [row] = await rows(db, s["id"])
    assert row["check_id"] is None and row["sha256"] == body["sha256"]
    entries = await audit(http, supervisor, s["id"])
    assert entries[-1]["action"] == "evidence_upload"
    assert entries[-1]["outcome"] == "accepted"
    assert entries[-1]["detail"]["sha256"] == body["sha256"]

    again = await upload(http, worker_user, s["id"], data, filename="other name.jpg")
    assert again.status_code == 200, again.text
    assert again.json() == body  # the same upload, its first name
    assert len(await rows(db, s["id"])) == 1
    assert len(await audit(http, supervisor, s["id"])) == len(entries)  # recorded once


@pytest.mark.parametrize("content_type", list(TAKEN))
async def test_each_type_taken_is_decided_from_the_first_bytes(
        http, worker_user, supervisor, content_type):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    r = await upload(http, worker_user, s["id"], TAKEN[content_type](), filename=None,
                     content_type="text/plain")
    assert r.status_code == 201, r.text
    assert r.json()["content_type"] == content_type and r.json()["filename"] is None


@pytest.mark.parametrize("name", list(REFUSED))
async def test_anything_else_is_415_and_leaves_nothing(
        http, db, store_dir, worker_user, supervisor, name):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    before = stored(store_dir)
    data, filename, content_type = REFUSED[name]
    r = await upload(http, worker_user, s["id"], data, filename=filename,
                     content_type=content_type)
    assert r.status_code == 415, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "/problems/unsupported-media-type"
    await nothing_left(db, store_dir, s["id"], before)


async def _chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def test_a_file_over_the_limit_is_a_readable_413_with_or_without_a_length(
        http, db, store_dir, worker_user, supervisor):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    before = stored(store_dir)
    big = png(3 * LIMIT)
    declared = await upload(http, worker_user, s["id"], big)  # Content-Length: refused first
    assert declared.status_code == 413, declared.text
    assert declared.headers["content-type"] == "application/problem+json"
    streamed = await upload(http, worker_user, s["id"], _chunks(big))  # chunked: counted
    assert "content-length" not in streamed.request.headers
    assert streamed.request.headers["transfer-encoding"] == "chunked"
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["type"] == "/problems/too-large"
    just_over = await upload(http, worker_user, s["id"], _chunks(png(LIMIT)[:LIMIT + 1]))
    assert just_over.status_code == 413, just_over.text
    await nothing_left(db, store_dir, s["id"], before)
    at_limit = await upload(http, worker_user, s["id"], _chunks(png(LIMIT)[:LIMIT]))
    assert at_limit.status_code == 201, at_limit.text
    assert at_limit.json()["bytes"] == LIMIT


async def test_an_upload_that_stalls_is_a_408_and_leaves_nothing(http, db, store_dir,
                                                                 worker_user, supervisor):
    """A phone whose link dies mid-upload: no part of the file for longer than the request
    timeout (10 s) is answered 408 `/problems/upload-incomplete`, and nothing is kept."""
    session = await start(http, worker_user, await confirmed(http, supervisor))
    before = stored(store_dir)
    data = jpeg(300_000)

    async def stalls() -> AsyncIterator[bytes]:
        yield data[:100_000]
        await asyncio.sleep(11)
        yield data[100_000:]

    r = await upload(http, worker_user, session["id"], stalls())
    assert r.status_code == 408, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "no part of the file arrived for 10 s" in r.json()["detail"]
    await nothing_left(db, store_dir, session["id"], before)


async def test_an_upload_to_someone_else_s_session_is_404_and_by_a_supervisor_403(
        http, db, store_dir, worker_user, other_worker, supervisor):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    before = stored(store_dir)
    r = await upload(http, other_worker, s["id"], jpeg(LIMIT // 2))
    assert r.status_code == 404, r.text
    r = await upload(http, supervisor, s["id"], jpeg())
    assert r.status_code == 403, r.text
    r = await upload(http, worker_user, str(uuid.uuid4()), jpeg())
    assert r.status_code == 404, r.text
    r = await http.post(f"{SESSIONS}/{s['id']}/evidence", content=jpeg(),
                        headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401, r.text
    await nothing_left(db, store_dir, s["id"], before)


async def test_an_upload_to_a_closed_session_is_409_with_its_audit_entry(
        http, db, store_dir, worker_user, supervisor):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    r = await http.post(f"{SESSIONS}/{s['id']}/cancel", json={"reason": "done"},
                        headers=worker_user.h)
    assert r.status_code == 200, r.text
    before = stored(store_dir)
    r = await upload(http, worker_user, s["id"], jpeg(LIMIT // 2))
    assert r.status_code == 409, r.text
    assert r.json()["type"] == "/problems/wrong-state"
    await nothing_left(db, store_dir, s["id"], before)
    last = (await audit(http, supervisor, s["id"]))[-1]
    assert (last["action"], last["outcome"]) == ("evidence_upload", "rejected")


async def test_an_upload_to_a_locked_session_is_409_with_its_audit_entry(
        http, db, store_dir, worker_user, supervisor):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    r = await http.post(f"{SESSIONS}/{s['id']}/complete", headers=worker_user.h)
    assert r.status_code == 200, r.text
    r = await http.post(f"{SESSIONS}/{s['id']}/approve", headers=supervisor.h)
    assert r.status_code == 200, r.text
    before = stored(store_dir)
    r = await upload(http, worker_user, s["id"], _chunks(jpeg(LIMIT // 2)))
    assert r.status_code == 409, r.text
    assert r.json()["type"] == "/problems/session-locked"
    await nothing_left(db, store_dir, s["id"], before)
    last = (await audit(http, supervisor, s["id"]))[-1]
    assert last["action"] == "modification_rejected"
    assert last["detail"]["attempted"] == "evidence_upload"


async def test_a_paused_session_takes_files(http, worker_user, supervisor):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    r = await http.post(f"{SESSIONS}/{s['id']}/pause", headers=worker_user.h)
    assert r.status_code == 200, r.text
    await uploaded(http, worker_user, s["id"])


# ---- attaching files to checks ---------------------------------------------------------------
async def test_a_check_carries_its_files_and_its_entry_names_their_bytes(
        http, db, worker_user, supervisor):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    photo, report = jpeg(), pdf()
    a = await uploaded(http, worker_user, s["id"], photo)
    b = await uploaded(http, worker_user, s["id"], report)
    cid = str(uuid.uuid4())
    r = await check(http, worker_user, s["id"], s["current_step_id"], check_id=cid,
                    evidence_ids=[a["id"], b["id"]])
    assert r.status_code == 200, r.text
    [k] = r.json()["checks"]
    assert k["evidence"] == [{key: f[key] for key in ("id", "sha256", "content_type", "bytes",
                                                      "filename")} for f in (a, b)]
    entry = [e for e in await audit(http, supervisor, s["id"])
             if e["action"] == "check_submitted"][-1]
    assert entry["detail"]["evidence"] == [sha256(photo), sha256(report)]
    attached = {r["id"]: r for r in await rows(db, s["id"])}
    assert {str(i) for i in attached} == {a["id"], b["id"]}
    assert all(str(r["check_id"]) == cid and r["attached_at"] is not None
               for r in attached.values())
    got = await http.get(f"{SESSIONS}/{s['id']}", headers=supervisor.h)
    assert got.json()["checks"][0]["evidence"] == k["evidence"]  # as recorded
    # the same check again: the idempotent repeat, in any order; other files: 422
    again = await check(http, worker_user, s["id"], k["step_id"], check_id=cid,
                        evidence_ids=[b["id"], a["id"]])
    assert again.status_code == 200, again.text
    assert len(again.json()["checks"]) == 1
    other = await check(http, worker_user, s["id"], k["step_id"], check_id=cid,
                        evidence_ids=[a["id"]])
    assert other.status_code == 422, other.text


async def _refused_check(http: httpx.AsyncClient, db: Database, worker: User, s: dict,
                         step_id: str, **body: Any) -> dict[str, Any]:
    before = await rows(db, s["id"])
    r = await check(http, worker, s["id"], step_id, **body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    now = await http.get(f"{SESSIONS}/{s['id']}", headers=worker.h)
    assert len(now.json()["checks"]) == len(s["checks"])  # no check recorded
    assert await rows(db, s["id"]) == [{**r, "named_at": n["named_at"]} for r, n in zip(
        before, await rows(db, s["id"]), strict=True)]  # nothing attached
    return r.json()


async def test_files_a_check_may_not_name_are_422_and_record_nothing(
        http, db, worker_user, other_worker, supervisor):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    theirs = await start(http, other_worker, sop)
    their_file = await uploaded(http, other_worker, theirs["id"])
    mine = [await uploaded(http, worker_user, s["id"], jpeg()) for _ in range(11)]
    step = s["current_step_id"]
    body = await _refused_check(http, db, worker_user, s, step,
                                evidence_ids=[their_file["id"]])
    assert body["unknown_ids"] == [their_file["id"]]
    await _refused_check(http, db, worker_user, s, step, evidence_ids=[str(uuid.uuid4())])
    await _refused_check(http, db, worker_user, s, step,
                         evidence_ids=[mine[0]["id"], mine[0]["id"]])
    too_many = await _refused_check(http, db, worker_user, s, step,
                                    evidence_ids=[m["id"] for m in mine])
    assert too_many["errors"][0]["field"] == "body.evidence_ids"
    # a file already on another check
    r = await check(http, worker_user, s["id"], step, result="failed",
                    evidence_ids=[mine[0]["id"]])
    assert r.status_code == 200, r.text
    s = r.json()
    body = await _refused_check(http, db, worker_user, s, step,
                                evidence_ids=[mine[0]["id"], mine[1]["id"]])
    assert "already attached to another check" in body["detail"]
    entries = await audit(http, supervisor, s["id"])
    assert [e["outcome"] for e in entries if e["action"] == "check_submitted"][-1] == \
        "rejected"


async def test_each_step_s_evidence_rule_is_kept(http, db, worker_user, supervisor):
    sop = await confirmed(http, supervisor)
    steps = step_ids(sop)
    s = await start(http, worker_user, sop)
    r = await check(http, worker_user, s["id"], steps[0])  # optional: none needed
    assert r.status_code == 200, r.text
    s = r.json()
    body = await _refused_check(http, db, worker_user, s, steps[1])  # required
    assert body["errors"][0]["field"] == "evidence_ids"
    await _refused_check(http, db, worker_user, s, steps[1], result="failed")
    photo = await uploaded(http, worker_user, s["id"])
    r = await check(http, worker_user, s["id"], steps[1], evidence_ids=[photo["id"]])
    assert r.status_code == 200, r.text
    s = r.json()
    # a measurement, required on fail: a failed value needs a file, a passing one none
    await _refused_check(http, db, worker_user, s, steps[2], value=9.9)
    reading = await uploaded(http, worker_user, s["id"], png())
    r = await check(http, worker_user, s["id"], steps[2], value=9.9,
                    evidence_ids=[reading["id"]])
    assert r.status_code == 200, r.text
    r = await check(http, worker_user, s["id"], steps[2], value=0.2)
    assert r.status_code == 200, r.text
    s = r.json()
    spare = await uploaded(http, worker_user, s["id"], pdf())
    await _refused_check(http, db, worker_user, s, steps[3], evidence_ids=[spare["id"]])
    r = await check(http, worker_user, s["id"], steps[3])
    assert r.status_code == 200 and r.json()["status"] == "completed", r.text


async def test_an_sop_says_each_step_s_rule_and_older_steps_read_as_optional(
        http, supervisor):
    sop = await confirmed(http, supervisor)
    assert [s["check"]["evidence"] for t in sop["tasks"] for s in t["steps"]] == list(RULES)
    plain = await confirmed(http, supervisor, sop_body((1,), title="no rule"))
    assert plain["tasks"][0]["steps"][0]["check"]["evidence"] == "optional"
    r = await http.post(f"/api/v1/sops/{sop['id']}/revisions", headers=supervisor.h)
    assert r.status_code == 201, r.text
    assert [s["check"]["evidence"] for t in r.json()["tasks"] for s in t["steps"]] == \
        list(RULES)
    bad = rules_sop()
    bad["tasks"][0]["steps"][0]["check"]["evidence"] = "sometimes"
    r = await http.post("/api/v1/sops", json=bad, headers=supervisor.h)
    assert r.status_code == 422, r.text


# ---- reading files back ----------------------------------------------------------------------
async def test_a_file_is_read_back_by_who_may_read_its_session(
        http, worker_user, other_worker, supervisor, admin):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    photo, report = png(), pdf()
    a = await uploaded(http, worker_user, s["id"], photo)
    r = await upload(http, worker_user, s["id"], report, filename='Bericht "März".pdf',
                     content_type="application/pdf")
    b = r.json()
    for user in (worker_user, supervisor, admin):
        got = await http.get(f"/api/v1/evidence/{a['id']}", headers=user.h)
        assert got.status_code == 200, got.text
        assert got.content == photo
        assert got.headers["content-type"] == "image/png"
        assert got.headers["etag"] == f'"{a["sha256"]}"'
        assert got.headers["x-content-type-options"] == "nosniff"
        assert not got.headers["content-disposition"].startswith("attachment")
    doc = await http.get(f"/api/v1/evidence/{b['id']}", headers=supervisor.h)
    assert doc.status_code == 200 and doc.content == report
    assert doc.headers["content-type"] == "application/pdf"
    assert doc.headers["content-disposition"] == (
        "attachment; filename=\"Bericht _M_rz_.pdf\"; "
        "filename*=UTF-8''Bericht%20%22M%C3%A4rz%22.pdf")
    cached = await http.get(f"/api/v1/evidence/{a['id']}", headers={
        **worker_user.h, "If-None-Match": f'"{a["sha256"]}"'})
    assert cached.status_code == 304 and cached.content == b""
    for path in (f"/api/v1/evidence/{a['id']}", f"/api/v1/evidence/{uuid.uuid4()}",
                 "/api/v1/evidence/not-a-uuid"):
        r = await http.get(path, headers=other_worker.h)
        assert r.status_code == 404, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert photo not in r.content
    assert (await http.get(f"/api/v1/evidence/{a['id']}")).status_code == 401


async def test_uploads_and_a_check_of_one_session_at_once_each_answer(
        http, worker_user, supervisor):
    """Uploads, checks and reads of one session at once: each answers."""
    sop = await confirmed(http, supervisor, sop_body((3,), measurement_at=None))
    s = await start(http, worker_user, sop)
    results = await asyncio.gather(
        *(upload(http, worker_user, s["id"], jpeg(100_000)) for _ in range(4)),
        check(http, worker_user, s["id"], s["current_step_id"]))
    assert [r.status_code for r in results] == [201] * 4 + [200], [r.text for r in results]


@pytest.mark.skipif(os.environ.get("WORKSESSION_TEST_DATABASE") == "postgresql",
                    reason="the same on either database; one is enough")
def test_the_upload_and_read_are_in_the_openapi_document(server):
    doc = httpx.get(f"{server.base_url}/openapi.json").json()
    up = doc["paths"]["/api/v1/sessions/{session_id}/evidence"]["post"]
    assert {"201", "200", "404", "409", "413", "415"} <= set(up["responses"])
    assert "application/octet-stream" in up["requestBody"]["content"]
    read = doc["paths"]["/api/v1/evidence/{evidence_id}"]["get"]
    assert set(read["responses"]["200"]["content"]) == set(TAKEN)
    checks = doc["components"]["schemas"]["CheckIn"]["properties"]["evidence_ids"]
    assert checks["maxItems"] == 10


async def test_a_check_s_files_are_kept_by_field_name(db, http, worker_user, supervisor):
    sop = await confirmed(http, supervisor)
    s = await start(http, worker_user, sop)
    a = await uploaded(http, worker_user, s["id"])
    r = await check(http, worker_user, s["id"], s["current_step_id"], evidence_ids=[a["id"]])
    assert r.status_code == 200, r.text
    async with db.read() as conn:
        kept = (await conn.execute(sa.select(session_checks.c.evidence).where(
            session_checks.c.session_id == uuid.UUID(s["id"])))).scalar_one()
    assert [str(f.id) for f in kept] == [a["id"]]
