"""Evidence files (CONTRACT.md, "Evidence files", v1.2): uploads to a session, reading them
back, and removing the uploads that no check took. Attaching files to a check is part of the
check (application/sessions.submit_check; the rules: CheckSubmission.with_files and
WorkSession.add_check; the write: SessionRepository.write_change).

An upload is decided in three steps, and a refusal at any of them leaves no row and no file
under a hash: the session must take files (read before a byte of the body is); the bytes
are received into the store's scratch space, typed from their first bytes and counted as
they come (415, 413); then, holding the bytes' hash, one transaction checks the session
again, publishes the file under its hash, and records the upload with its audit entry."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from application.authz import Actor
from application.context import Context
from application.ports import EvidenceStore, Store
from application.sessions import Access, _audited, _facts, gate
from domain.errors import NotFound, Unavailable
from domain.evidence import Evidence, Inspection
from domain.work_session import WorkSession

log = logging.getLogger("worksession.api")

CLEANUP_BATCH = 500  # hashes per round of the cleanup


def _files(ctx: Context) -> EvidenceStore:
    if ctx.files is None:
        raise Unavailable("this service keeps no evidence files (no evidence store)")
    return ctx.files


async def upload(ctx: Context, access: Access, chunks: AsyncIterator[bytes],
                 filename: str | None, request_id: str | None = None
                 ) -> tuple[Evidence, bool]:
    """The file `chunks` carry, as an upload to the session: (the upload, whether it is new).
    The same bytes uploaded again to the same session are that upload (recorded once)."""
    files = _files(ctx)
    sid, actor = access.session_id, access.actor
    facts = _facts(actor, "evidence_upload", request_id, filename=filename)

    async def decide() -> tuple[Evidence, bool]:
        await _taking_files(ctx, sid)  # before a byte is read
        inspection = Inspection(ctx.max_evidence_bytes)
        async with files.receive(_inspected(chunks, inspection)) as incoming:
            content_type = inspection.finish()
            kept = False
            try:
                async with ctx.uow() as uow:
                    await uow.evidence.hold_bytes(incoming.sha256)
                    seen = await uow.evidence.find(sid, incoming.sha256)
                    if seen is not None:
                        return seen, False
                    e = Evidence(id=uuid4(), sha256=incoming.sha256, content_type=content_type,
                                 bytes=incoming.bytes, filename=filename, session_id=sid,
                                 uploaded_at=ctx.clock(), uploaded_by=actor.id)
                    await incoming.keep()
                    kept = True
                    # it may have closed while the bytes came: asked again holding its row
                    # to the commit (not through the bucket's PUT), so a completion or an
                    # approval comes after this upload's entry, or this upload sees it
                    await _taking_files(ctx, sid, uow)
                    await uow.evidence.add(e)
                    await uow.sessions.record_entry(sid, replace(facts, detail=_detail(e)),
                                                    e.uploaded_at)
            except BaseException:
                if kept:  # published, but its record was not written: no file without it
                    await _forget_unrecorded(ctx.store, files, incoming.sha256)
                raise
        log.info("evidence uploaded: %s, %d bytes (%s)", e.sha256, e.bytes, e.content_type)
        return e, True

    return await _audited(ctx, sid, facts, decide)


async def _taking_files(ctx: Context, session_id: UUID, uow: Any = None) -> None:
    """The session takes files (in progress or paused): 409 otherwise, locked first."""
    if uow is None:
        async with ctx.uow(read_only=True) as read:
            stored = await read.sessions.load(session_id, with_checks=False)
    else:
        stored = await uow.sessions.load(session_id, with_checks=False, for_update=True)
    assert stored is not None  # `gate` let the request through: it is recorded
    session: WorkSession = stored.session
    session.ensure_takes_evidence()


async def _inspected(chunks: AsyncIterator[bytes], inspection: Inspection
                     ) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        inspection.feed(chunk)  # 413 past the limit, 415 once the first bytes say so
        yield chunk


def _detail(e: Evidence) -> dict[str, Any]:
    return {"evidence_id": str(e.id), "sha256": e.sha256, "content_type": e.content_type,
            "bytes": e.bytes, "filename": e.filename}


async def _forget_unrecorded(store: Store, files: EvidenceStore, sha256: str) -> None:
    """Bytes published for an upload whose record failed: removed unless a row names them."""
    try:
        async with store() as uow:
            await uow.evidence.hold_bytes(sha256)
            if not await uow.evidence.names_bytes(sha256):
                await files.delete(sha256)
    except Exception:
        log.warning("bytes %s published without their record, and not removed", sha256,
                    exc_info=True)


async def read(ctx: Context, actor: Actor, evidence_id: UUID
               ) -> tuple[Evidence, AsyncIterator[bytes]]:
    """An upload and its bytes: for whoever may read its session (404 to anyone else)."""
    files = _files(ctx)
    async with ctx.uow(read_only=True) as uow:
        e = await uow.evidence.get(evidence_id)
    if e is None:
        raise NotFound("evidence file not found")
    try:
        await gate(ctx, actor, e.session_id, "session.read")
    except NotFound:
        raise NotFound("evidence file not found") from None
    try:
        return e, await files.open(e.sha256)
    except FileNotFoundError:  # removed as unattached since it was looked up
        raise NotFound("evidence file not found") from None


async def remove_unattached(store: Store, files: EvidenceStore, older_than: timedelta,
                            now: datetime) -> int:
    """Forget the uploads no check took (nor named) within `older_than`, and their bytes
    unless another upload, of any session, still names them (an attached one, say): a file
    attached to a check is never removed. Returns how many uploads were forgotten."""
    before = now - older_than
    async with store(read_only=True) as uow:
        hashes = await uow.evidence.unattached_before(before, CLEANUP_BATCH)
    removed = 0
    for sha256 in hashes:
        async with store() as uow:
            await uow.evidence.hold_bytes(sha256)  # no upload of these bytes meanwhile
            n = await uow.evidence.remove_unattached(sha256, before)
            # Inside the transaction, while the hash is held. Should its commit then fail,
            # the forgotten uploads would stay recorded without bytes: never attached ones,
            # unnamed for a day, and the next round forgets them.
            if not await uow.evidence.names_bytes(sha256):
                await files.delete(sha256)
        removed += n
    await files.sweep()
    if removed:
        log.info("removed %d evidence uploads no check took", removed)
    return removed
