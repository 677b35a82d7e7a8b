"""The removal of uploads that no check took (CONTRACT.md, "Evidence files": "an upload not
attached to any check within 24 h may be removed"; "a file attached to a check is never
deleted"), run as the worker runs it: its Temporal schedule, triggered, on the test database
and the app's evidence directory."""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orchestration.schedules import ensure_evidence_cleanup
from persistence.files import DirectoryStore, sweep_spool
from persistence.tables import evidence
from tests.conftest import User, eventually, make_confirmed_sop, sop_body, start
from tests.evidence_files import jpeg, pdf, png
from worker import build_worker


async def upload(http: Any, user: User, session_id: str, data: bytes) -> dict[str, Any]:
    r = await http.post(f"/api/v1/sessions/{session_id}/evidence", content=data,
                        headers=user.h)
    assert r.status_code == 201, r.text
    return r.json()


async def backdate(db: Any, evidence_id: str, hours: float, named_hours: float | None = None
                   ) -> None:
    now = datetime.now(UTC)
    values: dict[str, Any] = {"uploaded_at": now - timedelta(hours=hours)}
    if named_hours is not None:
        values["named_at"] = now - timedelta(hours=named_hours)
    async with db.write() as conn:
        await conn.execute(sa.update(evidence).where(evidence.c.id == uuid.UUID(evidence_id))
                           .values(**values))


async def ids(db: Any) -> set[str]:
    async with db.read() as conn:
        return {str(i) for i in (await conn.execute(sa.select(evidence.c.id))).scalars()}


async def test_the_hourly_cleanup_forgets_unattached_uploads_and_keeps_attached_bytes(
        http, client, db, evidence_dir: Path, supervisor, worker_user, other_worker):
    sop = await make_confirmed_sop(http, supervisor, sop_body((3,), measurement_at=None))
    a = await start(http, worker_user, sop)
    b = await start(http, other_worker, sop)
    forgotten, attached, shared = jpeg(), png(), pdf()
    old = await upload(http, worker_user, a["id"], forgotten)
    kept = await upload(http, worker_user, a["id"], attached)
    r = await http.post(f"/api/v1/sessions/{a['id']}/checks", headers=worker_user.h, json={
        "step_id": a["current_step_id"], "result": "passed", "evidence_ids": [kept["id"]]})
    assert r.status_code == 200, r.text
    # the same bytes as the attached file, uploaded to another session and never attached
    theirs = await upload(http, other_worker, b["id"], attached)
    recent = await upload(http, worker_user, a["id"], jpeg())
    named = await upload(http, worker_user, a["id"], jpeg())
    alone = await upload(http, other_worker, b["id"], shared)
    for e in (old, kept, theirs, alone):
        await backdate(db, e["id"], hours=25)
    await backdate(db, recent["id"], hours=23)
    await backdate(db, named["id"], hours=30, named_hours=2)  # a check named it lately
    before = await ids(db)

    queue = f"cleanup-{uuid.uuid4()}"
    async with build_worker(client, db, queue, evidence=DirectoryStore(evidence_dir)):
        schedule_id = await ensure_evidence_cleanup(client, queue, timedelta(hours=24))
        assert await ensure_evidence_cleanup(client, queue, timedelta(hours=24)) == \
            schedule_id  # made once, brought up to date after
        handle = client.get_schedule_handle(schedule_id)
        desc = await handle.describe()
        assert desc.schedule.spec.intervals[0].every == timedelta(hours=1)
        await handle.trigger()

        async def ran() -> Any:
            actions = (await handle.describe()).info.recent_actions
            return actions[-1].action.workflow_id if actions else None
        workflow_id = await eventually(ran)
        removed = await client.get_workflow_handle(workflow_id).result()
        await handle.delete()

    assert removed == 3
    assert before - await ids(db) == {old["id"], theirs["id"], alone["id"]}
    assert not (evidence_dir / old["sha256"]).exists()
    assert not (evidence_dir / alone["sha256"]).exists()
    # attached bytes stay, also when an unattached upload of another session shared them
    assert (evidence_dir / kept["sha256"]).read_bytes() == attached
    for e in (recent, named):
        assert (evidence_dir / e["sha256"]).exists()
    got = await http.get(f"/api/v1/evidence/{kept['id']}", headers=supervisor.h)
    assert got.status_code == 200 and got.content == attached
    gone = await http.get(f"/api/v1/evidence/{old['id']}", headers=supervisor.h)
    assert gone.status_code == 404
    # a forgotten upload can no longer be named by a check
    r = await http.post(f"/api/v1/sessions/{a['id']}/checks", headers=worker_user.h, json={
        "step_id": r.json()["current_step_id"], "result": "passed",
        "evidence_ids": [old["id"]]})
    assert r.status_code == 422, r.text


def test_the_sweep_removes_scratch_files_whose_writer_is_gone(tmp_path: Path):
    incoming = tmp_path / ".incoming"
    incoming.mkdir()
    dead, alive, fresh = (incoming / f"{n}.part" for n in ("dead", "alive", "fresh"))
    for path in (dead, alive, fresh):
        path.write_bytes(b"half a photo")
    an_hour_ago = time.time() - 3600
    for path in (dead, alive):
        os.utime(path, (an_hour_ago, an_hour_ago))
    with open(alive, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # its writer, still at work
        assert sweep_spool(tmp_path) == 1
    assert not dead.exists() and alive.exists() and fresh.exists()


async def test_a_killed_writer_s_scratch_file_is_never_under_a_hash(tmp_path: Path):
    """The store's own guarantee: a failing stream leaves nothing under a hash, nothing in
    its scratch space either."""
    store = DirectoryStore(tmp_path)

    async def broken() -> Any:
        yield jpeg()
        raise ConnectionResetError("the client went away")

    with pytest.raises(ConnectionResetError):
        async with store.receive(broken()) as incoming:
            await incoming.keep()
    await asyncio.sleep(0)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
