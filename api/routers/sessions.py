"""Work-session endpoints: thin. 404 and 403 are decided once, by `gate`, before the body is
read; the use case gets the decision (`Access`)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, Response

from api.deps import (
    Ctx,
    CurrentActor,
    PageParams,
    RequestId,
    instant_query,
    parse_id,
    parse_instant,
    problems,
    refuse_unknown_parameters,
    require,
)
from api.routing import PrecedenceRoute
from api.schemas import (
    ApproveIn,
    CancelIn,
    CheckIn,
    Page,
    ReopenIn,
    SessionOut,
    SessionSummary,
    SignatureIn,
    StartSessionIn,
)
from application import sessions as uc
from application.authz import Actor
from application.context import Context
from application.ports import StoredSession
from domain.signature import Signature
from domain.work_session import SessionFilter, SessionStatus

router = APIRouter(prefix="/api/v1/sessions", tags=["Sessions"], route_class=PrecedenceRoute)


def gate(permission: str) -> Any:
    async def dependency(session_id: str, actor: CurrentActor, ctx: Ctx) -> uc.Access:
        return await uc.gate(ctx, actor, parse_id(session_id, "session"), permission)
    return Depends(dependency)


def answer(ctx: Context, stored: StoredSession, status: int = 200) -> Response:
    """The session in the contract's shape, serialised once from its model (a returned
    Response skips FastAPI's second validation of it)."""
    out = SessionOut.of(stored.session, workflow_id=stored.workflow_id, run_id=stored.run_id,
                        now=ctx.clock(), worker_name=stored.worker_name)
    return Response(out.model_dump_json(), status, media_type="application/json")


def summary(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], "status": row["status"],
            "sop": {"id": row["sop_id"], "title": row["sop_title"],
                    "version": row["sop_version"]},
            "worker_id": row["worker_id"], "worker_name": row["worker_name"],
            "started_at": row["started_at"],
            "completed_at": row["completed_at"], "cancelled_at": row["cancelled_at"],
            "locked": row["locked"], "needs_attention": row["needs_attention"],
            "awaiting_verification": row["awaiting_verification"]}


@router.post("", status_code=201, response_model=SessionOut, responses=problems(403, 404, 409))
async def start_session(body: StartSessionIn, actor: CurrentActor, ctx: Ctx,
                        rid: RequestId, _: Actor = require("session.start")) -> Response:
    return answer(ctx, await uc.start_session(ctx, actor, body.sop_id, rid), 201)


@router.get("/current", response_model=SessionOut, responses=problems(404))
async def current_session(actor: CurrentActor, ctx: Ctx) -> Response:
    return answer(ctx, await uc.current_session(ctx, actor))


async def session_filter(
    request: Request,
    status: SessionStatus | None = Query(None),
    sop_id: UUID | None = Query(None, description="one SOP version"),
    sop_family_id: UUID | None = Query(None, description="every version of an SOP"),
    worker_id: UUID | None = Query(None, description="a worker's own list is theirs whatever "
                                   "this says: another worker's id selects nothing"),
    needs_attention: bool | None = Query(None),
    locked: bool | None = Query(None),
    awaiting_verification: bool | None = Query(None),
    started_after: str | None = instant_query("started at or after"),
    started_before: str | None = instant_query("started before"),
) -> SessionFilter:
    refuse_unknown_parameters(request, session_filter, "limit", "offset")
    return SessionFilter(
        status=status, sop_id=sop_id, sop_family_id=sop_family_id, worker_id=worker_id,
        needs_attention=needs_attention, locked=locked,
        awaiting_verification=awaiting_verification,
        started_after=parse_instant(started_after, "started_after"),
        started_before=parse_instant(started_before, "started_before"))


@router.get("", response_model=Page[SessionSummary], responses=problems())
async def list_sessions(actor: CurrentActor, ctx: Ctx, paging: PageParams,
                        f: SessionFilter = Depends(session_filter)) -> dict[str, Any]:
    rows, total = await uc.list_sessions(ctx, actor, f, paging.limit, paging.offset)
    return paging.page([summary(r) for r in rows], total)


@router.get("/{session_id}", response_model=SessionOut, responses=problems(404))
async def get_session(ctx: Ctx, access: uc.Access = gate("session.read")) -> Response:
    return answer(ctx, await uc.get_session(ctx, access))


@router.post("/{session_id}/checks", response_model=SessionOut,
             responses=problems(403, 404, 409))
async def submit_check(body: CheckIn, ctx: Ctx, rid: RequestId,
                       access: uc.Access = gate("session.work")) -> Response:
    return answer(ctx, await uc.submit_check(ctx, access, body.submission(), rid))


@router.post("/{session_id}/complete", response_model=SessionOut,
             responses=problems(403, 404, 409))
async def complete_session(ctx: Ctx, rid: RequestId,
                           access: uc.Access = gate("session.work")) -> Response:
    return answer(ctx, await uc.complete_session(ctx, access, rid))


@router.post("/{session_id}/pause", response_model=SessionOut,
             responses=problems(403, 404, 409))
async def pause_session(ctx: Ctx, rid: RequestId,
                        access: uc.Access = gate("session.work")) -> Response:
    return answer(ctx, await uc.pause_session(ctx, access, rid))


@router.post("/{session_id}/resume", response_model=SessionOut,
             responses=problems(403, 404, 409))
async def resume_session(ctx: Ctx, rid: RequestId,
                         access: uc.Access = gate("session.work")) -> Response:
    return answer(ctx, await uc.resume_session(ctx, access, rid))


@router.post("/{session_id}/cancel", response_model=SessionOut,
             responses=problems(403, 404, 409))
async def cancel_session(body: CancelIn, ctx: Ctx, rid: RequestId,
                         access: uc.Access = gate("session.work")) -> Response:
    return answer(ctx, await uc.cancel_session(ctx, access, body.reason, rid))


@router.post("/{session_id}/approve", response_model=SessionOut,
             responses=problems(403, 404, 409))
async def approve_session(ctx: Ctx, rid: RequestId, body: ApproveIn | None = None,
                          access: uc.Access = gate("session.override")) -> Response:
    """The approver's `approved` signature (see `POST .../signatures`), under the same
    re-authentication rule."""
    statement = body.statement if body is not None else None
    return answer(ctx, await uc.approve_session(ctx, access, rid, statement))


@router.post("/{session_id}/signatures", status_code=201, response_model=Signature,
             responses=problems(403, 404, 409))
async def sign_session(body: SignatureIn, ctx: Ctx, rid: RequestId,
                       access: uc.Access = gate("session.read")) -> Signature:
    """A signature: the token must be at most WORKSESSION_SIGNATURE_MAX_AGE seconds from
    its sign-in (401 `/problems/reauthentication-required` otherwise, with `max_age`)."""
    return await uc.sign(ctx, access, body.meaning, body.step_id, body.statement, rid)


@router.post("/{session_id}/reopen", response_model=SessionOut,
             responses=problems(403, 404, 409))
async def reopen_session(body: ReopenIn, ctx: Ctx, rid: RequestId,
                         access: uc.Access = gate("session.override")) -> Response:
    return answer(ctx, await uc.reopen_session(ctx, access, body.reason, body.step_id, rid))
