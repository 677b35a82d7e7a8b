"""Dependencies as Annotated aliases: the context, the caller, paging, ids."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.auth import Unauthenticated
from api.schemas import Problem
from application.authz import Actor, authorize
from application.context import Context
from application.people import note_seen
from domain.errors import InvalidInput, NotFound, Unavailable

_bearer = HTTPBearer(auto_error=False, description="JWT: sub = user UUID, role, exp")


# Every dependency is `async def`: FastAPI runs a plain `def` one in its thread pool, a
# thread hop per dependency per request (measured: ~1 ms of a check's time). None of them
# blocks.
async def get_ctx(request: Request) -> Context:
    ctx = getattr(request.app.state, "ctx", None)
    if ctx is None:
        raise Unavailable("the service is starting or its dependencies are down")
    return ctx


async def current_actor(request: Request,
                        creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
                        ) -> Actor:
    """The caller, once per request (FastAPI caches a dependency within a request), and the
    one place where the directory of people learns of them (`note_seen`: nothing to write,
    and so no cost, unless something changed)."""
    header = request.headers.get("authorization")
    if creds is None and not header:
        raise Unauthenticated("missing bearer token")
    actor: Actor = await request.app.state.auth.actor(header)
    ctx = getattr(request.app.state, "ctx", None)
    if ctx is not None:  # None while the service starts: no database to write to yet
        await note_seen(ctx, actor)
    return actor


async def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def parse_id(value: str, what: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise NotFound(f"{what} not found: {value!r} is not a UUID") from None


def instant_query(description: str) -> Any:
    return Query(None, description=f"{description}; ISO 8601 (`2026-11-27`, "
                 "`2026-11-27T06:00:00Z`, `…+01:00`); without a time zone it is UTC",
                 json_schema_extra={"format": "date-time"})


_LOST_PLUS = re.compile(r" (\d\d(?::?\d\d)?)$")


def parse_instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:  # an offset's "+" left unencoded in a URL arrives as a space
        at = datetime.fromisoformat(_LOST_PLUS.sub(r"+\1", value.upper()))
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except (ValueError, OverflowError):  # overflow: year 1 or 9999 moved to UTC
        raise InvalidInput(f"{name} is not an ISO 8601 date or time: {value!r}", errors=[
            {"field": f"query.{name}", "message": "not an ISO 8601 date or time"}]) from None


def refuse_unknown_parameters(request: Request, dependency: Callable[..., Any],
                              *others: str) -> None:
    """A misspelt filter is refused rather than ignored: ignored, it would show everything
    as if it had matched. Known: `dependency`'s query parameters and `others`."""
    known = {*inspect.signature(dependency).parameters, *others} - {"request"}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise InvalidInput(f"unknown parameter: {', '.join(unknown)}", errors=[
            {"field": f"query.{name}", "message": "not a parameter of this request"}
            for name in unknown])


def no_parameters(request: Request) -> None:
    """For a request that takes no query parameter: one given is refused (422)."""
    refuse_unknown_parameters(request, no_parameters)


def only_paging(request: Request) -> None:
    """For a list that takes no filter: a parameter but `limit` and `offset` is refused."""
    refuse_unknown_parameters(request, only_paging, "limit", "offset")


class Paging:
    MAX_LIMIT = 100

    def __init__(self, limit: int, offset: int) -> None:
        self.limit = min(limit, self.MAX_LIMIT)
        self.offset = offset

    def page(self, items: list[Any], total: int) -> dict[str, Any]:
        return {"items": items, "total": total, "limit": self.limit, "offset": self.offset}


Ctx = Annotated[Context, Depends(get_ctx)]
CurrentActor = Annotated[Actor, Depends(current_actor)]
RequestId = Annotated[str | None, Depends(request_id)]
async def paging(limit: int = Query(20, ge=1, le=2**31 - 1,
                                    description="page size; capped at 100"),
                 offset: int = Query(0, ge=0, le=2**31 - 1)) -> Paging:
    return Paging(limit, offset)


PageParams = Annotated[Paging, Depends(paging)]


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses an endpoint can give."""
    return {c: {"model": Problem, "content": {"application/problem+json": {}}}
            for c in (401, 422, 503, *codes)}


def require(permission: str) -> Any:
    """Role check as a dependency, so 403 comes before the body is validated (422)."""
    async def dependency(actor: CurrentActor) -> Actor:
        authorize(actor, permission)
        return actor
    return Depends(dependency)
