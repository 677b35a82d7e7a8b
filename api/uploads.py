"""Endpoints whose body is a file, streamed to where it is kept as it arrives (never the whole
file in memory): the route class, and the body as its chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from api.front_door import drain
from domain.evidence import Incomplete


class Body:
    """The request's body as it arrives, each chunk within `idle` seconds of the one before
    (a client that stops sending is refused, 408, rather than waited for)."""

    def __init__(self, receive: Any, idle: float, expects_continue: bool) -> None:
        self.receive, self.idle = receive, idle
        self.expects_continue = expects_continue
        self.started = self.done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        self.started = True
        while not self.done:
            try:
                async with asyncio.timeout(self.idle):  # no task per chunk, as wait_for makes
                    message = await self.receive()
            except TimeoutError:
                raise Incomplete(f"no part of the file arrived for {self.idle:g} s") from None
            if message["type"] != "http.request":  # the client went away
                self.done = True
                raise Incomplete("the upload ended before the file did")
            self.done = not message.get("more_body", False)
            if message.get("body"):
                yield message["body"]

    async def drain(self) -> None:
        """Read and drop what is left of it (bounded), so that a client still sending reads
        the answer instead of having its connection reset. A client that waits for
        `100 Continue` before it sends has sent nothing to drop."""
        if self.done or (self.expects_continue and not self.started):
            return
        await drain(self.receive)
        self.done = True


class UploadRoute(APIRoute):
    """No overall deadline (an upload takes as long as the client's link), but every wait is
    bounded on its own: each chunk by `app.state.upload_idle`, the database by its lock
    timeouts, the store by its own. Whatever the answer, the rest of the body is read first
    (`Body.drain`); the endpoint reads the body from `request.state.body`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            body = Body(request.receive, request.app.state.upload_idle,
                        request.headers.get("expect", "").lower() == "100-continue")
            request.state.body = body
            try:
                return await handler(request)
            finally:
                await body.drain()

        return route_handler
