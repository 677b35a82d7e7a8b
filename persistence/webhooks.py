"""Webhooks' tables (persistence/tables.py): subscriptions with their secrets sealed, the
outbox of events and their deliveries. `record` is the outbox's one door: an event recorded
in the transaction of the change that caused it, with a delivery for every subscription that
wants it; `streams` says, once committed, which delivery streams have new work."""

from __future__ import annotations

import base64
import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import and_, case, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.webhooks import Pending, Subscription, body_of, ordinal
from persistence.tables import webhook_deliveries, webhook_events, webhook_subscriptions

NO_STREAM = "-"  # the stream of events that belong to no session
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


class SecretBox:
    """Seals subscription secrets for the database: AES-256-GCM under a key derived (HKDF)
    from the service's webhook key, with the subscription's id as associated data, so a
    sealed secret read from the database (a dump, a replica, a backup) is useless without
    the key, and cannot be moved to another subscription's row."""

    VERSION = "v1"

    def __init__(self, key_material: bytes) -> None:
        self._aead = AESGCM(HKDF(SHA256(), 32, salt=None,
                                 info=b"worksession webhook secrets").derive(key_material))

    def seal(self, subscription_id: UUID, secret: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), subscription_id.bytes)
        return f"{self.VERSION}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, subscription_id: UUID, sealed: str) -> str:
        version, _, data = sealed.partition(":")
        if version != self.VERSION:
            raise ValueError(f"a sealed secret of unknown version {version!r}")
        raw = base64.b64decode(data)
        return self._aead.decrypt(raw[:12], raw[12:], subscription_id.bytes).decode()


class WebhookRepository:
    def __init__(self, conn: AsyncConnection, box: SecretBox | None) -> None:
        self.conn = conn
        self._box = box
        self._subscriptions: list[Subscription] | None = None  # read once per transaction
        self.streams: set[tuple[UUID, str]] = set()  # (subscription, stream) with new work

    # ---- the outbox ----------------------------------------------------------------------
    async def wanted(self, event_type: str) -> bool:
        """Whether any subscription wants events of this type (else recording is a no-op,
        and building the event's data can be skipped)."""
        return any(event_type in s.events for s in await self._subscribed())

    async def record(self, event_type: str, data: dict[str, Any],
                     session_id: UUID | None = None, *, at: datetime | None = None,
                     version: int = 0, index: int = 0) -> str | None:
        """Record an event in this transaction, with a pending delivery to each subscription
        that wants it. Returns its id (the `webhook-id` of every delivery of it), or None
        when no subscription wants it (nothing is recorded)."""
        subs = [s for s in await self._subscribed() if event_type in s.events]
        if not subs:
            return None
        at = at or datetime.now(UTC)
        event_id = f"msg_{uuid.uuid4().hex}"
        n = ordinal(at, version, index)
        body = json.dumps(body_of(event_type, event_id, at.isoformat(), data),
                          separators=(",", ":"), ensure_ascii=False, default=str)
        await self.conn.execute(webhook_events.insert(), {
            "id": event_id, "type": event_type, "session_id": session_id, "ordinal": n,
            "at": at, "body": body})
        stream = str(session_id) if session_id is not None else NO_STREAM
        await self.conn.execute(webhook_deliveries.insert(), [{
            "id": uuid.uuid4(), "subscription_id": s.id, "event_id": event_id,
            "stream": stream, "ordinal": n, "status": PENDING, "attempts": 0,
            "queued_at": at} for s in subs])
        self.streams.update((s.id, stream) for s in subs)
        return event_id

    async def _subscribed(self) -> list[Subscription]:
        if self._subscriptions is None:
            self._subscriptions = await self.subscriptions()
        return self._subscriptions

    # ---- subscriptions --------------------------------------------------------------------
    async def add_subscription(self, sub: Subscription, secret: str) -> None:
        if self._box is None:
            raise LookupError("no webhook key: secrets cannot be sealed")
        await self.conn.execute(webhook_subscriptions.insert(), {
            "id": sub.id, "url": sub.url, "events": sub.events,
            "description": sub.description, "created_at": sub.created_at,
            "created_by": sub.created_by, "secret": self._box.seal(sub.id, secret)})

    async def subscriptions(self) -> list[Subscription]:
        rows = (await self.conn.execute(select(*_SUB).order_by(
            webhook_subscriptions.c.created_at, webhook_subscriptions.c.id))).all()
        return [Subscription(*r) for r in rows]

    async def subscription(self, subscription_id: UUID) -> Subscription | None:
        row = (await self.conn.execute(select(*_SUB).where(
            webhook_subscriptions.c.id == subscription_id))).first()
        return Subscription(*row) if row is not None else None

    async def secret(self, subscription_id: UUID) -> str | None:
        """The subscription's secret, unsealed (None: no such subscription)."""
        sealed = (await self.conn.execute(select(webhook_subscriptions.c.secret).where(
            webhook_subscriptions.c.id == subscription_id))).scalar_one_or_none()
        if sealed is None:
            return None
        if self._box is None:
            raise LookupError("no webhook key: secrets cannot be opened")
        return self._box.open(subscription_id, sealed)

    async def remove_subscription(self, subscription_id: UUID) -> bool:
        """The subscription and its deliveries (its pending ones are not sent)."""
        await self.conn.execute(delete(webhook_deliveries).where(
            webhook_deliveries.c.subscription_id == subscription_id))
        gone = await self.conn.execute(delete(webhook_subscriptions).where(
            webhook_subscriptions.c.id == subscription_id))
        return gone.rowcount > 0

    # ---- deliveries -----------------------------------------------------------------------
    async def deliveries(self, subscription_id: UUID, limit: int, offset: int, *,
                         delivery_id: UUID | None = None) -> tuple[list[dict[str, Any]], int]:
        """A subscription's deliveries (or the one named), newest first."""
        d, e = webhook_deliveries.c, webhook_events.c
        conds = [d.subscription_id == subscription_id]
        if delivery_id is not None:
            conds.append(d.id == delivery_id)
        total = (await self.conn.execute(select(func.count()).select_from(
            webhook_deliveries).where(*conds))).scalar_one()
        rows = (await self.conn.execute(
            select(d.id, d.event_id, e.type.label("event_type"), e.session_id, d.status,
                   d.attempts, d.last_status_code, d.last_error, d.last_attempt_at,
                   d.delivered_at, d.queued_at, e.at.label("event_at"))
            .join(webhook_events, e.id == d.event_id)
            .where(*conds)
            .order_by(d.queued_at.desc(), d.ordinal.desc()).limit(limit).offset(offset)
        )).mappings().all()
        return [dict(r) for r in rows], total

    async def redeliver(self, subscription_id: UUID, delivery_id: UUID,
                        at: datetime) -> bool:
        """Queue a delivery again (whatever its state): pending, its 24 h counting from now,
        and its attempts from none (its first failure waits 5 s again, not the hour its
        last backoff reached)."""
        d = webhook_deliveries.c
        res = await self.conn.execute(
            update(webhook_deliveries)
            .where(d.id == delivery_id, d.subscription_id == subscription_id)
            .values(status=PENDING, queued_at=at, attempts=0)
            .returning(d.stream))
        stream = res.scalar_one_or_none()
        if stream is None:
            return False
        self.streams.add((subscription_id, stream))
        return True

    async def pending(self, subscription_id: UUID, stream: str, limit: int) -> list[Pending]:
        """A stream's next deliveries, in order."""
        d, e = webhook_deliveries.c, webhook_events.c
        rows = (await self.conn.execute(
            select(d.id, d.event_id, e.body, d.attempts, d.queued_at)
            .join(webhook_events, e.id == d.event_id)
            .where(d.subscription_id == subscription_id, d.stream == stream,
                   d.status == PENDING)
            .order_by(d.ordinal).limit(limit))).all()
        return [Pending(*r) for r in rows]

    async def attempted(self, delivery: Pending, at: datetime, status_code: int | None,
                        error: str | None, outcome: str) -> bool:
        """One attempt and its outcome: `delivered`, `failed` (retries ran out), or still
        `pending`. False when the delivery is no longer the one read: removed with its
        subscription, or queued again (redelivered) meanwhile, which this attempt must not
        undo."""
        d = webhook_deliveries.c
        res = await self.conn.execute(
            update(webhook_deliveries)
            .where(d.id == delivery.id, d.queued_at == delivery.queued_at)
            .values(attempts=d.attempts + 1, last_attempt_at=at,
                    last_status_code=status_code,
                    last_error=None if error is None else error[:500], status=outcome,
                    delivered_at=at if outcome == DELIVERED else None))
        return res.rowcount > 0

    async def stranded(self, queued_before: datetime,
                       limit: int = 1000) -> list[tuple[UUID, str]]:
        """Streams whose pending deliveries were queued before `queued_before` and none of
        which was attempted since it was queued: their delivery was never started (the
        process that committed them died, or Temporal was down, before it could start it).
        A stream with an attempt in progress is not stranded: its run delivers the rest."""
        d = webhook_deliveries.c
        tried = case((and_(d.last_attempt_at.is_not(None),
                           d.last_attempt_at >= d.queued_at), 1), else_=0)
        rows = (await self.conn.execute(
            select(d.subscription_id, d.stream).where(d.status == PENDING)
            .group_by(d.subscription_id, d.stream)
            .having(and_(func.min(d.queued_at) < queued_before, func.max(tried) == 0))
            .limit(limit))).all()
        return [(r[0], r[1]) for r in rows]


_SUB = (webhook_subscriptions.c.id, webhook_subscriptions.c.url,
        webhook_subscriptions.c.events, webhook_subscriptions.c.description,
        webhook_subscriptions.c.created_at, webhook_subscriptions.c.created_by)

