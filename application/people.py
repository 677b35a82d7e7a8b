"""The directory of people (CONTRACT.md v1.2, "People"): kept as tokens are accepted, read by
supervisors and admins."""

from __future__ import annotations

import logging
from uuid import UUID

from application.authz import Actor, Role, authorize
from application.context import Context
from domain.errors import NotFound, Unavailable
from domain.people import Person

log = logging.getLogger("worksession.api")


async def note_seen(ctx: Context, actor: Actor) -> None:
    """Every authenticated request passes here once (api/deps.current_actor). It writes only
    when this process's memo says a write is due (`SeenPeople.due`): one small transaction,
    one upsert that also holds the once-a-minute rule for `last_seen` when several API
    processes see the same person. The directory is not what the request is for: a database
    that cannot take the write now leaves a warning, and the next request tries again."""
    now = ctx.clock()
    if not ctx.people.due(actor, now):
        return
    try:
        async with ctx.uow() as uow:
            await uow.people.seen(actor.id, actor.name, actor.role.value, now,
                                  stale_before=now - ctx.people.every)
    except Unavailable as e:
        log.warning("the directory of people was not updated for %s: %s", actor.id, e.detail)
        return
    ctx.people.written(actor, now)


async def list_people(ctx: Context, actor: Actor, q: str | None, role: Role | None,
                      limit: int, offset: int) -> tuple[list[Person], int]:
    authorize(actor, "people.read")
    async with ctx.uow(read_only=True) as uow:
        return await uow.people.list_page(q, role.value if role else None, limit, offset)


async def get_person(ctx: Context, actor: Actor, person_id: UUID) -> Person:
    authorize(actor, "people.read")
    async with ctx.uow(read_only=True) as uow:
        person = await uow.people.get(person_id)
    if person is None:
        raise NotFound("person not found: no token of theirs has been seen")
    return person
