"""SOP catalog endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
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
from api.schemas import CheckSpecOut, Page, SopIn, SopOut, SopStatsOut, SpcBaselineIn, SpcOut
from application import sops as uc
from application import spc
from application.authz import Actor
from domain.sop import Sop, SopStatus

router = APIRouter(prefix="/api/v1/sops", tags=["SOPs"], route_class=PrecedenceRoute)


async def _writable(sop_id: str, actor: CurrentActor, ctx: Ctx) -> UUID:
    sid = parse_id(sop_id, "SOP")
    await uc.gate(ctx, actor, sid)
    return sid


Writable = Annotated[UUID, Depends(_writable)]


def sop_out(sop: Sop) -> dict[str, Any]:
    return {
        "id": sop.id, "family_id": sop.family_id, "version": sop.version,
        "status": sop.status.value, "title": sop.title, "description": sop.description,
        "created_at": sop.created_at, "updated_at": sop.updated_at,
        "confirmed_at": sop.confirmed_at,
        "tasks": [{"id": t.id, "position": t.position, "title": t.title, "steps": [
            {"id": s.id, "position": s.position, "title": s.title,
             "instructions": s.instructions, "check": CheckSpecOut.model_validate(s.check)}
            for s in t.steps]} for t in sop.tasks],
    }


@router.post("", status_code=201, response_model=SopOut, responses=problems(403))
async def create_sop(body: SopIn, actor: CurrentActor, ctx: Ctx, rid: RequestId,
                     _: Actor = require("sop.write")) -> dict[str, Any]:
    return sop_out(await uc.create_sop(ctx, actor, body.model_dump(), rid))


async def _sop_filter(request: Request, status: SopStatus | None = Query(None)
                     ) -> SopStatus | None:
    refuse_unknown_parameters(request, _sop_filter, "limit", "offset")
    return status


@router.get("", response_model=Page[SopOut], responses=problems())
async def list_sops(actor: CurrentActor, ctx: Ctx, paging: PageParams,
                    status: SopStatus | None = Depends(_sop_filter)) -> dict[str, Any]:
    items, total = await uc.list_sops(ctx, actor, status, paging.limit, paging.offset)
    return paging.page([sop_out(s) for s in items], total)


@router.get("/{sop_id}", response_model=SopOut, responses=problems(404))
async def get_sop(sop_id: str, actor: CurrentActor, ctx: Ctx) -> dict[str, Any]:
    return sop_out(await uc.get_sop(ctx, actor, parse_id(sop_id, "SOP")))


async def _stats_window(request: Request,
                        since: str | None = instant_query("sessions started at or after"),
                        until: str | None = instant_query("sessions started before"),
                        ) -> tuple[datetime | None, datetime | None]:
    refuse_unknown_parameters(request, _stats_window)
    return parse_instant(since, "since"), parse_instant(until, "until")


@router.get("/{sop_id}/stats", response_model=SopStatsOut, responses=problems(403, 404))
async def sop_stats(sop_id: str, actor: CurrentActor, ctx: Ctx,
                    window: tuple[datetime | None, datetime | None] = Depends(_stats_window),
                    ) -> dict[str, Any]:
    return await uc.sop_stats(ctx, actor, parse_id(sop_id, "SOP"), *window)


@router.put("/{sop_id}", response_model=SopOut, responses=problems(403, 404, 409))
async def update_sop(sop_id: Writable, body: SopIn, actor: CurrentActor, ctx: Ctx,
                     rid: RequestId) -> dict[str, Any]:
    return sop_out(await uc.update_sop(ctx, actor, sop_id, body.model_dump(), rid))


@router.post("/{sop_id}/confirm", response_model=SopOut, responses=problems(403, 404, 409))
async def confirm_sop(sop_id: Writable, actor: CurrentActor, ctx: Ctx,
                      rid: RequestId) -> dict[str, Any]:
    return sop_out(await uc.confirm_sop(ctx, actor, sop_id, rid))


@router.post("/{sop_id}/revisions", status_code=201, response_model=SopOut,
             responses=problems(403, 404, 409))
async def revise_sop(sop_id: Writable, actor: CurrentActor, ctx: Ctx,
                     rid: RequestId) -> dict[str, Any]:
    return sop_out(await uc.revise_sop(ctx, actor, sop_id, rid))


@router.delete("/{sop_id}", status_code=204, response_class=Response,
               responses=problems(400, 403, 404))
async def delete_sop(sop_id: Writable, actor: CurrentActor, ctx: Ctx,
                     rid: RequestId) -> Response:
    await uc.delete_sop(ctx, actor, sop_id, rid)
    return Response(status_code=204)


async def _spc_window(request: Request,
                      since: str | None = instant_query("values taken at or after"),
                      until: str | None = instant_query("values taken before"),
                      limit: int = Query(spc.DEFAULT_POINTS, ge=1, le=spc.MAX_POINTS,
                                         description="the window's last values shown"),
                      ) -> tuple[datetime | None, datetime | None, int]:
    refuse_unknown_parameters(request, _spc_window)
    return parse_instant(since, "since"), parse_instant(until, "until"), limit


@router.get("/{sop_id}/steps/{step_id}/spc", response_model=SpcOut, response_model_by_alias=True,
            responses=problems(403, 404))
async def spc_chart(sop_id: str, step_id: str, actor: CurrentActor, ctx: Ctx,
                    window: tuple[datetime | None, datetime | None, int] = Depends(_spc_window),
                    ) -> dict[str, Any]:
    return await spc.chart(ctx, actor, parse_id(sop_id, "SOP"), parse_id(step_id, "step"),
                           *window)


@router.post("/{sop_id}/steps/{step_id}/spc/baseline", response_model=SpcOut,
             response_model_by_alias=True, responses=problems(403, 404))
async def spc_baseline(sop_id: str, step_id: str, body: SpcBaselineIn, actor: CurrentActor,
                       ctx: Ctx, rid: RequestId,
                       _: Actor = require("session.read_all")) -> dict[str, Any]:
    return await spc.set_baseline(ctx, actor, parse_id(sop_id, "SOP"),
                                  parse_id(step_id, "step"), body.from_, body.to, rid)
