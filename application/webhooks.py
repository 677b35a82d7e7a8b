"""Webhook subscriptions and their deliveries (CONTRACT.md, "Webhooks"): admins only."""

from __future__ import annotations

import os
import uuid
from typing import Any
from uuid import UUID

from application.authz import Actor, authorize
from application.context import Context
from domain.errors import InvalidInput, NotFound, Unavailable
from domain.webhooks import (
    SECRET_BYTES,
    Subscription,
    check_addresses,
    new_secret,
    parse_url,
    unknown_events,
)


async def check_url(ctx: Context, url: str) -> None:
    """The URL rule: a URL, https (plain http only when allowed), whose host resolves, and
    only to public addresses (private and loopback ones only when allowed)."""
    target = parse_url(url, allow_insecure=ctx.webhook_allow_insecure)
    check_addresses(target.host, await ctx.resolve(target.host, target.port),
                    allow_insecure=ctx.webhook_allow_insecure)


async def subscribe(ctx: Context, actor: Actor, url: str, events: list[str],
                    description: str | None) -> tuple[Subscription, str]:
    """A new subscription and its secret (shown this once; kept sealed)."""
    authorize(actor, "webhooks")
    if unknown := unknown_events(events):
        detail = f"unknown event name(s): {', '.join(unknown)}"
        raise InvalidInput(detail, errors=[{"field": "body.events", "message": detail}])
    await check_url(ctx, url)
    sub = Subscription(id=uuid.uuid4(), url=url, events=sorted(set(events)),
                       description=description, created_at=ctx.clock(), created_by=actor.id)
    secret = new_secret(os.urandom(SECRET_BYTES))
    async with ctx.uow() as uow:
        try:
            await uow.events.add_subscription(sub, secret)
        except LookupError:
            raise Unavailable("webhooks need a key to keep their secrets: set "
                              "WORKSESSION_WEBHOOK_KEY (or WORKSESSION_JWT_SECRET)") from None
    return sub, secret


async def subscriptions(ctx: Context, actor: Actor) -> list[Subscription]:
    authorize(actor, "webhooks")
    async with ctx.uow(read_only=True) as uow:
        return await uow.events.subscriptions()


async def unsubscribe(ctx: Context, actor: Actor, subscription_id: UUID) -> None:
    authorize(actor, "webhooks")
    async with ctx.uow() as uow:
        if not await uow.events.remove_subscription(subscription_id):
            raise NotFound("webhook not found")


async def deliveries(ctx: Context, actor: Actor, subscription_id: UUID, limit: int,
                     offset: int) -> tuple[list[dict[str, Any]], int]:
    authorize(actor, "webhooks")
    async with ctx.uow(read_only=True) as uow:
        if await uow.events.subscription(subscription_id) is None:
            raise NotFound("webhook not found")
        return await uow.events.deliveries(subscription_id, limit, offset)


async def redeliver(ctx: Context, actor: Actor, subscription_id: UUID,
                    delivery_id: UUID) -> dict[str, Any]:
    """Queue a delivery again (a `failed` one after its 24 h, or any other): it is sent with
    the same `webhook-id` and body, after what is pending before it in its stream."""
    authorize(actor, "webhooks")
    async with ctx.uow() as uow:  # its delivery started once committed, as any event's
        if not await uow.events.redeliver(subscription_id, delivery_id, ctx.clock()):
            raise NotFound("delivery not found")
        items, _ = await uow.events.deliveries(subscription_id, 1, 0, delivery_id=delivery_id)
    return items[0]
