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
            # bounded time instead of hanging). The handler is not cancelled: it finishes in
            # the background, bounded by its own time limits (Temporal calls, lock waits).
            # A cancellation reaching SQLAlchemy in the middle of a statement leaves the
            # connection out of the pool still holding its transaction: on SQLite, its write
            # lock, so every write after it waited out the busy timeout (measured). And a
            # change the run has taken still gets its read-model write and audit entry.
            deadline = getattr(request.app.state, "request_deadline", None)
            work = asyncio.ensure_future(handler(request))
            work.add_done_callback(_finished)
            done, _ = await asyncio.wait({work}, timeout=deadline)
            if done:
                return work.result()
            raise Unavailable("the request took too long; the service or one of its "
                              "dependencies is slow. Resend it (with the same check_id).")

        return route_handler


def _finished(work: asyncio.Future[Any]) -> None:
    """A handler has finished; past the deadline its outcome is moot, and an error it raised
    is retrieved, so asyncio does not log it as never retrieved."""
    if not work.cancelled():
        work.exception()
