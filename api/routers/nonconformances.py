"""Nonconformance endpoints (CONTRACT.md, "Nonconformances"): thin. 404 and 403 are decided
once, by `gate`, before the body is read."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request

from api.deps import (
    Ctx,
    CurrentActor,
    PageParams,
    RequestId,
    parse_id,
    problems,
    refuse_unknown_parameters,
    require,
)
from api.routing import PrecedenceRoute
from api.schemas import CloseIn, ContainIn, NcOpenIn, NonconformanceOut, Page
from application import nonconformances as uc
from application.authz import Actor
from domain.nonconformance import NcFilter, NcStatus

router = APIRouter(prefix="/api/v1/nonconformances", tags=["Nonconformances"],
                   route_class=PrecedenceRoute)


def gate(permission: str) -> Any:
    async def dependency(nc_id: str, actor: CurrentActor, ctx: Ctx) -> uc.NcAccess:
        return await uc.gate(ctx, actor, parse_id(nc_id, "nonconformance"), permission)
    return Depends(dependency)


async def nc_filter(request: Request, status: NcStatus | None = Query(None),
                    session_id: UUID | None = Query(None), sop_id: UUID | None = Query(None),
                    overdue: bool | None = Query(None)) -> NcFilter:
    refuse_unknown_parameters(request, nc_filter, "limit", "offset")
    return NcFilter(status=status, session_id=session_id, sop_id=sop_id, overdue=overdue)


@router.get("", response_model=Page[NonconformanceOut], responses=problems(403))
async def list_nonconformances(actor: CurrentActor, ctx: Ctx, paging: PageParams,
                               f: NcFilter = Depends(nc_filter)) -> dict[str, Any]:
    """Newest first. A worker's list holds the NCs of their own sessions only."""
    items, total = await uc.list_page(ctx, actor, f, paging.limit, paging.offset)
    return paging.page([NonconformanceOut.of(nc) for nc in items], total)


@router.post("", status_code=201, response_model=NonconformanceOut,
             responses=problems(403, 404))
async def open_nonconformance(body: NcOpenIn, ctx: Ctx, rid: RequestId,
                              actor: Actor = require("nc.manage")) -> NonconformanceOut:
    return NonconformanceOut.of(await uc.open_by_hand(
        ctx, actor, body.session_id, body.step_id, body.severity, body.description, rid))


@router.get("/{nc_id}", response_model=NonconformanceOut, responses=problems(404))
async def get_nonconformance(ctx: Ctx, access: uc.NcAccess = gate("nc.read")
                             ) -> NonconformanceOut:
    return NonconformanceOut.of(await uc.get(ctx, access))


@router.post("/{nc_id}/contain", response_model=NonconformanceOut,
             responses=problems(403, 404, 409))
async def contain(body: ContainIn, ctx: Ctx, rid: RequestId,
                  access: uc.NcAccess = gate("nc.manage")) -> NonconformanceOut:
    """open → contained; a session the NC holds is released."""
    return NonconformanceOut.of(await uc.contain(ctx, access, body.containment, rid))


@router.post("/{nc_id}/close", response_model=NonconformanceOut,
             responses=problems(403, 404, 409))
async def close(body: CloseIn, ctx: Ctx, rid: RequestId,
                access: uc.NcAccess = gate("nc.manage")) -> NonconformanceOut:
    """contained → closed: the closer's `approved` signature. The token must be at most
    WORKSESSION_SIGNATURE_MAX_AGE seconds from its sign-in (401
    `/problems/reauthentication-required` otherwise, with `max_age`)."""
    return NonconformanceOut.of(await uc.close(ctx, access, body.disposition,
                                               body.corrective_action, body.statement, rid))
