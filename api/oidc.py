"""Tokens of an OpenID Connect provider (CONTRACT.md v1.1, "Identity providers"): Keycloak,
Okta, Entra ID, Auth0 and the like.

- Keys: the provider's JWKS (found by discovery at `<issuer>/.well-known/openid-configuration`,
  or at `WORKSESSION_JWKS_URL`), parsed by PyJWT (`PyJWKSet`), cached, and fetched again when
  a token names a key not in the cache, or when the cache is an hour old, but never more
  often than once per `refresh_every` (30 s): a stream of tokens naming made-up keys costs
  the provider one request per 30 s, not one each.
- Verification: RS256 or ES256 only (the allow-list, never the token's own `alg`); `iss`,
  `aud`, `exp` and `sub` required and checked.
- Who: a `sub` that is not a UUID becomes `uuid5(NAMESPACE_URL, iss + "#" + sub)`, the same
  every time; the role comes from the claim `role_claim`, each of its values (a string or a
  list, such as `groups`) mapped through `role_map` when one is set; the highest role
  wins; none is 403, not 401 (the person is known, the service has no role for them)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from api.auth import PROVIDER_ALGORITHMS as ALGORITHMS
from api.auth import Unauthenticated, canonical_uuid, check_numeric_dates
from application.authz import Actor, Role
from domain.errors import Forbidden, Unavailable

RANK = {Role.WORKER: 0, Role.SUPERVISOR: 1, Role.ADMIN: 2}
KEYS_MAX_AGE_SECONDS = 3600.0
MIN_RSA_BITS = 2048  # shorter RSA keys are factorable at a cost within reach (NIST SP 800-131A)


class IdentityProvider:
    def __init__(self, *, issuer: str, audience: str, jwks_url: str | None = None,
                 role_claim: str = "role", role_map: Mapping[str, str] | None = None,
                 refresh_every: float = 30.0, timeout: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.issuer, self.audience, self.jwks_url = issuer, audience, jwks_url
        self.role_claim = role_claim
        self.role_map = {k: Role(v) for k, v in (role_map or {}).items()}
        self.refresh_every, self.timeout, self.clock = refresh_every, timeout, clock
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
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
                     role=self._role(claims.get(self.role_claim)))

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
        if key is None or self._stale():
            async with self._lock:
                key = self._known(kid)
                if (key is None or self._stale()) and self._may_fetch():
                    await self._fetch()
                    key = self._known(kid)
        if key is None:
            raise Unauthenticated("invalid token: signed with a key the identity provider does "
                                  "not publish")
        return key

    def _known(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None and len(self._keys) == 1:  # a provider with one key may leave it out
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _stale(self) -> bool:
        return self._fetched_at is None or \
            self.clock() - self._fetched_at > KEYS_MAX_AGE_SECONDS

    def _may_fetch(self) -> bool:
        return self._fetched_at is None or self.clock() - self._fetched_at >= self.refresh_every

    async def _fetch(self) -> None:
        self._fetched_at = self.clock()  # failed or not: the bound holds
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as http:
                url = self.jwks_url or await self._discover(http)
                response = await http.get(url)
                response.raise_for_status()
                keys = jwt.PyJWKSet.from_dict(response.json()).keys
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as e:
            raise Unavailable(f"the identity provider's keys could not be read "
                              f"({type(e).__name__}); resend the request in a moment") from None
        self._keys = {k.key_id: k for k in keys
                      if k.public_key_use in (None, "sig") and k.algorithm_name in ALGORITHMS
                      and not (isinstance(k.key, RSAPublicKey) and k.key.key_size < MIN_RSA_BITS)}

    async def _discover(self, http: httpx.AsyncClient) -> str:
        response = await http.get(f"{self.issuer.rstrip('/')}/.well-known/openid-configuration")
        response.raise_for_status()
        doc = response.json()
        if doc.get("issuer") != self.issuer:
            raise ValueError(f"the discovery document names issuer {doc.get('issuer')!r}")
        return str(doc["jwks_uri"])


def user_id(sub: str, issuer: str) -> UUID:
    """The user's id: `sub` when it is a UUID (written canonically), else a UUID made from it,
    stable per issuer."""
    return canonical_uuid(sub) or uuid5(NAMESPACE_URL, f"{issuer}#{sub}")
