"""Bearer JWT authentication: an allow-list of algorithms (never the token's own `alg`),
`exp` and `sub` required, dates JSON numbers.

Two kinds of token (CONTRACT.md): the shared secret's (HS256 by default; `sub` a UUID,
`role` one of the three roles), and, when an identity provider is configured, its own
(RS256/ES256, api/oidc.py). A token's header says which kind it claims to be; each kind is
then verified with its own key and its own allow-list, so a token claiming HS256 is checked
with the shared secret only, never with a provider's public key.

Either kind may name the person (`name`, else `preferred_username`: `name_of`); a token
without a usable name is accepted all the same."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import jwt

from application.authz import Actor, Role
from domain.people import display_name

if TYPE_CHECKING:
    from api.oidc import IdentityProvider

NUMERIC_DATES = ("exp", "nbf", "iat", "auth_time")
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
PROVIDER_ALGORITHMS = ["RS256", "ES256"]  # an identity provider's tokens, and only these


class Unauthenticated(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Authenticator:
    def __init__(self, secret: bytes | None, algorithms: list[str],
                 provider: IdentityProvider | None = None) -> None:
        self.secret, self.algorithms, self.provider = secret, list(algorithms), provider

    async def actor(self, authorization: str | None) -> Actor:
        token = _bearer(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise Unauthenticated(f"invalid token: {e}") from None
        if self.provider is not None and header.get("alg") in PROVIDER_ALGORITHMS:
            return await self.provider.actor(token, header)
        if self.secret is None:
            raise Unauthenticated("invalid token: only the identity provider's tokens "
                                  f"({', '.join(PROVIDER_ALGORITHMS)}) are accepted")
        return _shared_secret(token, self.secret, self.algorithms)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _shared_secret(token: str, secret: bytes, algorithms: list[str]) -> Actor:
    try:
        claims = jwt.decode(token, secret, algorithms=algorithms,
                            options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("token expired") from None
    except jwt.PyJWTError as e:
        raise Unauthenticated(f"invalid token: {e}") from None
    check_numeric_dates(claims)
    sub = canonical_uuid(claims["sub"])
    if sub is None:
        raise Unauthenticated("token 'sub' must be a UUID (lowercase, 8-4-4-4-12 hex digits)")
    try:
        role = Role(claims.get("role"))
    except ValueError:
        raise Unauthenticated("token 'role' must be worker, supervisor or admin") from None
    return Actor(id=sub, role=role, name=name_of(claims), auth_time=auth_time_of(claims))


def name_of(claims: Mapping[str, Any]) -> str | None:
    """The person's name to show: the `name` claim, else `preferred_username` (OpenID
    Connect's standard claims), each taken only if it is a string with something to show,
    cleaned and cut as domain.people.display_name says; else None."""
    return display_name(claims.get("name"), claims.get("preferred_username"))


def auth_time_of(claims: Mapping[str, Any]) -> datetime | None:
    """When the person authenticated: OpenID Connect's `auth_time`, else the token's `iat`
    (a token minted at sign-in); None when it has neither. Call after check_numeric_dates."""
    value = claims.get("auth_time", claims.get("iat"))
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):  # a date no clock reads
        raise Unauthenticated("invalid token: 'auth_time' is not a date") from None


def canonical_uuid(sub: object) -> UUID | None:
    """`sub` as a UUID when written the one way `str(UUID)` writes one. `UUID()` also reads
    `urn:uuid:…`, `{…}`, upper case, 32 bare digits and any hyphens: each such spelling of a
    user's id would otherwise be that user."""
    if isinstance(sub, str) and CANONICAL_UUID.fullmatch(sub):
        return UUID(sub)
    return None


def check_numeric_dates(claims: Mapping[str, Any]) -> None:
    for name in NUMERIC_DATES:
        # PyJWT takes "9999999999" for a date; RFC 7519 (and the contract) want a number.
        value = claims.get(name)
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, int | float)):
            raise Unauthenticated(f"invalid token: '{name}' must be a number")
