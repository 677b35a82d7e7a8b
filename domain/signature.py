"""Electronic signatures (CONTRACT.md, "Electronic signatures"): a named person, freshly
authenticated, puts their name to a session with a stated meaning (21 CFR Part 11). A
signature is never changed or removed once recorded."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

STATEMENT_MAX = 500


class Meaning(StrEnum):
    PERFORMED = "performed"  # the session's worker: I did this work
    VERIFIED = "verified"  # a second person: I saw this step done (releases it)
    APPROVED = "approved"  # a supervisor: the record is complete (locks it)


@dataclass(frozen=True, kw_only=True)
class Signature:
    id: UUID
    session_id: UUID
    meaning: Meaning
    step_id: UUID | None
    signer_id: UUID
    signer_name: str
    signer_role: str
    signed_at: datetime
    statement: str | None = None
    # The session's audit-chain head when the signature was written: set by the write that
    # records it (persistence: read under the session's row lock), None until then.
    record_hash: str | None = None

    def repeats(self, other: Signature) -> bool:
        """Whether `other` is this signature asked for again: the same person, meaning and
        step on the same session (a resend after an answer that was lost)."""
        return (self.session_id, self.meaning, self.step_id, self.signer_id) == (
            other.session_id, other.meaning, other.step_id, other.signer_id)

    def manifest(self) -> str:
        """The signature as a person reads it on the record: printed name, date and time
        with its zone, meaning (and step), statement."""
        at = self.signed_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
        step = f" (step {self.step_id})" if self.step_id else ""
        said = f": \"{self.statement}\"" if self.statement else ""
        return f"{self.signer_name}, {at}, {self.meaning.value}{step}{said}"
