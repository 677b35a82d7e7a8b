"""The audit log's hash chains, as anyone can re-check them (CONTRACT.md v1.1): one per
session (`session:<id>`) and one per SOP family (`sop:<family_id>`).

hash = sha256(prev_hash + canonical JSON of the entry without its hash), the entry being
exactly what GET /api/v1/audit shows, so anyone can re-check a chain from the API alone."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from domain.changes import AuditFacts

GENESIS = "0" * 64  # the prev_hash of a chain's first entry


def session_chain(session_id: UUID) -> str:
    return f"session:{session_id}"


def sop_chain(family_id: UUID) -> str:
    return f"sop:{family_id}"


def nc_chain(nc_id: UUID) -> str:
    return f"nc:{nc_id}"


def canonical(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def entry_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(body)).encode()).hexdigest()


def hashed_body(row: Any) -> dict[str, Any]:
    """The entry as the API shows it, without its hash: what the hash covers."""
    def uid(v: Any) -> str | None:
        return None if v is None else str(v)

    return {
        "id": str(row["id"]), "at": row["at"].astimezone(UTC).isoformat(),
        "actor_id": uid(row["actor_id"]), "actor_role": row["actor_role"],
        "action": row["action"], "session_id": uid(row["session_id"]),
        "outcome": row["outcome"], "detail": row["detail"], "request_id": row["request_id"],
        "chain": row["chain"], "seq": row["seq"], "prev_hash": row["prev_hash"],
    }


def shown(row: Any) -> dict[str, Any]:
    """The entry as the API shows it: what its hash covers, and the hash."""
    return {**hashed_body(row), "hash": row["hash"]}


def verify_chain(chain: str, entries: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """(entries checked, problems) of one chain's entries as shown (`shown`), from its first:
    each links to the one before and matches its hash. Stops at the first broken entry."""
    prev = GENESIS
    for expected, e in enumerate(entries, start=1):
        where = f"{chain} seq {e.get('seq')} ({e.get('id')})"
        if e.get("chain") != chain:
            return expected, [f"{where}: on chain {e.get('chain')}, not {chain}"]
        if e.get("seq") != expected:
            return expected, [f"{chain}: expected seq {expected}, found {e.get('seq')} "
                              f"(entry missing)"]
        if e.get("prev_hash") != prev:
            return expected, [f"{where}: prev_hash does not match the previous entry"]
        body = {k: v for k, v in e.items() if k != "hash"}
        if entry_hash(prev, body) != e.get("hash"):
            return expected, [f"{where}: content does not match its hash"]
        prev = e["hash"]
    return len(entries), []


def link(chain: str, seq: int, prev_hash: str, facts: AuditFacts, at: datetime,
         session_id: UUID | None, dedup_key: str | None = None) -> dict[str, Any]:
    """The row of entry `seq` of `chain`, after `prev_hash`, with its hash."""
    row: dict[str, Any] = {
        "id": uuid4(), "chain": chain, "seq": seq, "at": at.astimezone(UTC),
        "actor_id": facts.actor_id, "actor_role": facts.actor_role, "action": facts.action,
        "session_id": session_id, "outcome": facts.outcome, "detail": facts.detail,
        "request_id": facts.request_id, "dedup_key": dedup_key, "prev_hash": prev_hash,
        "legacy": None}
    row["hash"] = entry_hash(prev_hash, hashed_body(row))
    return row


def anchor_digest(chains: list[dict[str, Any]]) -> str:
    return hashlib.sha256(canonical(chains).encode()).hexdigest()


# What a signature's `signed` entry records of it, by the signature's field: (the entry's
# place, its key). `record_hash` is the entry's prev_hash: the signed entry is the first of
# the change that signs, so the head it follows is the head the signature was bound to.
SIGNED_FIELDS = {"meaning": ("detail", "meaning"), "step_id": ("detail", "step_id"),
                 "signer_id": ("entry", "actor_id"), "signer_role": ("entry", "actor_role"),
                 "signer_name": ("detail", "signer_name"), "signed_at": ("detail", "signed_at"),
                 "statement": ("detail", "statement"), "record_hash": ("entry", "prev_hash")}


def signature_problems(chain: str, signatures: list[dict[str, Any]],
                       entries: list[dict[str, Any]]) -> list[str]:
    """Each signature of a session (as the API shows one) against the accepted `signed` entry
    of its chain that names it (`entries` as shown; its other entries are ignored): one entry
    each, recording the same meaning, step, signer, time, statement and chain head; and no
    `signed` entry naming a signature the session does not hold (one removed)."""
    signed: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        if e.get("action") == "signed" and e.get("outcome") == "accepted":
            signed.setdefault(str((e.get("detail") or {}).get("signature_id")), []).append(e)
    problems = []
    for g in signatures:
        sid = str(g.get("id"))
        what = f"{chain}: signature {sid} ({g.get('meaning')} by {g.get('signer_name')})"
        found = signed.pop(sid, [])
        if len(found) != 1:
            problems.append(f"{what}: its chain has {len(found)} `signed` entries naming it, "
                            "not 1")
            continue
        e = found[0]
        for name, (place, key) in SIGNED_FIELDS.items():
            recorded = e.get(key) if place == "entry" else (e.get("detail") or {}).get(key)
            if not _same(name, g.get(name), recorded):
                problems.append(f"{what}: its {name} {g.get(name)!r} is not the one its "
                                f"`signed` entry (seq {e.get('seq')}) records: {recorded!r}")
    for sid, es in signed.items():
        problems.append(f"{chain}: `signed` entry seq {es[0].get('seq')} records signature "
                        f"{sid}, which the session does not hold (removed)")
    return problems


def _same(name: str, a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if name == "signed_at":  # one instant, however written (`Z`, `+00:00`, a datetime)
        def instant(v: Any) -> Any:
            return v if isinstance(v, datetime) else datetime.fromisoformat(str(v))
        try:
            return instant(a) == instant(b)
        except ValueError:
            return False
    return str(a) == str(b)
