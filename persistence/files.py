"""The evidence store (application/ports.EvidenceStore): files' bytes under their sha256, in
a directory or in S3-compatible object storage. Either way a file is received whole into
scratch space that has no name anyone reads (Linux: an O_TMPFILE file, which vanishes with
the process that wrote it), hashed on its way in, and becomes visible under its hash at once
when kept: a hard link in the directory, one PUT of the object. No half-written file is ever
visible under a hash, and a process killed in the middle of an upload leaves nothing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from worksession.settings import Settings

SHA256 = re.compile(r"[0-9a-f]{64}")
BUFFER = 1024 * 1024  # written (and hashed) a megabyte at a time, off the event loop
READ_CHUNK = 256 * 1024
STALE_SPOOL_SECONDS = 5  # a named spool file this old and unlocked: its writer was killed


def _checked(sha256: str) -> str:
    if not SHA256.fullmatch(sha256):
        raise ValueError(f"not a sha256: {sha256!r}")
    return sha256


class Spool:
    """Scratch space for one incoming file in `directory`. Where the filesystem can give an
    O_TMPFILE file a name later (`linkable`), the file has none until kept: a process killed
    while writing it leaves nothing. Elsewhere it is `.incoming/<uuid>.part`, held with an
    exclusive lock while its writer lives, removed when done; one whose writer was killed is
    removed by `sweep_spool` (the API's start, the hourly cleanup)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path: Path | None = None  # set when it has a name
        self.file: BinaryIO
        self.digest = hashlib.sha256()
        self.size = 0
        self._pending: list[bytes] = []
        self._pending_size = 0

    def _open(self) -> None:
        if linkable(self.directory):
            fd = os.open(self.directory, os.O_TMPFILE | os.O_WRONLY, 0o640)
            self.file = os.fdopen(fd, "wb", buffering=0)
            return
        incoming = self.directory / INCOMING
        incoming.mkdir(exist_ok=True)
        self.path = incoming / f"{uuid.uuid4().hex}.part"
        self.file = open(self.path, "xb", buffering=0)  # noqa: SIM115 (closed in close())
        fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)  # released if this process dies

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= BUFFER:
            await self._flush()

    async def _flush(self) -> None:
        chunks, self._pending, self._pending_size = self._pending, [], 0
        if chunks:
            await asyncio.to_thread(self._hash_and_write, chunks)

    def _hash_and_write(self, chunks: list[bytes]) -> None:
        # The chunks as they came (no copy into a buffer: every megabyte copied is fresh
        # memory, and its page faults cost more than the write), hashed off the event loop.
        for chunk in chunks:
            self.digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[self.file.write(view):]

    async def finish(self) -> None:
        await self._flush()
        await asyncio.to_thread(os.fsync, self.file.fileno())

    def link(self, target: Path) -> bool:
        """Give the spooled file the name `target` (a hard link: atomic, and never replacing
        what is there). False when `target` exists already."""
        try:
            os.link(self._source, target, follow_symlinks=True)
        except FileExistsError:
            return False
        return True

    @property
    def _source(self) -> str:
        return str(self.path) if self.path else f"/proc/self/fd/{self.file.fileno()}"

    def reopen(self) -> BinaryIO:
        """The spooled bytes, to read from the start."""
        return open(self._source, "rb")  # noqa: SIM115 (the caller closes it)

    def close(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # before the lock goes, so no sweep sees it unlocked
        with contextlib.suppress(OSError):
            self.file.close()

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()


INCOMING = ".incoming"
_LINKABLE: dict[Path, bool] = {}


def linkable(directory: Path) -> bool:
    """Whether an O_TMPFILE file in `directory` can be linked into it (Linux, most local
    filesystems, and a /proc that allows it; not every sandbox does). Asked once."""
    if directory not in _LINKABLE:
        ok = False
        flag = getattr(os, "O_TMPFILE", 0)
        if flag:
            probe = directory / f".probe-{uuid.uuid4().hex}"
            try:
                fd = os.open(directory, flag | os.O_WRONLY, 0o640)
                try:
                    os.link(f"/proc/self/fd/{fd}", probe, follow_symlinks=True)
                    probe.unlink()
                    ok = True
                finally:
                    os.close(fd)
            except OSError:
                pass
        _LINKABLE[directory] = ok
    return _LINKABLE[directory]


@asynccontextmanager
async def spooled(directory: Path, chunks: AsyncIterator[bytes]) -> AsyncIterator[Spool]:
    """Receive `chunks` whole into a spool in `directory`; it is gone when the block ends."""
    spool = Spool(directory)
    await asyncio.to_thread(spool._open)
    try:
        async for chunk in chunks:
            await spool.write(chunk)
        await spool.finish()
        yield spool
    finally:
        await asyncio.to_thread(spool.close)


def sweep_spool(directory: Path, older_than: float = STALE_SPOOL_SECONDS) -> int:
    """Remove the named spool files whose writer is gone (their lock is free): a process
    killed in the middle of an upload. Only those older than `older_than` seconds, so that
    one just made, not yet locked, is left alone."""
    removed = 0
    for path in (directory / INCOMING).glob("*.part"):
        try:
            if time.time() - path.stat().st_mtime < older_than:
                continue
            with open(path, "rb") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is alive
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- a directory ---------------------------------------------------------------------------
class _KeptInDirectory:
    def __init__(self, spool: Spool, root: Path) -> None:
        self.spool, self.root = spool, root
        self.sha256, self.bytes = spool.sha256, spool.size

    async def keep(self) -> None:
        def link() -> None:
            if self.spool.link(self.root / self.sha256):
                _fsync_directory(self.root)  # the new name survives a power cut
        await asyncio.to_thread(link)


class DirectoryStore:
    """Files as `<root>/<sha256>`, flat: the directory `worksession audit verify --evidence`
    reads. Scratch files are made in `root` itself (one filesystem: the link is a rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.root)!r})"

    @asynccontextmanager
    async def receive(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[_KeptInDirectory]:
        async with spooled(self.root, chunks) as spool:
            yield _KeptInDirectory(spool, self.root)

    async def open(self, sha256: str) -> AsyncIterator[bytes]:
        f = await asyncio.to_thread(open, self.root / _checked(sha256), "rb")
        return _read(f)

    async def exists(self, sha256: str) -> bool:
        return await asyncio.to_thread((self.root / _checked(sha256)).is_file)

    async def delete(self, sha256: str) -> None:
        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                (self.root / _checked(sha256)).unlink()
        await asyncio.to_thread(remove)

    async def sweep(self) -> int:
        return await asyncio.to_thread(sweep_spool, self.root)

    async def close(self) -> None:
        pass


async def _read(f: BinaryIO) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(f.read, READ_CHUNK):
            yield chunk
    finally:
        f.close()


# ---- S3-compatible object storage ----------------------------------------------------------
class _KeptInBucket:
    def __init__(self, spool: Spool, store: S3Store) -> None:
        self.spool, self.store = spool, store
        self.sha256, self.bytes = spool.sha256, spool.size

    async def keep(self) -> None:
        if await self.store.exists(self.sha256):
            return
        # One PUT: S3 shows an object only once all of it is stored; S3 and MinIO check it
        # against the hash we computed (a damaged transfer is refused, not stored).
        client = await self.store.client()
        f = await asyncio.to_thread(self.spool.reopen)
        with f:
            await client.put_object(
                Bucket=self.store.bucket, Key=self.store.key(self.sha256), Body=f,
                ContentLength=self.bytes, ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(self.spool.digest.digest()).decode())


class S3Store:
    """Objects `<prefix><sha256>` in `bucket` (aiobotocore: botocore's requests on aiohttp,
    on the service's event loop). Incoming files are spooled to `spool_dir` on local disk
    first: the object's name is its hash, known only at the end, and a refused upload (type,
    size, session) never reaches the bucket."""

    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None,
                 region: str | None, access_key_id: str | None,
                 secret_access_key: str | None, spool_dir: Path,
                 timeout: float = 30.0) -> None:
        try:
            from aiobotocore.session import get_session
        except ImportError:
            raise SystemExit("an s3:// evidence store needs aiobotocore: install "
                             "worksession[s3]") from None
        self.bucket, self.prefix = bucket, prefix
        self.spool_dir = spool_dir
        spool_dir.mkdir(parents=True, exist_ok=True)
        self._session = get_session()
        self._options: dict[str, Any] = {
            "endpoint_url": endpoint_url, "region_name": region or "us-east-1",
            "aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key}
        self._timeout = timeout
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    def key(self, sha256: str) -> str:
        return f"{self.prefix}{_checked(sha256)}"

    async def client(self) -> Any:
        async with self._lock:
            if self._client is None:
                from aiobotocore.config import AioConfig

                stack = AsyncExitStack()
                self._client = await stack.enter_async_context(self._session.create_client(
                    "s3", config=AioConfig(connect_timeout=5, read_timeout=self._timeout,
                                           retries={"max_attempts": 3, "mode": "standard"},
                                           s3={"addressing_style": "path"}),
                    **self._options))
                self._stack = stack
        return self._client

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = self._client = None

    @asynccontextmanager
    async def receive(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[_KeptInBucket]:
        async with spooled(self.spool_dir, chunks) as spool:
            yield _KeptInBucket(spool, self)

    async def open(self, sha256: str) -> AsyncIterator[bytes]:
        client = await self.client()
        try:
            got = await client.get_object(Bucket=self.bucket, Key=self.key(sha256))
        except client.exceptions.NoSuchKey:
            raise FileNotFoundError(sha256) from None
        return _read_body(got["Body"])

    async def exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        client = await self.client()
        try:
            await client.head_object(Bucket=self.bucket, Key=self.key(sha256))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def delete(self, sha256: str) -> None:
        client = await self.client()
        await client.delete_object(Bucket=self.bucket, Key=self.key(sha256))

    async def sweep(self) -> int:
        return await asyncio.to_thread(sweep_spool, self.spool_dir)


async def _read_body(body: Any) -> AsyncIterator[bytes]:
    async with body:
        while chunk := await body.read(READ_CHUNK):
            yield chunk


def evidence_store(location: str, *, endpoint_url: str | None = None,
                   region: str | None = None, access_key_id: str | None = None,
                   secret_access_key: str | None = None, spool_dir: Path,
                   timeout: float = 30.0) -> DirectoryStore | S3Store:
    """`s3://bucket/prefix` (object storage) or a directory path."""
    if location.startswith("s3://"):
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        if not bucket:
            raise SystemExit(f"WORKSESSION_EVIDENCE_STORE {location!r} names no bucket")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return S3Store(bucket, prefix, endpoint_url=endpoint_url, region=region,
                       access_key_id=access_key_id, secret_access_key=secret_access_key,
                       spool_dir=spool_dir, timeout=timeout)
    return DirectoryStore(Path(location))


def for_settings(settings: Settings) -> DirectoryStore | S3Store:
    """The store the settings name (the API's and the worker's, which must be the same)."""
    def secret(value: Any) -> str | None:
        return None if value is None else value.get_secret_value()

    return evidence_store(
        settings.evidence_location, endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region, access_key_id=secret(settings.s3_access_key_id),
        secret_access_key=secret(settings.s3_secret_access_key),
        spool_dir=(settings.data_dir / "spool").resolve(),
        timeout=settings.request_timeout_seconds)
