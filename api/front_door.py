"""The API's front door: one pure ASGI middleware, outermost, that every request passes
before any routing, authentication or body parsing (CONTRACT.md, "Health", v1.1).

- **Request id**: the client's `X-Request-ID` when it is 1-128 characters of
  `A-Z a-z 0-9 . _ : -`, else one made here; echoed in the response, kept in audit entries,
  and on every log line the request causes (uvicorn's access line included).
- **Load shedding**: at most `max_in_flight` requests are in the application at once. One
  that finds no place waits for one at most `admission_wait_seconds`, then is answered
  503 `/problems/overloaded` with `Retry-After`, for the cost of parsing its head: the queue
  forms here, short and bounded, where a refusal is cheap, and not in the event loop, where
  every waiting request slowed the ones being served until all of them were late. Health
  checks are neither counted nor refused.
- **Body bound**: a body over `max_body` bytes is 413, once the upload is read and thrown
  away (bounded), so that a client still sending can read the answer instead of having its
  connection reset. File uploads (`streamed`: evidence files) are bounded by `max_streamed`
  instead, and only by their declared length here: their body is streamed to the endpoint
  as it arrives, which counts it (api/uploads.py). They take their places from a pool of
  their own (`max_streamed_in_flight`): an upload lasts as long as the phone's link, and
  twelve photos on a slow network must not turn the next check away.
- **HEAD** is answered wherever GET is: the GET's status and headers, no body.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import deque
from typing import Any

from api import problems
from worksession import logs

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
NEVER_SHED = frozenset({"/healthz", "/readyz"})
# What a refused upload may still send before the connection is given up (then it is reset).
DRAIN_BYTES, DRAIN_SECONDS = 64 * 1024 * 1024, 15.0


def request_id(sent: bytes | None) -> str:
    text = sent.decode("latin-1") if sent else ""
    return text if REQUEST_ID.fullmatch(text) else uuid.uuid4().hex


class FrontDoor:
    def __init__(self, app: Any, *, max_body: int, max_in_flight: int,
                 admission_wait_seconds: float, retry_after_seconds: int,
                 streamed: re.Pattern[str] | None = None, max_streamed: int = 0,
                 max_streamed_in_flight: int = 1) -> None:
        self.app = app
        self.max_body = max_body
        self.streamed, self.max_streamed = streamed, max_streamed
        self.places = Places(max_in_flight, admission_wait_seconds)
        self.upload_places = Places(max_streamed_in_flight, admission_wait_seconds)
        self.retry_after = str(retry_after_seconds)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = request_id(headers.get(b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = rid
        with logs.scope(request_id=rid):
            await self._serve(scope, receive, _with_request_id(send, rid), headers)

    async def _serve(self, scope: Any, receive: Any, send: Any,
                     headers: dict[bytes, bytes]) -> None:
        if scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
            send = _without_body(send)
        streamed = self.streamed is not None and scope["method"] == "POST" and \
            self.streamed.fullmatch(scope["path"]) is not None
        limit = self.max_streamed if streamed else self.max_body
        declared = headers.get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > limit
        except ValueError:
            too_big = True
        if too_big:  # refused before it takes a place: a slow upload holds none
            return await self._refuse_body(send, receive, headers, 0, limit=limit)
        if scope["path"] in NEVER_SHED:
            return await self._admitted(scope, receive, send, headers)
        if streamed:
            scope["state"]["streamed_body"] = True  # the endpoint reads and counts it
        places = self.upload_places if streamed else self.places
        if not await places.take():
            scope["state"]["shed"] = True  # counted by api/metrics.py
            return await self._answer(send, problems.problem(
                503, "the service is at capacity; retry after the time in Retry-After",
                type_="/problems/overloaded", title="Service overloaded",
                headers={"Retry-After": self.retry_after}))
        try:
            await self._admitted(scope, receive, send, headers)
        finally:
            places.give_back()

    async def _admitted(self, scope: Any, receive: Any, send: Any,
                        headers: dict[bytes, bytes]) -> None:
        if b"content-length" not in headers and scope["method"] in ("POST", "PUT", "PATCH") \
                and not scope["state"].get("streamed_body"):
            # A streamed body of unknown length: read it here, bounded, then replay it.
            chunks: list[bytes] = []
            size, more = 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return None  # the client went away
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_body:
                    return await self._refuse_body(send, receive, headers, size,
                                                   message.get("more_body", False))
                more = message.get("more_body", False)
            receive = _replay(b"".join(chunks), receive)
        await self.app(scope, receive, send)

    async def _refuse_body(self, send: Any, receive: Any, headers: dict[bytes, bytes],
                           read: int, more: bool = True, limit: int | None = None) -> None:
        # Read first: a server answers a client asking `Connection: close` by closing, and
        # closing on unread data resets the connection. A client that waits for
        # `100 Continue` has sent nothing to read.
        if more and headers.get(b"expect", b"").lower() != b"100-continue":
            await drain(receive, DRAIN_BYTES - read)
        await self._answer(send, problems.problem(
            413, f"request body larger than {limit or self.max_body} bytes"))

    @staticmethod
    async def _answer(send: Any, response: Any) -> None:
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class Places:
    """`limit` places inside. One that is free is taken at once; when none is, a request
    waits for one in arrival order, at most `wait` seconds (a burst is smoothed, not shed:
    a place frees every few milliseconds at the peak), then is refused."""

    def __init__(self, limit: int, wait: float) -> None:
        self.limit, self.wait = limit, wait
        self.taken = 0
        self.waiting: deque[asyncio.Future[bool]] = deque()

    async def take(self) -> bool:
        if self.taken < self.limit and not self.waiting:
            self.taken += 1
            return True
        loop = asyncio.get_running_loop()
        place = loop.create_future()
        self.waiting.append(place)
        timer = loop.call_later(self.wait, lambda: place.done() or place.set_result(False))
        try:
            got = await place
        except BaseException:  # the client went away while it waited
            if place.done() and not place.cancelled() and place.result():
                self.give_back()
            raise
        finally:
            timer.cancel()
            if place in self.waiting:
                self.waiting.remove(place)
        return got

    def give_back(self) -> None:
        """The place goes to the longest waiting request, else it is free."""
        while self.waiting:
            place = self.waiting.popleft()
            if not place.done():
                place.set_result(True)
                return
        self.taken -= 1


async def drain(receive: Any, budget: int = DRAIN_BYTES) -> None:
    """Read and drop the rest of a refused upload, within a byte and a time budget."""
    async def read() -> None:
        left = budget
        while left > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return
    try:
        await asyncio.wait_for(read(), DRAIN_SECONDS)
    except TimeoutError:
        pass


def _replay(body: bytes, receive: Any) -> Any:
    replayed = False

    async def replay() -> Any:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}
    return replay


def _with_request_id(send: Any, rid: str) -> Any:
    async def sender(message: Any) -> None:
        if message["type"] == "http.response.start":
            message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
        await send(message)
    return sender


def _without_body(send: Any) -> Any:
    async def sender(message: Any) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)
    return sender
