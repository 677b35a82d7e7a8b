"""Domain errors. Each carries a stable `code` and a JSON-safe payload so it can cross the
Temporal boundary (as an ApplicationError type + details) and come back as the same class."""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    code: ClassVar[str] = "domain-error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def payload(self) -> dict[str, Any]:
        return {"detail": self.detail, **self.extra}


class NotFound(DomainError):
    code = "not-found"


class Forbidden(DomainError):
    code = "forbidden"


class InvalidInput(DomainError):
    """The request is well-formed JSON but breaks a rule of the domain (HTTP 422)."""

    code = "invalid-input"


class ReauthenticationRequired(DomainError):
    """A signature needs its signer freshly authenticated (HTTP 401, `max_age` in seconds)."""

    code = "reauthentication-required"


class Conflict(DomainError):
    code = "conflict"


class SessionLocked(Conflict):
    code = "session-locked"


class WrongState(Conflict):
    code = "wrong-state"


class StepNotCurrent(Conflict):
    code = "step-not-current"


class StepAwaitsVerification(Conflict):
    """The current step's passed check waits for a second person's `verified` signature."""

    code = "awaiting-verification"


class StepNotAwaitingVerification(Conflict):
    """A `verified` signature names a step that is not waiting for one."""

    code = "not-awaiting-verification"


class SessionHeld(Conflict):
    """The session is held on a step until its nonconformance is contained (`on_fail`
    `hold`); the payload names it (`nonconformance_id`)."""

    code = "held"


class NcWrongState(Conflict):
    """A nonconformance contained or closed in the wrong state."""

    code = "nonconformance-wrong-state"


class ActiveSessionExists(Conflict):
    code = "active-session-exists"


class SopNotStartable(Conflict):
    code = "sop-not-startable"


class SopNotEditable(Conflict):
    code = "sop-not-editable"


class SopHasActiveSessions(DomainError):
    code = "sop-has-active-sessions"


class Unavailable(DomainError):
    """A dependency (database, Temporal) did not answer in time."""

    code = "unavailable"


def _all_subclasses(cls: type[DomainError]) -> list[type[DomainError]]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


ERRORS_BY_CODE: dict[str, type[DomainError]] = {
    c.code: c for c in [DomainError, *_all_subclasses(DomainError)]
}


def error_from_payload(code: str, payload: dict[str, Any] | None) -> DomainError:
    payload = dict(payload or {})
    detail = payload.pop("detail", code)
    return ERRORS_BY_CODE.get(code, DomainError)(detail, **payload)
