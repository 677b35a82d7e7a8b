"""The audit log: one hash chain per session (`session:<id>`) and one per SOP family
(`sop:<family_id>`), no log-wide lock or chain (CONTRACT.md v1.1).

hash = sha256(prev_hash + canonical JSON of the entry without its hash), the entry being
exactly what GET /api/v1/audit shows, so anyone can re-check a chain from the API alone.
A session's chain has its head on the session's row (moved by persistence.sessions in the
same transaction as the entry); an SOP family's, in `audit_chains`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.audit_chain import (
    GENESIS,
    anchor_digest,
    link,
    nc_chain,
    session_chain,
    shown,
    signature_problems,
    sop_chain,
    verify_chain,
)
from domain.changes import AuditFacts
from persistence.db import dialect_insert
from persistence.tables import (
    audit_chains,
    audit_log,
    nonconformances,
    signatures,
    work_sessions,
)

# Built once (per dialect): they run with every change of every session.
_INSERT = audit_log.insert()


@functools.cache
def _insert_once(is_sqlite: bool) -> Any:
    return dialect_insert(is_sqlite, audit_log).on_conflict_do_nothing(
        index_elements=[audit_log.c.dedup_key])


class AuditLog:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._sqlite = conn.dialect.name == "sqlite"

    async def insert(self, rows: list[dict[str, Any]]) -> None:
        await self.conn.execute(_INSERT, rows)

    async def insert_once(self, row: dict[str, Any]) -> bool:
        """Insert unless an entry with the row's dedup_key is there; whether it was new."""
        return (await self.conn.execute(_insert_once(self._sqlite), row)).rowcount > 0

    async def append_to_sop_family(self, family_id: UUID, facts: AuditFacts,
                                   at: datetime) -> None:
        """One entry on the family's chain; its head row is held until the transaction
        ends (catalog actions and refused starts of the family queue on it, nothing else)."""
        chain = sop_chain(family_id)
        await self.conn.execute(
            dialect_insert(self._sqlite, audit_chains).on_conflict_do_nothing(
                index_elements=[audit_chains.c.chain]),
            {"chain": chain, "seq": 0, "hash": GENESIS})
        head = (await self.conn.execute(
            select(audit_chains.c.seq, audit_chains.c.hash)
            .where(audit_chains.c.chain == chain).with_for_update())).one()
        row = link(chain, head.seq + 1, head.hash, facts, at, None)
        await self.insert([row])
        await self.conn.execute(audit_chains.update().where(audit_chains.c.chain == chain)
                                .values(seq=row["seq"], hash=row["hash"]))

    async def list_page(self, session_id: UUID | None, limit: int, offset: int,
                        chain: str | None = None) -> tuple[list[dict], int]:
        """Oldest first: a session's (or one chain's) entries in their chain's order."""
        c = audit_log.c
        conds = [c.session_id == session_id] if session_id else []
        if chain:
            conds.append(c.chain == chain)
        cond = and_(True, *conds)
        total = (await self.conn.execute(select(func.count()).select_from(audit_log)
                                         .where(cond))).scalar_one()
        order = (c.chain, c.seq) if session_id or chain else (c.at, c.chain, c.seq)
        rows = (await self.conn.execute(select(audit_log).where(cond).order_by(*order)
                                        .limit(limit).offset(offset))).mappings().all()
        return [dict(r) for r in rows], total

    async def of_session(self, session_id: UUID) -> list[dict[str, Any]]:
        """Every entry of one session, in its chain's order, as the API shows them."""
        return await self._shown(audit_log.c.session_id == session_id)

    async def of_chain(self, chain: str) -> list[dict[str, Any]]:
        """Every entry of one chain (an NC's: `nc:<id>`), in order, as the API shows them."""
        return await self._shown(audit_log.c.chain == chain)

    async def _shown(self, cond: Any) -> list[dict[str, Any]]:
        c = audit_log.c
        rows = (await self.conn.execute(select(audit_log).where(cond)
                                        .order_by(c.chain, c.seq))).mappings().all()
        return [shown(r) for r in rows]

    # ---- verification ----------------------------------------------------------------------
    async def heads(self) -> dict[str, tuple[int, str]]:
        """Every chain's head as the database records it apart from the log itself."""
        out = {session_chain(r.id): (r.audit_seq, r.audit_hash) for r in await self.conn.execute(
            select(work_sessions.c.id, work_sessions.c.audit_seq, work_sessions.c.audit_hash)
            .where(work_sessions.c.audit_seq > 0))}
        out.update({r.chain: (r.seq, r.hash)
                    for r in await self.conn.execute(select(audit_chains))})
        out.update({nc_chain(r.id): (r.audit_seq, r.audit_hash) for r in await self.conn.execute(
            select(nonconformances.c.id, nonconformances.c.audit_seq,
                   nonconformances.c.audit_hash).where(nonconformances.c.audit_seq > 0))})
        return out

    async def _chains(self) -> AsyncIterator[tuple[str, list[Any]]]:
        result = await self.conn.stream(select(audit_log).order_by(audit_log.c.chain,
                                                                   audit_log.c.seq))
        chain: str | None = None
        rows: list[Any] = []
        async for row in result.mappings():
            if row["chain"] != chain and chain is not None:
                yield chain, rows
                rows = []
            chain = row["chain"]
            rows.append(row)
        if chain is not None:
            yield chain, rows

    async def verify(self, anchor: dict[str, Any] | None = None) -> tuple[int, list[str]]:
        """Walk every chain. Returns (entries checked, problems found). Each chain must link
        from seq 1, every hash must match its entry, and each chain must end where its head
        says (a session's row, an SOP family's head row); with an `anchor`, every anchored
        chain must still hold the anchored entry, unchanged.

        Read it in a snapshot (`SqlStore(db)(read_only=True, snapshot=True)`) on a live database:
        otherwise an entry appended while it runs may show as one beyond its head."""
        heads = await self.heads()
        anchored = {c["chain"]: c for c in (anchor or {}).get("chains", [])}
        problems: list[str] = []
        n = 0
        seen: set[str] = set()
        signed: dict[str, list[dict[str, Any]]] = {}  # each chain's `signed` entries
        async for chain, rows in self._chains():
            seen.add(chain)
            entries = [shown(r) for r in rows]
            signed[chain] = [e for e in entries if e["action"] == "signed"]
            checked, found = verify_chain(chain, entries)
            n += checked
            if found:
                problems += found
                continue
            prev = entries[-1]["hash"]
            hashes = {e["seq"]: e["hash"] for e in entries}
            length = len(rows)
            head = heads.get(chain)
            if head is None:
                problems.append(f"{chain}: {length} entries but no head records the chain")
            elif head != (length, prev):
                problems.append(f"{chain}: its head says {head[0]} entries ending in "
                                f"{head[1][:12]}…, the log has {length} ending in {prev[:12]}… "
                                f"(entries removed or added at the end)")
            if chain in anchored:
                a = anchored[chain]
                if hashes.get(a["seq"]) != a["hash"]:
                    problems.append(f"{chain}: the anchor holds entry {a['seq']} "
                                    f"({a['hash'][:12]}…), the log does not")
        for chain, (seq, _) in heads.items():
            if chain not in seen and seq > 0:
                problems.append(f"{chain}: its head says {seq} entries, the log has none")
        for chain in anchored.keys() - seen:
            problems.append(f"{chain}: anchored, but the log has no entry of it")
        held = await self._signatures()
        for chain in sorted(held.keys() | {c for c, es in signed.items() if es}):
            problems += signature_problems(chain, held.get(chain, []), signed.get(chain, []))
        return n, problems

    async def _signatures(self) -> dict[str, list[dict[str, Any]]]:
        """Every signature, by its chain: a session's (few: one to three a session), and the
        closing signature of each closed NC (kept on its row)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for r in (await self.conn.execute(select(signatures).order_by(
                signatures.c.session_id, signatures.c.seq))).mappings():
            out.setdefault(session_chain(r["session_id"]), []).append(dict(r))
        for nc_id, signature in (await self.conn.execute(
                select(nonconformances.c.id, nonconformances.c.signature).where(
                    nonconformances.c.signature.is_not(None)))).all():
            if signature:  # JSON null reads back as None on one dialect, 'null' on another
                out.setdefault(nc_chain(nc_id), []).append(signature)
        return out

    async def anchor(self, now: datetime) -> dict[str, Any]:
        """The head of every chain, as the log holds it, with one digest over them: kept
        outside the database, it proves later that no chain lost or rewrote an entry."""
        chains = []
        async for chain, rows in self._chains():
            chains.append({"chain": chain, "seq": rows[-1]["seq"], "hash": rows[-1]["hash"]})
        return {"at": now.astimezone(UTC).isoformat(), "chains": chains,
                "digest": anchor_digest(chains)}
