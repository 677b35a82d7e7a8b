"""The directory of people (CONTRACT.md v1.2, "People") and the caller themself (`/me`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from api.deps import (
    Ctx,
    CurrentActor,
    PageParams,
    parse_id,
    problems,
    refuse_unknown_parameters,
    require,
)
from api.routing import PrecedenceRoute
from api.schemas import MeOut, Page, PersonOut
from application import people as uc
from application.authz import Actor, Role
from domain.people import NAME_MAX, Person

router = APIRouter(prefix="/api/v1", tags=["People"], route_class=PrecedenceRoute)


def person_out(p: Person) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "role": p.role, "first_seen": p.first_seen,
            "last_seen": p.last_seen}


async def _people_filter(
    request: Request,
    q: str | None = Query(None, max_length=NAME_MAX,
                          description="names that contain this text, whatever the case "
                          "(plain text: `%` and `_` are themselves)"),
    role: Role | None = Query(None),
) -> tuple[str | None, Role | None]:
    refuse_unknown_parameters(request, _people_filter, "limit", "offset")
    return q, role


# A worker may see no one here: 403 before anything about the request is looked at.
@router.get("/people", response_model=Page[PersonOut], responses=problems(403))
async def list_people(actor: CurrentActor, ctx: Ctx, paging: PageParams,
                      _: Actor = require("people.read"),
                      f: tuple[str | None, Role | None] = Depends(_people_filter)
                      ) -> dict[str, Any]:
    items, total = await uc.list_people(ctx, actor, *f, paging.limit, paging.offset)
    return paging.page([person_out(p) for p in items], total)


@router.get("/people/{person_id}", response_model=PersonOut, responses=problems(403, 404))
async def get_person(person_id: str, actor: CurrentActor, ctx: Ctx,
                     _: Actor = require("people.read")) -> dict[str, Any]:
    return person_out(await uc.get_person(ctx, actor, parse_id(person_id, "person")))


@router.get("/me", response_model=MeOut, responses=problems())
async def me(actor: CurrentActor) -> dict[str, Any]:
    """The caller as the API sees them (any role): what the web console shows and decides
    on, instead of reading the token itself."""
    return {"id": actor.id, "name": actor.name, "role": actor.role.value}
