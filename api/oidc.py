"""Tokens of an OpenID Connect provider (CONTRACT.md v1.1, "Identity providers"): Keycloak,
Okta, Entra ID, Auth0 and the like.

- Keys: the provider's JWKS (found by discovery at `<issuer>/.well-known/openid-configuration`,
  or at `WORKSESSION_JWKS_URL`; https, or http to this machine only), parsed by PyJWT
  (`PyJWKSet`), signing keys of RS256 (2048 bits or more) and ES256 kept, cached. They are
  read again when a token names a key not in the cache, or when the cache is an hour old,
  within a budget (a token bucket: 3 reads at once, then one per 20 s): a just-rotated key is
  read at its first token, and a stream of made-up key ids costs the provider at most 3
  requests a minute. A read has one deadline in all (5 s) and at most 1 MiB per document.
- Unknown keys: 401 when the provider, asked, does not publish the key (or asked just now and
  the budget is spent); 503 with Retry-After when it could not be asked (down, slow, answering
  nonsense): a key we could not look up proves nothing about the token. Cached keys go on
  serving while the provider is down.
- Verification: RS256 or ES256 only (the allow-list, never the token's own `alg`), each key
  with its own algorithm (a header naming another is 401); `iss`, `aud`, `exp` and `sub`
  required and checked.
- Who: a `sub` that is a UUID written as `str(UUID)` writes one (lowercase 8-4-4-4-12) is
  the user's id; any other `sub` becomes `uuid5(NAMESPACE_URL, iss + "#" + sub)`, the same every
  time; the role comes from the claim `role_claim`, each of its values (a string or a list,
  such as `groups`) mapped through `role_map` when one is set (a claim other than `role` needs
  one: worksession/settings.py refuses to start without); the highest role wins; none is 403,
  not 401 (the person is known, the service has no role for them)."""


from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from api.auth import PROVIDER_ALGORITHMS as ALGORITHMS
from api.auth import (
    Unauthenticated,
    auth_time_of,
    canonical_uuid,
    check_numeric_dates,
    name_of,
)
from application.authz import Actor, Role
from domain.errors import Forbidden, Unavailable
from worksession.settings import https_or_loopback

log = logging.getLogger("worksession.api")

RANK = {Role.WORKER: 0, Role.SUPERVISOR: 1, Role.ADMIN: 2}
KEYS_MAX_AGE_SECONDS = 3600.0
# Reads of the provider's keys (for a key id not in the cache, or the hourly one): 3 at once
# (a just-rotated key is read at its first token, even right after another read), then one
# per 20 s: a stream of made-up key ids costs the provider at most 3 requests a minute.
FETCH_BURST, FETCH_EVERY_SECONDS = 3, 20.0
FETCH_DEADLINE_SECONDS = 5.0  # one read (discovery and key set) in all; requests wait on it
MAX_DOCUMENT_BYTES = 1024 * 1024  # a discovery document or key set is a few KiB
MIN_RSA_BITS = 2048  # shorter RSA keys are factorable at a cost within reach (NIST SP 800-131A)


class IdentityProvider:
    def __init__(self, *, issuer: str, audience: str, jwks_url: str | None = None,
                 role_claim: str = "role", role_map: Mapping[str, str] | None = None,
                 fetch_burst: int = FETCH_BURST, fetch_every: float = FETCH_EVERY_SECONDS,
                 deadline: float = FETCH_DEADLINE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer, self.audience, self.jwks_url = issuer, audience, jwks_url
        self.role_claim = role_claim
        self.role_map = {k: Role(v) for k, v in (role_map or {}).items()}
        self.deadline, self.clock = deadline, clock
        self._budget = Budget(fetch_burst, fetch_every, clock)
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._read_at: float | None = None  # the last read that succeeded
        self._unread: str | None = "not read yet"  # why the last read failed; None: it did not
        self._reads = 0  # reads finished, so that one answers all who waited for it
        self._lock = asyncio.Lock()

    async def actor(self, token: str, header: Mapping[str, Any]) -> Actor:
        key = await self._key(header.get("kid"))
        if header.get("alg") != key.algorithm_name:
            # The key's own algorithm decides: PyJWT given ES256 and an RSA key fails with a
            # TypeError, not a verdict on the token.
            raise Unauthenticated(f"invalid token: its key signs with {key.algorithm_name}, "
                                  f"not {header.get('alg')}")
        try:
            claims = jwt.decode(token, key.key, algorithms=[key.algorithm_name],
                                audience=self.audience,
                                issuer=self.issuer,
                                options={"require": ["exp", "sub", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"invalid token: {e}") from None
        check_numeric_dates(claims)
        return Actor(id=user_id(str(claims["sub"]), str(claims["iss"])),
                     role=self._role(claims.get(self.role_claim)), name=name_of(claims),
                     auth_time=auth_time_of(claims))

    def _role(self, claim: object) -> Role:
        values = claim if isinstance(claim, list) else [claim]
        if self.role_map:
            roles = [self.role_map[v] for v in values if isinstance(v, str) and v in self.role_map]
        else:
            roles = [Role(v) for v in values if isinstance(v, str) and v in Role._value2member_map_]
        if not roles:
            raise Forbidden(f"the token's '{self.role_claim}' claim names no role of this "
                            "service (worker, supervisor or admin)")
        return max(roles, key=RANK.__getitem__)

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        key = self._known(kid)
        if key is not None and (not self._stale() or self._lock.locked()):
            return key  # while a refresh is under way, the cached key serves
        reads = self._reads
        async with self._lock:
            # A read finished while we waited has answered us too: no second wait, no second
            # request to the provider. Else we read, if the budget allows.
            if self._reads == reads and self._budget.take():
                await self._read()
        key = self._known(kid)
        if key is not None:
            return key
        if self._unread is not None:  # not knowing a key we could not ask for proves nothing
            raise Unavailable(f"the identity provider's keys could not be read ({self._unread}"
                              "); resend the request in a moment")
        raise Unauthenticated("invalid token: signed with a key the identity provider does "
                              "not publish")

    def _known(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:  # a provider with one key may leave it out
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _stale(self) -> bool:
        return self._read_at is None or self.clock() - self._read_at > KEYS_MAX_AGE_SECONDS

    async def _read(self) -> None:
        """One read of the provider's keys, within `deadline` in all. On failure the cached
        keys stay in use, and why is kept (for the 503 of a key not among them)."""
        try:
            async with asyncio.timeout(self.deadline), \
                    httpx.AsyncClient(timeout=self.deadline) as http:
                url = self.jwks_url or await self._discover(http)
                keys = jwt.PyJWKSet.from_dict(await _json_object(http, url)).keys
        except (TimeoutError, httpx.HTTPError, httpx.InvalidURL, ValueError, RecursionError,
                jwt.PyJWTError) as e:
            self._unread = type(e).__name__
            log.warning("could not read the identity provider's keys: %s: %s; %d cached keys "
                        "stay in use", type(e).__name__, e, len(self._keys))
            return
        finally:
            self._reads += 1
        self._keys = {k.key_id: k for k in keys
                      if k.public_key_use in (None, "sig") and k.algorithm_name in ALGORITHMS
                      and not (isinstance(k.key, RSAPublicKey) and k.key.key_size < MIN_RSA_BITS)}
        self._read_at, self._unread = self.clock(), None

    async def _discover(self, http: httpx.AsyncClient) -> str:
        issuer = self.issuer.rstrip("/")
        doc = await _json_object(http, f"{issuer}/.well-known/openid-configuration")
        if doc.get("issuer") != self.issuer:
            raise ValueError(f"the discovery document names issuer {doc.get('issuer')!r}")
        url = doc.get("jwks_uri")
        if not isinstance(url, str) or not https_or_loopback(url):
            raise ValueError(f"the discovery document's jwks_uri, {url!r}, is not an https "
                             "address (nor http to this machine)")
        return url


class Budget:
    """A token bucket: `burst` reads at once, then one more each `every` seconds."""

    def __init__(self, burst: int, every: float, clock: Callable[[], float]) -> None:
        self.burst, self.every, self.clock = burst, every, clock
        self.tokens, self.at = float(burst), clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) / self.every)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


async def _json_object(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """A JSON object from `url`, read to at most MAX_DOCUMENT_BYTES."""
    async with http.stream("GET", url) as response:
        response.raise_for_status()
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ValueError(f"{url} sent JSON that is not an object")
    return doc


def user_id(sub: str, issuer: str) -> UUID:
    """The user's id: `sub` when it is a UUID (written canonically), else a UUID made from it,
    stable per issuer."""
    return canonical_uuid(sub) or uuid5(NAMESPACE_URL, f"{issuer}#{sub}")
