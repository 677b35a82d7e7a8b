"""Audit log endpoint."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Query

from api.deps import Ctx, CurrentActor, PageParams, problems
from api.routing import PrecedenceRoute
from api.schemas import AuditEntryOut, Page
from application import audit as uc
from persistence.audit import hashed_body

router = APIRouter(prefix="/api/v1/audit", tags=["Audit"], route_class=PrecedenceRoute)


@router.get("", response_model=Page[AuditEntryOut], responses=problems(403))
async def list_audit(actor: CurrentActor, ctx: Ctx, paging: PageParams,
                     session_id: UUID | None = Query(None)) -> dict[str, Any]:
    items, total = await uc.list_entries(ctx, actor, session_id, paging.limit, paging.offset)
    return paging.page([{**i, "at": hashed_body(i)["at"]} for i in items], total)
