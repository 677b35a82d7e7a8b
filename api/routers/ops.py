"""Admin-only operations endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from api.deps import Ctx, CurrentActor, no_parameters, parse_id, problems, require
from api.routing import PrecedenceRoute
from application import ops as uc
from application.authz import Actor

router = APIRouter(prefix="/api/v1/ops", tags=["Operations"], route_class=PrecedenceRoute)


@router.get("/stuck", responses=problems(403))
async def stuck_sessions(actor: CurrentActor, ctx: Ctx, _: Actor = require("ops"),
                         __: None = Depends(no_parameters)) -> dict[str, Any]:
    items = await uc.stuck_sessions(ctx, actor)
    return {"items": items, "total": len(items)}


@router.post("/sessions/{session_id}/retry", responses=problems(403, 404, 409))
async def retry_session(session_id: str, actor: CurrentActor, ctx: Ctx) -> dict[str, Any]:
    return await uc.retry_session(ctx, actor, parse_id(session_id, "session"))
