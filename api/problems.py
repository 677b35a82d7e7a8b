"""RFC 9457 problem responses for every error, mapped in ONE place."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.auth import Unauthenticated
from domain import errors as e
from domain import evidence

log = logging.getLogger("worksession.api")

PROBLEM_JSON = "application/problem+json"

STATUS: dict[type[e.DomainError], int] = {
    e.NotFound: 404,
    e.Forbidden: 403,
    e.ReauthenticationRequired: 401,
    e.InvalidInput: 422,
    e.Conflict: 409,
    e.SopHasActiveSessions: 400,
    e.Unavailable: 503,
    evidence.UnsupportedType: 415,
    evidence.TooLarge: 413,
    evidence.Incomplete: 408,
}

TITLES: dict[str, str] = {
    e.NotFound.code: "Not found",
    e.Forbidden.code: "Forbidden",
    e.InvalidInput.code: "Invalid request",
    e.Conflict.code: "Conflict",
    e.SessionLocked.code: "Session is locked",
    e.WrongState.code: "Session is not in the right state",
    e.StepNotCurrent.code: "Step is not the current step",
    e.ReauthenticationRequired.code: "Re-authentication required",
    e.StepAwaitsVerification.code: "Step awaits verification",
    e.StepNotAwaitingVerification.code: "Step is not awaiting verification",
    e.SessionHeld.code: "Session is held until a nonconformance is contained",
    e.NcWrongState.code: "Nonconformance is not in the right state",
    e.ActiveSessionExists.code: "Worker already has an active session",
    e.SopNotStartable.code: "SOP cannot be started",
    e.SopNotEditable.code: "SOP cannot be changed",
    e.SopHasActiveSessions.code: "SOP has active sessions",
    e.Unavailable.code: "Service unavailable",
    evidence.UnsupportedType.code: "Unsupported file type",
    evidence.TooLarge.code: "File too large",
    evidence.Incomplete.code: "Upload incomplete",
}


RESERVED = {"type", "title", "status", "detail", "headers", "type_"}


def status_of(err: e.DomainError) -> int:
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 409


def problem(status: int, detail: str, *, type_: str = "about:blank", title: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": type_, "title": title or HTTPStatus(status).phrase, "status": status,
            "detail": detail, **extra}
    return JSONResponse(jsonable_encoder(body), status_code=status, media_type=PROBLEM_JSON,
                        headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method of every route at this path (Starlette names only the first route's)."""
    path = request.scope["path"]
    return sorted({m for r in _flat_routes(request.app.router.routes)
                   if r.path_regex.match(path) for m in r.methods})


def _flat_routes(routes: list[Any]) -> Iterator[Any]:
    for r in routes:
        inner = getattr(r, "original_router", None)
        if inner is not None:
            yield from _flat_routes(inner.routes)
        elif getattr(r, "methods", None) and getattr(r, "path_regex", None):
            yield r


CHECK_KINDS = {"confirm", "measurement"}  # the tags of the check-spec union


def _field(error: dict[str, Any]) -> str:
    field = _loc(error.get("loc", ()))
    if error.get("type") in ("union_tag_invalid", "union_tag_not_found"):
        field += "." + str((error.get("ctx") or {}).get("discriminator", "kind")).strip("'")
    return field


def _loc(loc: tuple | list) -> str:
    """`body.tasks.0.steps.1.check.prompt`: the union tag pydantic adds after `check` is not
    a field the client sent."""
    parts = [str(p) for i, p in enumerate(loc)
             if not (p in CHECK_KINDS and i > 0 and loc[i - 1] == "check")]
    return ".".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(e.DomainError)
    async def domain_error(_: Request, err: e.DomainError) -> JSONResponse:
        status = status_of(err)
        extra = {k: v for k, v in err.extra.items() if k not in RESERVED}
        headers = {"Retry-After": "5"} if status == 503 else \
            {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return problem(status, err.detail, type_=f"/problems/{err.code}",
                       title=TITLES.get(err.code), headers=headers, **extra)

    @app.exception_handler(Unauthenticated)
    async def unauthenticated(_: Request, err: Unauthenticated) -> JSONResponse:
        return problem(401, err.detail, type_="/problems/unauthenticated",
                       title="Unauthenticated", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        json_error = getattr(request.state, "json_error", None)
        if json_error:  # see api.routing.PrecedenceRoute
            return problem(422, f"the body is not valid JSON ({json_error})",
                           type_="/problems/validation", title="Invalid request",
                           errors=[{"field": "body", "message": json_error,
                                    "type": "json_invalid"}])
        fields = [{"field": _field(x), "message": x.get("msg", "invalid"),
                   "type": x.get("type")} for x in err.errors()]
        names = ", ".join(f["field"] for f in fields) or "request"
        return problem(422, f"invalid fields: {names}", type_="/problems/validation",
                       title="Invalid request", errors=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        headers = dict(err.headers or {})
        if err.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem(err.status_code, str(err.detail), headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        # The contract allows no 5xx but 503: an unexpected failure is reported as the
        # service being unable to answer now, and logged in full for the operators.
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(503, "the service could not handle this request right now",
                       type_="/problems/unexpected", headers={"Retry-After": "5"})


# Statuses any operation can answer whatever it does: a method the path does not serve, a
# body over the size limit, and (but for health checks) load shed (api.front_door).
ANY_OPERATION = {"405": "Method not allowed on this path", "413": "Request body too large"}
SHED = {"503": "Service unavailable: a dependency is down, or the service is at capacity "
               "(`/problems/overloaded`); retry after Retry-After"}


def document(app: FastAPI, never_shed: Collection[str]) -> None:
    """Make the OpenAPI document say what is sent: every error as application/problem+json
    with the Problem schema, and the statuses every operation can answer.

    `never_shed`: the paths the front door never sheds. Passed in, not imported: the front
    door answers with this module's problems, so this module must not import it back."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        ref = {"$ref": "#/components/schemas/Problem"}
        for path, item in schema["paths"].items():
            for op in item.values():
                responses = op.setdefault("responses", {})
                always = ANY_OPERATION if path in never_shed else ANY_OPERATION | SHED
                for code, description in always.items():
                    responses.setdefault(code, {"description": description})
                for code, response in responses.items():
                    if code[0] in "45":
                        response["content"] = {PROBLEM_JSON: {"schema": ref}}
        schema["components"]["schemas"].pop("HTTPValidationError", None)
        schema["components"]["schemas"].pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
