"""The HTTP server the API runs on: uvicorn, with its protocol's one answer of its own in the
service's shape. A request uvicorn cannot parse as HTTP/1.1 (a malformed request line or
header, a bad chunk size) never reaches the app: uvicorn answers it 400 itself, in plain
text; here as every other error, an RFC 9457 problem."""

from __future__ import annotations

import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from api.problems import PROBLEM_JSON


class ProblemHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP/1.1 protocol (httptools, or h11 without it)."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({
            "type": "about:blank", "title": "Bad Request", "status": 400,
            "detail": f"{msg.rstrip('.')}: not an HTTP/1.1 request this service can read "
                      "(request line, headers or chunked body); the connection is closed"
        }).encode()
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: ", PROBLEM_JSON.encode(), b"\r\n",
                 b"content-length: ", str(len(body)).encode(), b"\r\n",
                 b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def config(app: Any, **settings: Any) -> uvicorn.Config:
    """uvicorn's settings for the API (`settings`: host, port, log level, ...)."""
    return uvicorn.Config(app, http=ProblemHTTPProtocol, **settings)
