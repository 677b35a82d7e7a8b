"""Append-only audit log with one global hash chain:
hash = sha256(prev_hash + canonical JSON of the entry without its hash)."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from persistence.db import dialect_insert
from persistence.tables import audit_chain, audit_log

GENESIS = "0" * 64


@dataclass
class AuditEntry:
    action: str
    outcome: str
    actor_id: UUID | None = None
    actor_role: str | None = None
    session_id: UUID | None = None
    detail: dict[str, Any] | None = None
    request_id: str | None = None


def canonical(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def entry_hash(prev_hash: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(body)).encode()).hexdigest()


def _body(seq: int, id_: UUID, at: datetime, e: Mapping[str, Any], prev_hash: str) -> dict:
    """What the hash covers: every stored column but the hash itself."""
    def uid(v: Any) -> str | None:
        return None if v is None else str(v)

    return {
        "seq": seq, "id": str(id_), "at": at.isoformat(),
        "actor_id": uid(e["actor_id"]), "actor_role": e["actor_role"], "action": e["action"],
        "session_id": uid(e["session_id"]), "outcome": e["outcome"], "detail": e["detail"],
        "request_id": e["request_id"], "dedup_key": e["dedup_key"], "prev_hash": prev_hash,
    }


async def append(conn: AsyncConnection, entry: AuditEntry, now: datetime,
                 dedup_key: str | None = None) -> bool:
    """Append one entry to the chain. With a `dedup_key` already in the log, append nothing
    (returns False). The chain head is held from the first statement (PostgreSQL's row lock;
    SQLite's write transaction, BEGIN IMMEDIATE, holds the only write lock), so appends are
    serial and the dedup look-up, the unique index itself, is race-free. Three statements,
    built once: this runs on every accepted change."""
    conn_sqlite = conn.dialect.name == "sqlite"
    head = (await conn.execute(_HEAD if conn_sqlite else _HEAD_FOR_UPDATE)).first()
    if head is None:
        raise RuntimeError("audit chain head is missing: run `worksession migrate`")
    seq, prev = head.last_seq + 1, head.last_hash
    id_ = uuid4()
    now = now.astimezone(UTC)  # stored and read back as UTC: hash what will be read
    body = _body(seq, id_, now, {**asdict(entry), "dedup_key": dedup_key}, prev)
    digest = entry_hash(prev, body)
    row = dict(seq=seq, id=id_, at=now, actor_id=entry.actor_id, actor_role=entry.actor_role,
               action=entry.action, session_id=entry.session_id, outcome=entry.outcome,
               detail=entry.detail, request_id=entry.request_id, dedup_key=dedup_key,
               prev_hash=prev, hash=digest)
    if dedup_key is None:
        await conn.execute(_INSERT, row)
    elif (await conn.execute(_insert_once(conn_sqlite), row)).rowcount == 0:
        return False  # already in the log: the head stays as it was
    await conn.execute(_MOVE_HEAD, {"seq": seq, "hash": digest})
    return True


_HEAD = select(audit_chain.c.last_seq, audit_chain.c.last_hash).where(audit_chain.c.id == 1)
_HEAD_FOR_UPDATE = _HEAD.with_for_update()
_INSERT = audit_log.insert()
_MOVE_HEAD = (update(audit_chain).where(audit_chain.c.id == 1)
              .values(last_seq=bindparam("seq"), last_hash=bindparam("hash")))


@functools.cache
def _insert_once(is_sqlite: bool) -> Any:
    stmt = dialect_insert(is_sqlite, audit_log)
    return stmt.on_conflict_do_nothing(index_elements=[audit_log.c.dedup_key])


async def list_page(conn: AsyncConnection, session_id: UUID | None, limit: int,
                    offset: int) -> tuple[list[dict], int]:
    cond = and_(True, audit_log.c.session_id == session_id) if session_id else and_(True)
    total = (await conn.execute(select(func.count()).select_from(audit_log)
                                .where(cond))).scalar_one()
    rows = (await conn.execute(select(audit_log).where(cond).order_by(audit_log.c.seq)
                               .limit(limit).offset(offset))).mappings().all()
    return [dict(r) for r in rows], total


async def verify(conn: AsyncConnection) -> tuple[int, str | None]:
    """Walk the whole chain. Returns (entries checked, description of the first break).

    The head is read first: entries appended while this runs (seq beyond it) are left for
    the next run, so a live system is never reported broken."""
    head = (await conn.execute(select(audit_chain))).first()
    if head is None:
        return 0, "the chain head (audit_chain row) is missing"
    prev = GENESIS
    expected_seq = 1
    n = 0
    result = await conn.stream(select(audit_log).where(audit_log.c.seq <= head.last_seq)
                               .order_by(audit_log.c.seq))
    async for row in result.mappings():
        n += 1
        if row["seq"] != expected_seq:
            return n, f"entry seq {row['seq']}: expected seq {expected_seq} (entry missing)"
        if row["prev_hash"] != prev:
            return n, f"entry seq {row['seq']} ({row['id']}): prev_hash does not match the " \
                      f"previous entry's hash"
        body = _body(row["seq"], row["id"], row["at"], row, row["prev_hash"])
        if entry_hash(prev, body) != row["hash"]:
            return n, f"entry seq {row['seq']} ({row['id']}): content does not match its hash"
        prev = row["hash"]
        expected_seq += 1
    if head.last_seq != expected_seq - 1 or head.last_hash != prev:
        return n, f"chain head says {head.last_seq} entries ending in {head.last_hash[:12]}…, " \
                  f"the log has {expected_seq - 1} (entries removed at the end)"
    return n, None
