"""Webhooks (CONTRACT.md v1.2, "Webhooks"): subscriptions and their deliveries, admins only."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from api.deps import (
    Ctx,
    CurrentActor,
    PageParams,
    no_parameters,
    only_paging,
    parse_id,
    problems,
    require,
)
from api.routing import PrecedenceRoute
from api.schemas import NO_NUL, Page, Text
from application import webhooks as uc
from application.authz import Actor
from domain.webhooks import EVENT_TYPES, Subscription

router = APIRouter(prefix="/api/v1/webhooks", tags=["Webhooks"], route_class=PrecedenceRoute)

EventName = Text(64)
Description = Text(500)
EVENTS = ", ".join(f"`{e}`" for e in sorted(EVENT_TYPES))


class WebhookIn(BaseModel):
    url: str = Field(max_length=2048, pattern=NO_NUL, description=(
        "https:// (http:// and loopback or private addresses only when "
        "WORKSESSION_WEBHOOK_ALLOW_INSECURE=true); its host must resolve, to public "
        "addresses only"))
    events: list[EventName] = Field(  # type: ignore[valid-type]
        min_length=1, max_length=len(EVENT_TYPES), description=f"any of {EVENTS}")
    description: Description | None = None  # type: ignore[valid-type]


class WebhookOut(BaseModel):
    id: UUID
    url: str
    events: list[str]
    description: str | None
    created_at: datetime
    created_by: UUID | None


class WebhookCreated(WebhookOut):
    secret: str = Field(description="`whsec_…`: the key that signs every delivery "
                        "(Standard Webhooks). Shown in this answer only; keep it.")


class DeliveryOut(BaseModel):
    id: UUID
    event_id: str = Field(description="the `webhook-id` header of every attempt")
    event_type: str
    session_id: UUID | None
    status: str = Field(description="`pending`, `delivered` or `failed` (after 24 h of "
                        "retries; redeliver it by hand)")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    queued_at: datetime = Field(description="recorded, or last redelivered by hand")
    event_at: datetime


def _out(s: Subscription) -> dict[str, Any]:
    return {"id": s.id, "url": s.url, "events": s.events, "description": s.description,
            "created_at": s.created_at, "created_by": s.created_by}


@router.post("", status_code=201, response_model=WebhookCreated, responses=problems(403))
async def create_webhook(body: WebhookIn, actor: CurrentActor, ctx: Ctx,
                         _: Actor = require("webhooks")) -> dict[str, Any]:
    sub, secret = await uc.subscribe(ctx, actor, body.url, body.events, body.description)
    return {**_out(sub), "secret": secret}


@router.get("", response_model=list[WebhookOut], responses=problems(403))
async def list_webhooks(actor: CurrentActor, ctx: Ctx, _: Actor = require("webhooks"),
                        __: None = Depends(no_parameters)) -> list[dict[str, Any]]:
    return [_out(s) for s in await uc.subscriptions(ctx, actor)]


@router.delete("/{webhook_id}", status_code=204, response_class=Response,
               responses=problems(403, 404))
async def delete_webhook(webhook_id: str, actor: CurrentActor, ctx: Ctx,
                         _: Actor = require("webhooks")) -> Response:
    """The subscription and its deliveries; what was pending is not sent."""
    await uc.unsubscribe(ctx, actor, parse_id(webhook_id, "webhook"))
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryOut],
            responses=problems(403, 404))
async def list_deliveries(webhook_id: str, actor: CurrentActor, ctx: Ctx, paging: PageParams,
                          _: Actor = require("webhooks"),
                          __: None = Depends(only_paging)) -> dict[str, Any]:
    """Newest first, with their attempts, last status code and error."""
    items, total = await uc.deliveries(ctx, actor, parse_id(webhook_id, "webhook"),
                                       paging.limit, paging.offset)
    return paging.page(items, total)


@router.post("/{webhook_id}/deliveries/{delivery_id}/redeliver", status_code=202,
             response_model=DeliveryOut, responses=problems(403, 404))
async def redeliver(webhook_id: str, delivery_id: str, actor: CurrentActor, ctx: Ctx,
                    _: Actor = require("webhooks")) -> dict[str, Any]:
    """Sends the delivery again (same `webhook-id`, same body), retried as a new one."""
    return await uc.redeliver(ctx, actor, parse_id(webhook_id, "webhook"),
                              parse_id(delivery_id, "delivery"))
