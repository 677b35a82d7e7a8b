"""The evidence store on S3-compatible object storage, against a real S3 server process the
test starts itself (moto's server mode, `moto_server`, from the test dependencies): no
in-process mock. The store alone, then the whole API on it (uploads, reads, refusals, the
cleanup), on the test database (WORKSESSION_TEST_DATABASE)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from temporalio.testing import WorkflowEnvironment

from application.evidence import remove_unattached
from faults.harness import free_port
from persistence.db import Database
from persistence.files import S3Store, evidence_store
from persistence.tables import evidence
from persistence.uow import SqlStore
from tests.conftest import User, make_confirmed_sop, sop_body
from tests.evidence_files import REFUSED, jpeg, pdf, sha256
from tests.live_server import LiveServer

BUCKET = "evidence"
PREFIX = "site-a/"
KEY_ID, SECRET = "evidence-writer", "s3-secret-" + "x" * 20


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`moto_server` on a free loopback port, as a process of its own."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                                 "127.0.0.1", "-p", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code < 500:
                    break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"moto_server did not start: {log.read_text()}"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def store(url: str, spool: Path, prefix: str = PREFIX) -> S3Store:
    s = evidence_store(f"s3://{BUCKET}/{prefix.rstrip('/')}", endpoint_url=url,
                       access_key_id=KEY_ID, secret_access_key=SECRET, spool_dir=spool)
    assert isinstance(s, S3Store)
    return s


@pytest.fixture
async def s3(s3_server: str, tmp_path: Path) -> AsyncIterator[S3Store]:
    s = store(s3_server, tmp_path / "spool", prefix=f"t-{uuid.uuid4().hex[:8]}/")
    client = await s.client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        await client.create_bucket(Bucket=BUCKET)
    yield s
    await s.close()


async def keys(s: S3Store) -> list[str]:
    client = await s.client()
    got = await client.list_objects_v2(Bucket=BUCKET, Prefix=s.prefix)
    return [o["Key"] for o in got.get("Contents", [])]


async def chunks(data: bytes, size: int = 256 * 1024, pause: float = 0.0
                 ) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        if pause:
            await asyncio.sleep(pause)
        yield data[i:i + size]


async def test_a_file_is_visible_under_its_hash_only_once_kept_whole(s3: S3Store,
                                                                     tmp_path: Path):
    data = jpeg(3 * 1024 * 1024)
    seen_while_arriving: list[list[str]] = []

    async def watched() -> AsyncIterator[bytes]:
        async for chunk in chunks(data):
            seen_while_arriving.append(await keys(s3))
            yield chunk

    async with s3.receive(watched()) as incoming:
        assert incoming.sha256 == sha256(data) and incoming.bytes == len(data)
        assert not await s3.exists(incoming.sha256)
        await incoming.keep()
        await incoming.keep()  # idempotent
    assert all(k == [] for k in seen_while_arriving)
    assert await keys(s3) == [f"{s3.prefix}{sha256(data)}"]
    assert b"".join([c async for c in await s3.open(sha256(data))]) == data
    assert list((tmp_path / "spool").rglob("*.part")) == []
    await s3.delete(sha256(data))
    assert not await s3.exists(sha256(data))
    with pytest.raises(FileNotFoundError):
        await s3.open(sha256(data))


async def test_an_upload_that_breaks_off_leaves_no_object_and_no_scratch_file(
        s3: S3Store, tmp_path: Path):
    async def broken() -> AsyncIterator[bytes]:
        yield jpeg(1024 * 1024)
        raise ConnectionResetError("the device lost its network")

    with pytest.raises(ConnectionResetError):
        async with s3.receive(broken()) as incoming:
            await incoming.keep()
    assert await keys(s3) == []
    assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file()] == []


# ---- the API on S3 ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_api(s3_server: str, temporal_env: WorkflowEnvironment) -> Iterator[LiveServer]:
    prefix = f"api-{uuid.uuid4().hex[:8]}"

    async def bucket() -> None:
        s = store(s3_server, Path("/tmp"), prefix)
        client = await s.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            await client.create_bucket(Bucket=BUCKET)
        await s.close()
    asyncio.run(bucket())
    server = LiveServer(temporal_env.client.service_client.config.target_host, "evidence-s3",
                        evidence_store=f"s3://{BUCKET}/{prefix}", s3_endpoint_url=s3_server,
                        s3_access_key_id=KEY_ID, s3_secret_access_key=SECRET,
                        max_evidence_bytes=2 * 1024 * 1024)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_uploads_reads_refusals_and_the_cleanup_on_s3(
        s3_api: LiveServer, s3_server: str, worker_user: User, supervisor: User,
        tmp_path: Path):
    prefix = s3_api.overrides["evidence_store"].split("/", 3)[3] + "/"
    objects = store(s3_server, tmp_path / "spool", prefix)
    db = Database(s3_api.database_url)
    try:
        async with httpx.AsyncClient(base_url=s3_api.base_url, timeout=60) as http:
            sop = await make_confirmed_sop(http, supervisor,
                                           sop_body((2,), measurement_at=None))
            r = await http.post("/api/v1/sessions", json={"sop_id": sop["id"]},
                                headers=worker_user.h)
            assert r.status_code == 201, r.text
            s = r.json()
            url = f"/api/v1/sessions/{s['id']}/evidence"
            photo, report = jpeg(1024 * 1024), pdf()
            up = await http.post(url, content=chunks(photo), headers=worker_user.h)
            assert up.status_code == 201, up.text
            assert await keys(objects) == [f"{prefix}{sha256(photo)}"]
            # refused: nothing reaches the bucket
            for data, _, content_type in REFUSED.values():
                r = await http.post(url, content=data,
                                    headers={**worker_user.h, "Content-Type": content_type})
                assert r.status_code == 415, r.text
            r = await http.post(url, content=chunks(jpeg(3 * 1024 * 1024)),
                                headers=worker_user.h)
            assert r.status_code == 413, r.text
            assert await keys(objects) == [f"{prefix}{sha256(photo)}"]
            got = await http.get(f"/api/v1/evidence/{up.json()['id']}", headers=supervisor.h)
            assert got.status_code == 200 and got.content == photo
            assert got.headers["etag"] == f'"{sha256(photo)}"'
            r = await http.post(f"/api/v1/sessions/{s['id']}/checks", headers=worker_user.h,
                                json={"step_id": s["current_step_id"], "result": "passed",
                                      "evidence_ids": [up.json()["id"]]})
            assert r.status_code == 200, r.text
            spare = await http.post(url, content=report, headers=worker_user.h)
            assert spare.status_code == 201, spare.text
            assert len(await keys(objects)) == 2
        async with db.write() as conn:  # both a day old: only the unattached one goes
            await conn.execute(sa.update(evidence).values(
                uploaded_at=datetime.now(UTC) - timedelta(hours=25)))
        removed = await remove_unattached(SqlStore(db), objects, timedelta(hours=24),
                                          datetime.now(UTC))
        assert removed == 1
        assert await keys(objects) == [f"{prefix}{sha256(photo)}"]
    finally:
        await objects.close()
        await db.dispose()


def test_the_settings_name_an_s3_store_with_its_endpoint_and_credentials(tmp_path: Path):
    from persistence.files import for_settings
    from worksession.settings import Settings

    s = for_settings(Settings(evidence_store="s3://bucket/a/b", s3_endpoint_url="http://x:9000",
                              s3_access_key_id=KEY_ID, s3_secret_access_key=SECRET,
                              data_dir=tmp_path))
    assert isinstance(s, S3Store)
    assert (s.bucket, s.prefix, s.key("a" * 64)) == ("bucket", "a/b/", "a/b/" + "a" * 64)
    assert s._options["endpoint_url"] == "http://x:9000"
    assert s._options["aws_secret_access_key"] == SECRET
    with pytest.raises(SystemExit, match="names no bucket"):
        for_settings(Settings(evidence_store="s3://", data_dir=tmp_path))
    directory = for_settings(Settings(data_dir=tmp_path))
    assert repr(directory) == f"DirectoryStore({str((tmp_path / 'evidence').resolve())!r})"
