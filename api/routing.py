"""A route class that keeps CONTRACT.md's error precedence for malformed JSON.

FastAPI parses a JSON body before any dependency runs, so `{` would be answered 422 before
the caller is authenticated (401), may see the resource (404) or may act (403). This route
hands FastAPI `null` instead of an unparseable body and remembers the parse error; the
dependencies then answer first, and the 422 handler reports the real JSON error."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


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
            return await handler(request)

        return route_handler
