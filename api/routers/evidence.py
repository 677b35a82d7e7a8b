"""Evidence files: uploading one to a session (its body is the file, streamed), and reading
one back. Attaching files to a check is the check's `evidence_ids`."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.deps import Ctx, CurrentActor, RequestId, parse_id, problems
from api.routers.sessions import gate
from api.routing import PrecedenceRoute
from api.schemas import NO_NUL, EvidenceOut
from api.uploads import UploadRoute
from application import evidence as uc
from application import sessions
from domain.evidence import TYPES, is_image

uploads = APIRouter(prefix="/api/v1/sessions", tags=["Evidence"], route_class=UploadRoute)
files = APIRouter(prefix="/api/v1/evidence", tags=["Evidence"], route_class=PrecedenceRoute)

BINARY = {"schema": {"type": "string", "format": "binary"}}
Filename = Annotated[str | None, Query(max_length=255, pattern=NO_NUL,
                                       description="the file's name, as the client knows it")]


@uploads.post(
    "/{session_id}/evidence", status_code=201, response_model=EvidenceOut,
    responses={200: {"model": EvidenceOut, "description": "the same bytes were uploaded to "
                     "this session before: that upload"}, **problems(403, 404, 408, 409, 413,
                                                                     415)},
    openapi_extra={"requestBody": {"required": True, "description": (
        "The file itself: JPEG, PNG, WebP, HEIC or PDF, as its first bytes say (the "
        "Content-Type sent is not looked at), at most WORKSESSION_MAX_EVIDENCE_BYTES "
        "(default 20 MiB), with or without Content-Length."),
        "content": {"application/octet-stream": BINARY}}})
async def upload_evidence(request: Request, ctx: Ctx, rid: RequestId,
                          filename: Filename = None,
                          access: sessions.Access = gate("session.work")) -> Response:
    """Only the session's worker, while the session is in progress or paused. The file is
    stored under its sha256 before the answer."""
    e, new = await uc.upload(ctx, access, request.state.body.chunks(), filename, rid)
    return Response(EvidenceOut.of(e).model_dump_json(), 201 if new else 200,
                    media_type="application/json",
                    headers={"Location": f"/api/v1/evidence/{e.id}"})


@files.get("/{evidence_id}", response_class=Response,
           responses={200: {"description": "the file's bytes, as uploaded",
                            "content": {t: BINARY for t in TYPES}}, 304: {
                                "description": "not modified (If-None-Match: its ETag)"},
                      **problems(404)})
async def read_evidence(evidence_id: str, request: Request, actor: CurrentActor,
                        ctx: Ctx) -> Response:
    """Who may read the session may read its files (404 to anyone else). `ETag` is the
    file's sha256; anything but an image comes as an attachment."""
    e, stream = await uc.read(ctx, actor, parse_id(evidence_id, "evidence file"))
    headers = {"ETag": f'"{e.sha256}"', "X-Content-Type-Options": "nosniff",
               "Cache-Control": "private, no-cache",
               "Content-Security-Policy": "default-src 'none'; sandbox",
               "Content-Disposition": disposition(
                   "inline" if is_image(e.content_type) else "attachment",
                   e.filename or e.sha256[:16])}
    if e.sha256 in request.headers.get("if-none-match", ""):
        await stream.aclose()  # type: ignore[attr-defined]
        return Response(status_code=304, headers=headers)
    return StreamingResponse(stream, media_type=e.content_type,
                             headers={**headers, "Content-Length": str(e.bytes)})


def disposition(kind: str, filename: str) -> str:
    """RFC 6266: an ASCII name for every client, the exact one (RFC 8187) for those that
    read it."""
    plain = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in filename)
    return f"{kind}; filename=\"{plain}\"; filename*=UTF-8''{quote(filename, safe='')}"
