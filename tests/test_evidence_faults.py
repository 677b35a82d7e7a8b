"""An API process killed in the middle of a 20 MiB upload (SIGKILL: no clean-up of any kind)
leaves no partial file under a hash and no upload recorded; once the API is back, no scratch
file either, and the next upload of the same file is whole. On the stack of real subprocesses
of faults/stack.py (Temporal dev server, `worksession api`, `worksession worker`), with the
default limit (20 MiB) and the default directory store (DATA_DIR/evidence); SQLite, or
PostgreSQL with WORKSESSION_TEST_DATABASE=postgresql."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from faults.stack import Stack
from persistence.db import Database
from persistence.files import linkable
from persistence.tables import evidence
from tests.conftest import sop_body
from tests.evidence_files import jpeg

DATABASE = os.environ.get("WORKSESSION_TEST_DATABASE", "sqlite")
SIZE = 20 * 1024 * 1024 - 4096  # just under the default limit
CHUNK = 256 * 1024

pytestmark = pytest.mark.faults


def files_in(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


async def test_an_api_killed_mid_upload_leaves_no_partial_file_and_no_row() -> None:
    data = jpeg(SIZE)
    async with Stack(DATABASE, label="evidence-kill") as stack:
        store = stack.dir / "evidence"
        worker = {"Authorization": f"Bearer {stack.token('worker')}"}
        boss = {"Authorization": f"Bearer {stack.token('supervisor')}"}
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as http:
            r = await http.post("/api/v1/sops", json=sop_body((2,), measurement_at=None),
                                headers=boss)
            assert r.status_code == 201, r.text
            sop = r.json()["id"]
            assert (await http.post(f"/api/v1/sops/{sop}/confirm",
                                    headers=boss)).status_code == 200
            r = await http.post("/api/v1/sessions", json={"sop_id": sop}, headers=worker)
            assert r.status_code == 201, r.text
            session = r.json()["id"]
            url = f"/api/v1/sessions/{session}/evidence"
            halfway, killed = asyncio.Event(), asyncio.Event()

            async def body() -> AsyncIterator[bytes]:
                for i in range(0, len(data), CHUNK):
                    if i >= len(data) // 2 and not halfway.is_set():
                        halfway.set()
                        await killed.wait()
                    yield data[i:i + CHUNK]

            sending = asyncio.create_task(http.post(url, content=body(), headers=worker))
            await asyncio.wait_for(halfway.wait(), 60)
            await asyncio.sleep(1.0)  # the API has taken in what was sent
            receiving = files_in(store)
            assert stack.api is not None
            stack.api.kill(signal.SIGKILL)
            await stack.api.wait()
            killed.set()
            with pytest.raises(httpx.TransportError):
                await sending
        # nothing under a hash (a scratch file without a name, or a named one, is all there
        # was), and no upload recorded
        hashes = [f for f in files_in(store) if not f.startswith(".")]
        assert hashes == [], files_in(store)
        db = Database(stack.db_url)
        try:
            async with db.read() as conn:
                rows = (await conn.execute(sa.select(sa.func.count()).select_from(evidence))
                        ).scalar_one()
        finally:
            await db.dispose()
        assert rows == 0
        # where scratch files have names, one was being written when the API died
        assert all(f.startswith(".incoming/") for f in receiving), receiving
        assert receiving or linkable(store)

        await asyncio.sleep(5.5)  # a dead writer's scratch file, once it is stale
        await stack._start_api()  # the API sweeps its scratch space as it starts
        assert files_in(store) == [], files_in(store)
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=120) as http:
            r = await http.post(url, content=data, headers=worker)
            assert r.status_code == 201, r.text
            assert r.json()["bytes"] == len(data)
            assert r.json()["sha256"] == hashlib.sha256(data).hexdigest()
        assert files_in(store) == [r.json()["sha256"]]
        assert (store / r.json()["sha256"]).stat().st_size == len(data)
