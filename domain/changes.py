"""A change of a session as the read model and the audit log record it.

Whoever took the change (the session's workflow run, or the service for approval) describes
it once, with the facts of its audit entries; whichever side writes it (the API before it
answers, the run for all it holds) writes the same thing, and it is stored once."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.nonconformance import OpenNc
from domain.signature import Signature
from domain.work_session import Check, Mark, SessionState, StepTime

SYSTEM = "system"  # actor_role of the changes the service makes by itself


@dataclass(frozen=True)
class AuditFacts:
    """Who did what, as one audit entry says it (the chain, seq and hashes are added when it
    is written)."""

    action: str
    actor_id: UUID | None
    actor_role: str
    detail: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    outcome: str = "accepted"

    def rejected(self, **detail: Any) -> AuditFacts:
        return replace(self, outcome="rejected", detail={**self.detail, **detail})

    @classmethod
    def signed(cls, sig: Signature, request_id: str | None) -> AuditFacts:
        """A signature's own audit entry (`signed`): its manifest, on the hash chain.
        Made from the signature as recorded, by whoever records it (the run sets a
        `verified` signature's time), so the two always agree."""
        return cls("signed", sig.signer_id, sig.signer_role, {
            "signature_id": str(sig.id), "meaning": sig.meaning.value,
            "step_id": str(sig.step_id) if sig.step_id else None,
            "signer_name": sig.signer_name, "signed_at": sig.signed_at.isoformat(),
            "statement": sig.statement, "manifest": sig.manifest()}, request_id)


@dataclass
class SessionChange:
    """One accepted change: the session after it (its fields only: earlier checks are already
    recorded), the checks it added, and its audit entries. `state.version` names it: versions
    only grow over a session's life, across runs, reopening and approval included."""

    state: SessionState  # with `checks` and `step_times` empty
    checks: list[Check]
    first_check_seq: int  # where `checks` stand among the session's checks
    entries: list[AuditFacts]
    at: datetime
    workflow_id: str
    run_id: str | None
    step_times: list[StepTime] = field(default_factory=list)  # those it changed
    signatures: list[Signature] = field(default_factory=list)  # those it added
    first_signature_seq: int = 0  # where `signatures` stand among the session's
    nonconformances: list[OpenNc] = field(default_factory=list)  # those it opened

    @classmethod
    def of(cls, state: SessionState, before: Mark, entries: list[AuditFacts],
           at: datetime, workflow_id: str, run_id: str | None) -> SessionChange:
        """The change that brought `state` about from where it stood `before`."""
        return cls(state=replace(state, checks=[], step_times=[], signatures=[],
                                 nonconformances=[]),
                   checks=state.checks[before.checks:], first_check_seq=before.checks,
                   entries=entries, at=at, workflow_id=workflow_id, run_id=run_id,
                   step_times=[replace(t) for t in state.step_times
                               if t.changed_in > before.version],
                   signatures=state.signatures[before.signatures:],
                   first_signature_seq=before.signatures,
                   nonconformances=[n for n in state.nonconformances
                                    if n.opened_in > before.version])

    @property
    def version(self) -> int:
        return self.state.version

    def added_check(self, check_id: UUID) -> bool:
        return any(c.id == check_id for c in self.checks)

    def added_signature_like(self, signature: Signature) -> bool:
        return any(g.repeats(signature) for g in self.signatures)
