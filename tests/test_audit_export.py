"""Audit export: one session's chain as CSV through HTTP, and `worksession audit export` /
`audit verify --file` (a JSON document checked on a machine with no database)."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from api.routers.audit import spreadsheet_safe
from domain.audit_chain import entry_hash
from tests.conftest import audit_cli, check, pass_step, start


@pytest.fixture
async def finished(http: Any, worker_user: Any, confirmed_sop: dict[str, Any]) -> dict[str, Any]:
    """A completed session: a failed check, three passed ones (one with notes in several
    scripts and a comma), and a refused check on the closed session."""
    s = await start(http, worker_user, confirmed_sop)
    r = await check(http, worker_user, s["id"], s["current_step_id"], result="failed",
                    notes='Hebel klemmt, "rot" ✓ 電圧')
    assert r.status_code == 200, r.text
    for _ in range(3):
        s = await pass_step(http, worker_user, s)
    assert s["status"] == "completed"
    r = await check(http, worker_user, s["id"], s["checks"][0]["step_id"])
    assert r.status_code == 409
    return s


async def entries_as_json(http: Any, user: Any, session_id: str) -> list[dict[str, Any]]:
    r = await http.get(f"/api/v1/audit?session_id={session_id}&limit=100", headers=user.h)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def unescaped(cell: str) -> str:
    """The reader's side of spreadsheet_safe, as the OpenAPI description tells it."""
    return cell[1:] if cell.startswith("'") else cell


def csv_rows(text: str) -> list[dict[str, str]]:
    return [{k: unescaped(v) for k, v in row.items()}
            for row in csv.DictReader(io.StringIO(text))]


def rechecks(rows: list[dict[str, str]], expected: list[dict[str, Any]]) -> None:
    """Each row is its JSON entry, and the chain re-hashes from the (un-escaped) cells."""
    assert len(rows) == len(expected)
    prev = "0" * 64
    for row, entry in zip(rows, expected, strict=True):
        body = {k: (None if row[k] == "" else int(row[k]) if k == "seq"
                    else json.loads(row[k]) if k == "detail" else row[k])
                for k in row if k not in ("hash", "manifest")}
        assert body == {k: v for k, v in entry.items() if k != "hash"}
        assert row["prev_hash"] == prev and entry_hash(prev, body) == row["hash"]
        prev = row["hash"]


RUNS_AS_FORMULA = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list


@pytest.mark.parametrize("cell", ["", "plain", "-A1:B2", "=1+1", "+1", "@SUM(A1)", "\tx",
                                  "\rx", "'", "'=1+1", "''", "a=b", " =1", '{"a": 1}'])
def test_spreadsheet_safe_neutralises_a_formula_start_and_undoes_exactly(cell):
    safe = spreadsheet_safe(cell)
    assert not safe.startswith(RUNS_AS_FORMULA)
    assert safe == ("'" + cell if cell.startswith((*RUNS_AS_FORMULA, "'")) else cell)
    assert unescaped(safe) == cell  # unambiguous: a cell that began with `'` got one more


async def test_csv_is_the_sessions_whole_chain_and_rechecks_from_its_cells(
        http, supervisor, finished):
    r = await http.get(f"/api/v1/audit?session_id={finished['id']}&limit=2",
                       headers={**supervisor.h, "Accept": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == \
        f'attachment; filename="audit-session-{finished["id"]}.csv"'
    rows = csv_rows(r.text)
    expected = await entries_as_json(http, supervisor, finished["id"])
    assert len(rows) == len(expected) == 6  # the start, 4 checks (the last completes), a refusal
    rechecks(rows, expected)
    assert [row["action"] for row in rows][-1] == "check_submitted"
    assert rows[-1]["outcome"] == "rejected"


async def test_a_request_id_that_is_a_formula_is_neutralised_and_the_chain_still_rechecks(
        http, supervisor, worker_user, confirmed_sop):
    """`-A1:B2` is a valid request id (CONTRACT.md, "Request ids") and, to a spreadsheet, a
    formula; the request-id charset allows no other formula start."""
    r = await http.post("/api/v1/sessions", json={"sop_id": confirmed_sop["id"]},
                        headers={**worker_user.h, "X-Request-ID": "-A1:B2"})
    assert r.status_code == 201 and r.headers["x-request-id"] == "-A1:B2", r.text
    s = r.json()
    r = await http.post(f"/api/v1/sessions/{s['id']}/checks",
                        json={"step_id": s["current_step_id"], "result": "failed"},
                        headers={**worker_user.h, "X-Request-ID": "-2.5"})
    assert r.status_code == 200, r.text
    r = await http.get(f"/api/v1/audit?session_id={s['id']}",
                       headers={**supervisor.h, "Accept": "text/csv"})
    assert r.status_code == 200, r.text
    assert '"\'-A1:B2"' in r.text and '"\'-2.5"' in r.text, r.text
    raw = list(csv.reader(io.StringIO(r.text)))
    quoted = io.StringIO()
    csv.writer(quoted, quoting=csv.QUOTE_ALL).writerows(raw)
    assert quoted.getvalue() == r.text  # every cell quoted
    assert not [c for row in raw for c in row if c.startswith(RUNS_AS_FORMULA)]
    rows = csv_rows(r.text)
    assert [row["request_id"] for row in rows] == ["-A1:B2", "-2.5"]
    rechecks(rows, await entries_as_json(http, supervisor, s["id"]))


async def test_csv_is_asked_for_by_accept_and_refused_as_json_asks(http, supervisor,
                                                                   worker_user, finished):
    url = f"/api/v1/audit?session_id={finished['id']}"
    for accept in ("application/json", "*/*", "text/csv;q=0.5, application/json"):
        r = await http.get(url, headers={**supervisor.h, "Accept": accept})
        assert r.headers["content-type"].startswith("application/json"), accept
    r = await http.get(url, headers={**supervisor.h, "Accept": "text/csv, */*;q=0.1"})
    assert r.headers["content-type"].startswith("text/csv")
    r = await http.get("/api/v1/audit", headers={**supervisor.h, "Accept": "text/csv"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.session_id"
    r = await http.get(url, headers={**worker_user.h, "Accept": "text/csv"})
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    r = await http.get("/api/v1/audit", headers={**worker_user.h, "Accept": "text/csv"})
    assert r.status_code == 403  # 403 before 422


NO_DATABASE = "postgresql+asyncpg://nobody@127.0.0.1:1/none"  # verify --file needs none


async def test_export_then_verify_on_a_machine_without_the_database(
        db, http, supervisor, finished, tmp_path):
    out = tmp_path / "session.json"
    code, text = await audit_cli(db.url, "export", "--session", finished["id"],
                                 "--out", str(out))
    assert code == 0, text
    doc = json.loads(out.read_text("utf-8"))
    assert doc["session"]["id"] == finished["id"] and doc["session"]["status"] == "completed"
    def same(c: dict[str, Any]) -> dict[str, Any]:  # the API writes UTC as Z
        return {**c, "checked_at": datetime.fromisoformat(c["checked_at"])}

    assert [same(c) for c in doc["session"]["checks"]] == [same(c) for c in finished["checks"]]
    assert [t["step_id"] for t in doc["session"]["step_times"]] == \
        [t["step_id"] for t in finished["step_times"]]
    assert doc["audit"] == await entries_as_json(http, supervisor, finished["id"])
    assert doc["head"] == {"seq": 6, "hash": doc["audit"][-1]["hash"]}

    code, text = await audit_cli(NO_DATABASE, "verify", "--file", str(out))
    assert code == 0, text
    assert "session export intact: 6 entries verified, every check recorded once" in text

    def tampered(change: Any) -> Path:
        d = json.loads(out.read_text("utf-8"))
        change(d)
        path = tmp_path / f"tampered-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(d), "utf-8")
        return path

    def rewrite_value(d: dict[str, Any]) -> None:
        d["audit"][2]["detail"]["value"] = 0.01

    chain = f"session:{finished['id']}"
    for change, says in (
            (rewrite_value, f"{chain} seq 3 ("),
            (lambda d: d["audit"].pop(), "the session records 6 entries"),
            (lambda d: d["audit"].pop(1), f"{chain}: expected seq 2, found 3"),
            (lambda d: d["session"]["checks"].append(d["session"]["checks"][0]),
             "the session holds it 2 time(s), its chain records it 1 time(s)"),
            (lambda d: d["session"]["checks"].pop(0),
             "the session holds it 0 time(s), its chain records it 1 time(s)"),
            (lambda d: d.update(format="something else"), "not a session export"),
            (lambda d: d.update(audit=[1, 2]), "not in the export's shape")):
        code, text = await audit_cli(NO_DATABASE, "verify", "--file", str(tampered(change)))
        assert code == 1, (says, text)
        assert says in text and "session export BROKEN" in text, text


async def test_export_of_an_unknown_session_says_so(db, tmp_path):
    code, text = await audit_cli(db.url, "export", "--session",
                                 "00000000-0000-0000-0000-000000000000")
    assert code == 2 and "is not recorded" in text, text


async def test_the_export_names_each_file_and_verify_finds_a_missing_or_altered_one(
        db, http, supervisor, worker_user, confirmed_sop, evidence_dir, tmp_path):
    """`audit export` lists every upload with its metadata; `audit verify --file F
    --evidence DIR` checks every file the record names against DIR/<sha256>: the hash chain
    covers the files' hashes, so a file whose bytes changed, or is gone, is reported."""
    import shutil

    from tests.evidence_files import jpeg, pdf

    s = await start(http, worker_user, confirmed_sop)
    photo, report = jpeg(), pdf()
    ups = []
    for data in (photo, report):
        r = await http.post(f"/api/v1/sessions/{s['id']}/evidence", content=data,
                            headers=worker_user.h, params={"filename": "x"})
        assert r.status_code == 201, r.text
        ups.append(r.json())
    r = await check(http, worker_user, s["id"], s["current_step_id"], result="failed",
                    evidence_ids=[ups[0]["id"]])
    assert r.status_code == 200, r.text
    out = tmp_path / "session.json"
    code, text = await audit_cli(db.url, "export", "--session", s["id"], "--out", str(out))
    assert code == 0, text
    doc = json.loads(out.read_text("utf-8"))
    listed = {u["id"]: u for u in doc["evidence"]}
    assert set(listed) == {u["id"] for u in ups}
    assert listed[ups[0]["id"]]["check_id"] == r.json()["checks"][0]["id"]
    assert listed[ups[1]["id"]]["check_id"] is None
    assert {k: listed[ups[1]["id"]][k] for k in ups[1]} == ups[1]
    assert doc["session"]["checks"][0]["evidence"][0]["sha256"] == ups[0]["sha256"]

    code, text = await audit_cli(NO_DATABASE, "verify", "--file", str(out), "--evidence",
                                 str(evidence_dir))
    assert code == 0, text
    assert "2 evidence files intact" in text, text

    copy = tmp_path / "evidence"
    copy.mkdir()
    for u in ups:
        shutil.copy(evidence_dir / u["sha256"], copy / u["sha256"])
    altered = copy / ups[0]["sha256"]
    altered.write_bytes(altered.read_bytes()[:-1] + b"\x00")
    (copy / ups[1]["sha256"]).unlink()
    code, text = await audit_cli(NO_DATABASE, "verify", "--file", str(out), "--evidence",
                                 str(copy))
    assert code == 1, text
    assert f"evidence file {ups[0]['sha256']} (check {doc['session']['checks'][0]['id']}): " \
        "altered" in text, text
    assert f"evidence file {ups[1]['sha256']} (upload {ups[1]['id']}): missing" in text, text

    # an export whose file list was rewritten no longer matches its chain
    doc["session"]["checks"][0]["evidence"][0]["sha256"] = ups[1]["sha256"]
    doc["evidence"][0]["sha256"] = "0" * 64
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(doc), "utf-8")
    code, text = await audit_cli(NO_DATABASE, "verify", "--file", str(forged))
    assert code == 1, text
    assert "are not the ones its chain entry records" in text, text
    assert "is not the one its chain entry records" in text, text
    code, text = await audit_cli(NO_DATABASE, "verify", "--evidence", str(copy))
    assert code == 2 and "give --file too" in text, text

    # an upload left out of the export (its file with it) is named: the chain records it
    doc = json.loads(out.read_text("utf-8"))
    doc["evidence"] = [u for u in doc["evidence"] if u["id"] != ups[1]["id"]]
    forged.write_text(json.dumps(doc), "utf-8")
    code, text = await audit_cli(NO_DATABASE, "verify", "--file", str(forged))
    assert code == 1, text
    assert f"upload {ups[1]['id']}: its chain entry records it, the export leaves it out" \
        in text, text
    # and an export broken anywhere in its shape is reported, not a traceback
    for broken in ({"evidence": ["not an upload"]}, {"session": {**doc["session"],
                                                                 "checks": [7]}},
                   {"audit": [{**e, "hash": 1} for e in doc["audit"]]}):
        forged.write_text(json.dumps({**doc, **broken}), "utf-8")
        code, text = await audit_cli(NO_DATABASE, "verify", "--file", str(forged))
        assert code == 1 and "Traceback" not in text, (broken, text)


async def test_the_export_carries_the_sessions_nonconformances_and_verify_checks_them(
        db, http, supervisor, finished, tmp_path):
    """A quality record: the NC opened on the session, contained and closed with its
    signature, travels with the session, its chain and head checked like the session's."""
    r = await http.post("/api/v1/nonconformances", headers=supervisor.h, json={
        "session_id": finished["id"], "severity": "major", "description": "Burr on flange"})
    assert r.status_code == 201, r.text
    url = f"/api/v1/nonconformances/{r.json()['id']}"
    assert (await http.post(f"{url}/contain", headers=supervisor.h, json={
        "containment": "Lot 7 quarantined"})).status_code == 200
    r = await http.post(f"{url}/close", headers=supervisor.h, json={
        "disposition": "rework", "corrective_action": "Deburred", "statement": "seen myself"})
    assert r.status_code == 200, r.text
    nc = r.json()
    out = tmp_path / "session.json"
    code, text = await audit_cli(db.url, "export", "--session", finished["id"],
                                 "--out", str(out))
    assert code == 0, text
    doc = json.loads(out.read_text("utf-8"))
    [item] = doc["nonconformances"]
    assert item["nonconformance"]["id"] == nc["id"]
    assert item["nonconformance"]["status"] == "closed"
    assert item["nonconformance"]["signature"]["id"] == nc["signature"]["id"]
    assert "approved" in item["signatures"][0]["manifest"]
    assert "seen myself" in item["signatures"][0]["manifest"]
    chain = f"nc:{nc['id']}"
    r = await http.get("/api/v1/audit", headers=supervisor.h, params={"chain": chain})
    assert item["audit"] == r.json()["items"]
    assert item["head"] == {"seq": len(item["audit"]), "hash": item["audit"][-1]["hash"]}

    code, text = await audit_cli(NO_DATABASE, "verify", "--file", str(out))
    assert code == 0, text
    assert (f"session export intact: {6 + len(item['audit'])} entries verified, every check "
            "recorded once, 1 nonconformance(s) with their chains") in text

    def tampered(change: Any) -> Path:
        d = json.loads(out.read_text("utf-8"))
        change(d["nonconformances"][0])
        path = tmp_path / f"tampered-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(d), "utf-8")
        return path

    def rewrite_containment(i: dict[str, Any]) -> None:
        [e] = [e for e in i["audit"] if e["action"] == "nonconformance_contained"]
        e["detail"]["containment"] = "nothing needed"

    def another_session(i: dict[str, Any]) -> None:
        i["nonconformance"]["session_id"] = "00000000-0000-0000-0000-000000000000"

    def other_signer(i: dict[str, Any]) -> None:
        i["nonconformance"]["signature"]["signer_name"] = "Someone Else"

    for change, says in (
            (rewrite_containment, f"{chain} seq "),
            (lambda i: i["audit"].pop(), "the nonconformance records"),
            (another_session, "not this one"),
            (other_signer, "its signer_name 'Someone Else' is not the one"),
            (lambda i: i.update(audit="gone"), "not in the export's shape")):
        code, text = await audit_cli(NO_DATABASE, "verify", "--file", str(tampered(change)))
        assert code == 1, (says, text)
        assert says in text and "session export BROKEN" in text, text
