"""Webhooks (CONTRACT.md, "Webhooks"): which events a change of a session causes, the Standard
Webhooks signature, which receiver addresses are allowed, and how long to wait before the
next attempt. Pure: no I/O here (resolving a host and sending are the adapters')."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from domain.changes import SessionChange
from domain.errors import InvalidInput
from domain.signature import Signature
from domain.work_session import Check, SessionStatus

SESSION_EVENTS = ("session.started", "session.completed", "session.cancelled",
                  "session.approved", "session.needs_attention")
# Every event name the contract defines (the nonconformance and SPC ones are recorded by
# their own use cases through the same outbox: UnitOfWork.events.record).
EVENT_TYPES = frozenset((*SESSION_EVENTS, "check.failed", "signature.created",
                         "nonconformance.opened", "nonconformance.contained",
                         "nonconformance.overdue", "nonconformance.closed",
                         "spc.out_of_control"))
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


@dataclass(frozen=True)
class Subscription:
    id: UUID
    url: str
    events: list[str]
    description: str | None
    created_at: datetime
    created_by: UUID | None = None


@dataclass(frozen=True)
class Pending:
    """A delivery waiting to go out, with the event's body as recorded."""

    id: UUID
    event_id: str
    body: str
    attempts: int
    queued_at: datetime


@dataclass(frozen=True)
class SessionEvent:
    """An event a change causes, and what its `data` shows: the session as it stands after
    the change (`subject` None), or the check or signature the change added."""

    type: str
    subject: Check | Signature | None = None


def events_of(change: SessionChange) -> list[SessionEvent]:
    """The events a change of a session causes, in the order they happened."""
    st, actions = change.state, [e.action for e in change.entries]
    out: list[SessionEvent] = []
    if "session_start" in actions:
        out.append(SessionEvent("session.started"))
    out += [SessionEvent("check.failed", c) for c in change.checks if c.result == "failed"]
    if "session_escalated" in actions:
        out.append(SessionEvent("session.needs_attention"))
    out += [SessionEvent("signature.created", g) for g in change.signatures]
    # The change that set `completed_at` / `cancelled_at` is the one that closed it (later
    # ones, approval among them, keep the old time; a reopening clears it).
    if st.status is SessionStatus.COMPLETED and st.completed_at == change.at:
        out.append(SessionEvent("session.completed"))
    if st.status is SessionStatus.CANCELLED and st.cancelled_at == change.at:
        out.append(SessionEvent("session.cancelled"))
    if "session_approve" in actions:
        out.append(SessionEvent("session.approved"))
    return out


def unknown_events(names: Iterable[str]) -> list[str]:
    return sorted(set(names) - EVENT_TYPES)


# ---- the signature (https://www.standardwebhooks.com) ---------------------------------------


def secret_key(secret: str) -> bytes:
    """The signing key a `whsec_…` secret stands for: the base64 after the prefix."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def new_secret(random_bytes: bytes) -> str:
    return SECRET_PREFIX + base64.b64encode(random_bytes).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,` and the base64 HMAC-SHA256 of
    `id.timestamp.body` under the secret's key."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body,
                   hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


# ---- where a receiver may be ----------------------------------------------------------------


def _bad_url(detail: str) -> InvalidInput:
    return InvalidInput(detail, errors=[{"field": "body.url", "message": detail}])


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int


def parse_url(url: str, *, allow_insecure: bool) -> Target:
    """The receiver's address, or InvalidInput: not a URL, or not https (plain http only when
    insecure receivers are allowed). Where its host resolves to is `check_addresses`'s."""
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise _bad_url("url is not a URL") from None
    if parts.scheme not in ("https", "http") or not host or " " in url:
        raise _bad_url("url is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise _bad_url("url must not carry a user name or password")
    if parts.scheme == "http" and not allow_insecure:
        raise _bad_url("url must be https:// (plain http only when "
                           "WORKSESSION_WEBHOOK_ALLOW_INSECURE=true)")
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80))


# IPv6 ranges Python counts as global that reach inside a network: IPv4-compatible (::/96,
# deprecated), local-use NAT64 (RFC 8215) and site-local (fec0::/10, deprecated).
_INSIDE_V6 = [ipaddress.IPv6Network(n) for n in ("::/96", "64:ff9b:1::/48", "fec0::/10")]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # the IPv4 address in its last 32 bits


def refused_address(address: str) -> bool:
    """Loopback, private, link-local (cloud metadata), multicast, reserved or unspecified:
    an address inside someone's network, not a receiver on the internet. An IPv6 address
    that carries an IPv4 one (mapped, 6to4, NAT64: a NAT64 gateway would take it there) is
    judged by the IPv4 address."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
        address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _INSIDE_V6):
            return True
        ip = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF) if ip in _NAT64 else ip)
    return not ip.is_global or ip.is_multicast


def check_addresses(host: str, addresses: list[str], *, allow_insecure: bool) -> list[str]:
    """The addresses a host resolved to that may be sent to, or InvalidInput when none may:
    one inside a private network makes the whole host refused (unless allowed), so a name
    that resolves both ways cannot be used to reach in."""
    if not addresses:
        raise _bad_url(f"url's host {host} does not resolve")
    if not allow_insecure:
        inside = [a for a in addresses if refused_address(a)]
        if inside:
            raise _bad_url(f"url's host {host} resolves to {inside[0]}, a loopback or "
                               "private address (allowed only when "
                               "WORKSESSION_WEBHOOK_ALLOW_INSECURE=true)")
    return addresses


# ---- when to try again -----------------------------------------------------------------------


def retry_delay(attempts: int, first: timedelta, most: timedelta) -> timedelta:
    """Exponential backoff: `first` after the first failed attempt, doubling, at most `most`."""
    return min(first * (2 ** min(max(attempts - 1, 0), 30)), most)


def ordinal(at: datetime, version: int = 0, index: int = 0) -> int:
    """Where an event stands in its stream: by time (milliseconds), then the session's
    version (the changes of one workflow task share their time), then its place in its
    change (up to 64 events a change: a change of many checks each failing has more than
    four, which once shared an ordinal and could go out of order).

    Versions count modulo 2^14 within a millisecond (they were modulo 16 within a
    microsecond: versions 15 and 16 of one task went out 16 first). Fits a signed 64-bit
    column until the year 2248, and every ordinal made so is above every one of the old
    form (time in microseconds × 1024), so a stream pending across the change keeps its
    order."""
    ms = int(at.timestamp() * 1_000_000) // 1000
    return (ms << 20) + (version % (1 << 14)) * 64 + min(index, 63)


def body_of(event_type: str, event_id: str, timestamp: str, data: dict[str, Any]) -> dict:
    return {"type": event_type, "id": event_id, "timestamp": timestamp, "data": data}
