"""Signed JWTs for development and tests (`worksession token`)."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import jwt

ROLES = ("worker", "supervisor", "admin")


def parse_ttl(text: str) -> timedelta:
    m = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if not m:
        raise ValueError(f"bad TTL {text!r}: use e.g. 30m, 8h, 2d")
    n, unit = int(m.group(1)), m.group(2)
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: n})


def mint(secret: bytes, role: str, sub: UUID | None = None,
         ttl: timedelta = timedelta(hours=8), algorithm: str = "HS256",
         name: str | None = None, auth_time: datetime | None = None) -> str:
    """`name`: the person's name, as the `name` claim (the directory of people shows it).
    `auth_time` (OpenID Connect's claim: when the person authenticated) is the moment it
    signs unless given: a fresh token is fresh enough to sign with (CONTRACT.md, "Electronic
    signatures")."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    now = datetime.now(UTC)
    claims: dict[str, object] = {"sub": str(sub or uuid4()), "role": role,
                                 "iat": int(now.timestamp()),
                                 "auth_time": int((auth_time or now).timestamp()),
                                 "exp": int((now + ttl).timestamp())}
    if name is not None:
        claims["name"] = name
    return jwt.encode(claims, secret, algorithm=algorithm)


def dev_secret_path(data_dir: Path) -> Path:
    return data_dir / "jwt-secret"


def load_or_create_dev_secret(data_dir: Path) -> bytes:
    """`worksession dev` keeps its generated secret in DATA_DIR/jwt-secret (mode 600)."""
    path = dev_secret_path(data_dir)
    if path.exists():
        return path.read_text().strip().encode()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value.encode()
