"""Bearer JWT authentication: an allow-list of algorithms (never the token's own `alg`),
`exp` and `sub` required, dates JSON numbers, `sub` a UUID, `role` one of the three roles."""

from __future__ import annotations

from uuid import UUID

import jwt

from application.authz import Actor, Role

NUMERIC_DATES = ("exp", "nbf", "iat")


class Unauthenticated(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def authenticate(authorization: str | None, secret: bytes, algorithms: list[str]) -> Actor:
    if not authorization:
        raise Unauthenticated("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    try:
        claims = jwt.decode(token.strip(), secret, algorithms=algorithms,
                            options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("token expired") from None
    except jwt.PyJWTError as e:
        raise Unauthenticated(f"invalid token: {e}") from None
    for name in NUMERIC_DATES:
        # PyJWT takes "9999999999" for a date; RFC 7519 (and the contract) want a number.
        value = claims.get(name)
        if value is not None and (isinstance(value, bool)
                                  or not isinstance(value, int | float)):
            raise Unauthenticated(f"invalid token: '{name}' must be a number")
    try:
        sub = UUID(str(claims["sub"]))
    except ValueError:
        raise Unauthenticated("token 'sub' must be a UUID") from None
    try:
        role = Role(claims.get("role"))
    except ValueError:
        raise Unauthenticated("token 'role' must be worker, supervisor or admin") from None
    return Actor(id=sub, role=role)
