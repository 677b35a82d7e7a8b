"""Who may do what (CONTRACT.md role table), in one place."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from domain.errors import Forbidden, NotFound


class Role(StrEnum):
    WORKER = "worker"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


@dataclass(frozen=True)
class Actor:
    """Who makes a request, as their token says: the user id, the role (after an identity
    provider's mapping), the name to show (domain.people.display_name), if any, and when the
    person last authenticated (the token's `auth_time`, else its `iat`; None when it says
    neither): signing asks for a recent one (application/signatures.ensure_fresh)."""

    id: UUID
    role: Role
    name: str | None = None
    auth_time: datetime | None = None


W, S, A = Role.WORKER, Role.SUPERVISOR, Role.ADMIN

PERMISSIONS: dict[str, frozenset[Role]] = {
    "sop.read": frozenset({W, S, A}),
    "sop.read_drafts": frozenset({S, A}),
    "sop.write": frozenset({S, A}),
    "session.start": frozenset({W}),
    "session.work": frozenset({W}),        # checks, pause, resume, complete, cancel (own)
    "session.read": frozenset({W, S, A}),  # workers: own only
    "session.read_all": frozenset({S, A}),
    "session.override": frozenset({S, A}),  # approve, reopen
    "audit.read": frozenset({S, A}),
    "ops": frozenset({A}),
    "people.read": frozenset({S, A}),
    "webhooks": frozenset({A}),
    "nc.read": frozenset({W, S, A}),  # workers: the NCs of their own sessions only
    "nc.read_all": frozenset({S, A}),
    "nc.manage": frozenset({S, A}),  # open by hand, contain, close
}


def allowed(actor: Actor, action: str) -> bool:
    return actor.role in PERMISSIONS[action]


def authorize(actor: Actor, action: str) -> None:
    if not allowed(actor, action):
        raise Forbidden(f"role {actor.role.value} may not do this ({action})")


def ensure_visible(actor: Actor, owner_id: UUID | None) -> None:
    """A worker never sees another worker's session: it does not exist for them (404).
    `owner_id` is the session's worker, None when there is no such session."""
    if owner_id is None or not (allowed(actor, "session.read_all") or owner_id == actor.id):
        raise NotFound("session not found")
