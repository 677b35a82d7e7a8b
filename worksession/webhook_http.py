"""Sending a webhook over HTTP (application/events.Send) and resolving a receiver's host: the
network half of the URL rule (domain/webhooks.py), kept at delivery time too, so that a name
that resolved to a public address when the webhook was made and to an internal one later
(DNS rebinding) reaches nothing inside: the request goes to the address just checked."""

from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit, urlunsplit

import httpx

from application.events import Answer
from domain.errors import InvalidInput
from domain.webhooks import check_addresses, parse_url


async def resolve(host: str, port: int) -> list[str]:
    """Every address the host resolves to (an IP address resolves to itself); [] when it
    does not resolve."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class HttpSender:
    """POSTs a body to a receiver: the whole exchange (the name's resolution too) within
    `timeout` seconds, redirects never followed (a 3xx is an answer that is not 2xx:
    retried), the answer's body never read."""

    def __init__(self, timeout: float = 10.0, allow_insecure: bool = False) -> None:
        self.timeout = timeout
        self.allow_insecure = allow_insecure
        self._client = httpx.AsyncClient(follow_redirects=False, timeout=timeout,
                                         trust_env=False)

    async def __call__(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        try:
            async with asyncio.timeout(self.timeout):  # a resolver that hangs too
                return await self._send(url, headers, body)
        except TimeoutError:
            return Answer(error=f"no answer within {self.timeout:g} s")

    async def _send(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        try:
            target = parse_url(url, allow_insecure=self.allow_insecure)
            addresses = check_addresses(target.host, await resolve(target.host, target.port),
                                        allow_insecure=self.allow_insecure)
        except InvalidInput as e:
            return Answer(error=e.detail)
        parts = urlsplit(url)
        ip = addresses[0]
        at = f"[{ip}]" if ":" in ip else ip
        to = urlunsplit((parts.scheme, f"{at}:{target.port}", parts.path or "/",
                         parts.query, ""))
        headers = {**headers, "host": parts.netloc.rpartition("@")[2],
                   "user-agent": "worksession-webhooks/1"}
        ext = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            async with self._client.stream("POST", to, content=body, headers=headers,
                                           extensions=ext) as r:
                code, location = r.status_code, r.headers.get("location")
        except httpx.ConnectError as e:
            return Answer(error=f"could not connect to {target.host} ({ip}): {e or 'refused'}")
        except httpx.HTTPError as e:
            return Answer(error=f"{type(e).__name__}: {e or 'connection closed'}")
        if 300 <= code < 400:
            return Answer(code, f"answered {code}, a redirect (to {location}): not followed")
        return Answer(code)

    async def close(self) -> None:
        await self._client.aclose()
