"""A route class that keeps CONTRACT.md's error precedence for malformed JSON.

FastAPI parses a JSON body before any dependency runs, so `{` would be answered 422 before
the caller is authenticated (401), may see the resource (404) or may act (403). This route
hands FastAPI `null` instead of an unparseable body and remembers the parse error; the
dependencies then answer first, and the 422 handler reports the real JSON error.

It also bounds every request in time (`app.state.request_deadline`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from domain.errors import Unavailable


class PrecedenceRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            if self.body_field is not None:
                body = await request.body()
                if body:
                    try:
                        json.loads(body)
                    except (ValueError, RecursionError) as e:
                        request.state.json_error = f"{e.__class__.__name__}: {e}"
                        request._body = b"null"
            # One bound for the whole request, whatever it waits on (CONTRACT: 503 within a
            # bounded time instead of hanging). The answer does not wait for the cancelled
            # handler to unwind: on SQLite its rollback queues behind a lock wait that
            # cancellation cannot cut short (seen: 10 s more in the database-outage test).
            deadline = getattr(request.app.state, "request_deadline", None)
            work = asyncio.ensure_future(handler(request))
            try:
                done, _ = await asyncio.wait({work}, timeout=deadline)
            except asyncio.CancelledError:  # the request itself was cancelled
                work.cancel()
                raise
            if done:
                return work.result()
            work.cancel()
            work.add_done_callback(_unwound)
            raise Unavailable("the request took too long; the service or one of its "
                              "dependencies is slow. Resend it (with the same check_id).")

        return route_handler


def _unwound(work: asyncio.Future[Any]) -> None:
    """A handler cancelled at the deadline has finished unwinding; its outcome is moot."""
    if not work.cancelled():
        work.exception()  # retrieved, so asyncio does not log it as never retrieved
