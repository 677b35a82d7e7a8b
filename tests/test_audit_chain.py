"""The audit log's global hash chain (persistence/audit.py): appends link, every kind of
tampering is found by `verify` and by `worksession audit verify`, concurrent appends stay
gapless. Each tamper test gets its OWN fresh database: the session `db` is shared."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import delete, func, select, update

from persistence.audit import GENESIS, AuditEntry, append, verify
from persistence.db import Database
from persistence.migrate import upgrade_async
from persistence.tables import audit_chain, audit_log

IS_PG = os.environ.get("WORKSESSION_TEST_DATABASE", "sqlite") == "postgresql"
PG_ADMIN_URL = os.environ.get("WORKSESSION_TEST_PG",
                              "postgresql+asyncpg://postgres@127.0.0.1:5432")
T0 = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
N = 12
SESSION = uuid4()
ACTOR = uuid4()


@pytest.fixture
async def fresh_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated database of its own (SQLite file, or a new PostgreSQL database)."""
    if IS_PG:
        import asyncpg

        name = f"worksession_audit_{uuid.uuid4().hex[:12]}"
        dsn = PG_ADMIN_URL.replace("postgresql+asyncpg", "postgresql") + "/postgres"
        admin = await asyncpg.connect(dsn)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        url = f"{PG_ADMIN_URL}/{name}"
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'a.db'}"
    database = Database(url)
    try:
        await upgrade_async(url)
        yield database
    finally:
        await database.dispose()
        if IS_PG:
            admin = await asyncpg.connect(dsn)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


def entry(i: int) -> AuditEntry:
    """Varied entries: some with a session, actor and unicode/nested detail, some bare."""
    if i % 3 == 0:
        return AuditEntry(action="sop_delete", outcome="accepted")
    return AuditEntry(
        action="check" if i % 2 else "session_start", outcome="accepted" if i % 4 else "rejected",
        actor_id=ACTOR, actor_role="worker", session_id=SESSION if i % 2 else uuid4(),
        detail={"i": i, "note": f"Prüfung ✓ 電圧 «{i}» 🚧", "value": i / 7,
                "nested": {"z": [1, "ü", None, True], "a": {"b": "c"}}},
        request_id=f"req-{i}")


async def fill(db: Database, n: int = N) -> None:
    for i in range(1, n + 1):
        async with db.write() as conn:
            assert await append(conn, entry(i), T0 + timedelta(seconds=i, microseconds=i))


async def check(db: Database) -> tuple[int, str | None]:
    async with db.read() as conn:
        return await verify(conn)


async def rows(db: Database) -> list[dict[str, Any]]:
    async with db.read() as conn:
        return [dict(r) for r in
                (await conn.execute(select(audit_log).order_by(audit_log.c.seq))).mappings()]


async def head(db: Database) -> Any:
    async with db.read() as conn:
        return (await conn.execute(select(audit_chain))).one()


def names_seq(broken: str | None, seq: int) -> bool:
    return broken is not None and re.search(rf"\bseq {seq}\b", broken) is not None


def recompute(row: dict[str, Any], prev_hash: str) -> str:
    """The documented formula, written out independently of persistence.audit:
    sha256(prev_hash + canonical JSON of the entry without its hash)."""
    body = {
        "seq": row["seq"], "id": str(row["id"]), "at": row["at"].isoformat(),
        "actor_id": None if row["actor_id"] is None else str(row["actor_id"]),
        "actor_role": row["actor_role"], "action": row["action"],
        "session_id": None if row["session_id"] is None else str(row["session_id"]),
        "outcome": row["outcome"], "detail": row["detail"], "request_id": row["request_id"],
        "dedup_key": row["dedup_key"], "prev_hash": prev_hash,
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()


async def test_intact_chain_of_n_entries_verifies_and_hashes_link(fresh_db: Database) -> None:
    assert await check(fresh_db) == (0, None)  # the empty chain is intact too
    await fill(fresh_db)
    assert await check(fresh_db) == (N, None)

    log = await rows(fresh_db)
    assert [r["seq"] for r in log] == list(range(1, N + 1))
    assert log[0]["prev_hash"] == GENESIS == "0" * 64
    for before, after in zip(log, log[1:], strict=False):
        assert after["prev_hash"] == before["hash"]
    for r in log:
        assert re.fullmatch(r"[0-9a-f]{64}", r["hash"])
        assert recompute(r, r["prev_hash"]) == r["hash"]
    assert len({r["hash"] for r in log}) == N
    # Stored content round-trips (unicode, nesting, ids, timestamps).
    assert log[0]["detail"]["note"] == "Prüfung ✓ 電圧 «1» 🚧"
    assert log[0]["session_id"] == SESSION and log[0]["actor_id"] == ACTOR
    assert log[2]["detail"] is None and log[2]["session_id"] is None
    assert log[4]["at"] == T0 + timedelta(seconds=5, microseconds=5)
    h = await head(fresh_db)
    assert (h.last_seq, h.last_hash) == (N, log[-1]["hash"])


TAMPERS: list[Any] = [
    pytest.param("detail", {"i": 5, "note": "harmless"}, id="detail"),
    pytest.param("detail", None, id="detail-removed"),
    pytest.param("outcome", "rejected", id="outcome"),
    pytest.param("actor_id", uuid4(), id="actor_id"),
    pytest.param("actor_id", None, id="actor_id-removed"),
    pytest.param("at", T0 + timedelta(seconds=5, microseconds=6), id="at-one-microsecond"),
    pytest.param("at", T0 - timedelta(days=1), id="at-backdated"),
    pytest.param("action", "sop_delete", id="action"),
    pytest.param("actor_role", "admin", id="actor_role"),
    pytest.param("session_id", uuid4(), id="session_id"),
    pytest.param("request_id", "req-forged", id="request_id"),
    pytest.param("id", uuid4(), id="id"),
    pytest.param("hash", "f" * 64, id="hash"),
    pytest.param("prev_hash", "e" * 64, id="prev_hash"),
    pytest.param("dedup_key", "forged-key", id="dedup_key"),
]


@pytest.mark.parametrize(("column", "value"), TAMPERS)
async def test_editing_a_field_of_a_row_is_detected_naming_its_seq(
        fresh_db: Database, column: str, value: Any) -> None:
    await fill(fresh_db)
    async with fresh_db.write() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 5).values({column: value}))
    n, broken = await check(fresh_db)
    assert names_seq(broken, 5), broken
    assert n == 5


async def test_rewriting_detail_as_equal_json_in_another_key_order_is_not_a_break(
        fresh_db: Database) -> None:
    """The hash is over canonical JSON, so the stored JSON's key order does not matter."""
    await fill(fresh_db)
    original = (await rows(fresh_db))[4]["detail"]
    reordered = dict(reversed(list(original.items())))
    reordered["nested"] = dict(reversed(list(original["nested"].items())))
    async with fresh_db.write() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 5)
                           .values(detail=reordered))
    assert await check(fresh_db) == (N, None)


@pytest.mark.parametrize("seq", [1, 6])
async def test_deleting_a_row_before_the_end_is_detected_as_a_missing_seq(
        fresh_db: Database, seq: int) -> None:
    await fill(fresh_db)
    async with fresh_db.write() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.seq == seq))
    _, broken = await check(fresh_db)
    assert names_seq(broken, seq + 1) and f"expected seq {seq}" in broken, broken
    assert "missing" in broken


async def test_deleting_the_last_row_is_detected_through_the_chain_head(
        fresh_db: Database) -> None:
    await fill(fresh_db)
    async with fresh_db.write() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.seq == N))
    n, broken = await check(fresh_db)
    assert n == N - 1
    assert broken is not None and "removed at the end" in broken, broken
    assert f"says {N} entries" in broken and f"has {N - 1}" in broken


async def test_deleting_the_last_rows_and_rewinding_the_head_seq_only_is_detected(
        fresh_db: Database) -> None:
    """Truncating and fixing last_seq alone still leaves last_hash pointing past the end."""
    await fill(fresh_db)
    async with fresh_db.write() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.seq > N - 2))
        await conn.execute(update(audit_chain).values(last_seq=N - 2))
    _, broken = await check(fresh_db)
    assert broken is not None and "removed at the end" in broken, broken


async def test_deleting_the_chain_head_row_with_the_last_entries_is_detected(
        fresh_db: Database) -> None:
    await fill(fresh_db)
    async with fresh_db.write() as conn:
        await conn.execute(delete(audit_log).where(audit_log.c.seq > N - 3))
        await conn.execute(delete(audit_chain))
    _, broken = await check(fresh_db)
    assert broken is not None


async def test_swapping_the_content_of_two_rows_is_detected(fresh_db: Database) -> None:
    await fill(fresh_db)
    a, b = (await rows(fresh_db))[3:5]  # seq 4 and 5
    content = [c.name for c in audit_log.c if c.name != "seq"]
    async with fresh_db.write() as conn:
        # Park row 4's unique values first, then move each row's content onto the other seq.
        await conn.execute(update(audit_log).where(audit_log.c.seq == 4)
                           .values(id=uuid4(), dedup_key=None))
        await conn.execute(update(audit_log).where(audit_log.c.seq == 5)
                           .values({k: a[k] for k in content}))
        await conn.execute(update(audit_log).where(audit_log.c.seq == 4)
                           .values({k: b[k] for k in content}))
    swapped = await rows(fresh_db)
    assert (swapped[3]["id"], swapped[4]["id"]) == (b["id"], a["id"])
    _, broken = await check(fresh_db)
    assert names_seq(broken, 4), broken


async def test_swapping_the_seq_values_of_two_rows_is_detected(fresh_db: Database) -> None:
    await fill(fresh_db)
    async with fresh_db.write() as conn:
        for old, new in ((4, -1), (5, 4), (-1, 5)):
            await conn.execute(update(audit_log).where(audit_log.c.seq == old).values(seq=new))
    _, broken = await check(fresh_db)
    assert names_seq(broken, 4), broken


async def test_recomputing_a_tampered_rows_own_hash_is_still_detected_at_the_next_row(
        fresh_db: Database) -> None:
    await fill(fresh_db)
    row = (await rows(fresh_db))[4]
    row["outcome"] = "rejected"
    row["detail"] = {"forged": "ja ✓"}
    forged = recompute(row, row["prev_hash"])
    async with fresh_db.write() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 5).values(
            outcome=row["outcome"], detail=row["detail"], hash=forged))
    _, broken = await check(fresh_db)
    assert names_seq(broken, 6) and "prev_hash" in broken, broken
    assert not names_seq(broken, 5)


async def test_recomputing_the_hash_of_the_last_row_is_detected_through_the_chain_head(
        fresh_db: Database) -> None:
    await fill(fresh_db)
    row = (await rows(fresh_db))[-1]
    row["outcome"] = "rejected"
    async with fresh_db.write() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == N).values(
            outcome="rejected", hash=recompute(row, row["prev_hash"])))
    _, broken = await check(fresh_db)
    assert broken is not None and "chain head" in broken, broken


async def run_cli(url: str) -> tuple[int, str]:
    exe = Path(sys.executable).parent / "worksession"
    env = {**os.environ, "WORKSESSION_DATABASE_URL": url}
    proc = await asyncio.create_subprocess_exec(
        str(exe), "audit", "verify", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_cli_audit_verify_exits_0_when_intact_and_1_naming_the_entry_after_tampering(
        fresh_db: Database) -> None:
    await fill(fresh_db)
    code, out = await run_cli(fresh_db.url)
    assert code == 0, out
    assert f"intact: {N} entries" in out

    victim = (await rows(fresh_db))[6]
    async with fresh_db.write() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == 7)
                           .values(detail={"i": 7, "note": "edited"}))
    code, out = await run_cli(fresh_db.url)
    assert code == 1, out
    assert "BROKEN" in out and names_seq(out, 7) and str(victim["id"]) in out, out


async def test_concurrent_appends_produce_a_gapless_chain_that_verifies(
        fresh_db: Database) -> None:
    n = 50

    async def one(i: int) -> bool:
        async with fresh_db.write() as conn:
            return await append(conn, entry(i), datetime.now(UTC))

    assert all(await asyncio.gather(*(one(i) for i in range(n))))
    log = await rows(fresh_db)
    assert [r["seq"] for r in log] == list(range(1, n + 1))
    assert sorted(r["request_id"] or "" for r in log) \
        == sorted(entry(i).request_id or "" for i in range(n))
    assert await check(fresh_db) == (n, None)
    h = await head(fresh_db)
    assert (h.last_seq, h.last_hash) == (n, log[-1]["hash"])


async def test_appending_twice_with_the_same_dedup_key_stores_one_entry(
        fresh_db: Database) -> None:
    await fill(fresh_db, 3)
    async with fresh_db.write() as conn:
        assert await append(conn, entry(4), T0 + timedelta(minutes=1), dedup_key="check:42")
    async with fresh_db.write() as conn:
        assert not await append(conn, entry(4), T0 + timedelta(minutes=2), dedup_key="check:42")
    async with fresh_db.write() as conn:  # the next entry follows without a gap
        assert await append(conn, entry(5), T0 + timedelta(minutes=3), dedup_key="check:43")
    log = await rows(fresh_db)
    assert [r["seq"] for r in log] == [1, 2, 3, 4, 5]
    assert [r["dedup_key"] for r in log] == [None, None, None, "check:42", "check:43"]
    assert await check(fresh_db) == (5, None)
    assert (await head(fresh_db)).last_seq == 5


async def test_concurrent_appends_with_one_dedup_key_store_one_entry(
        fresh_db: Database) -> None:
    async def one(i: int) -> bool:
        async with fresh_db.write() as conn:
            return await append(conn, entry(i), datetime.now(UTC), dedup_key="resent")

    stored = await asyncio.gather(*(one(i) for i in range(20)))
    assert stored.count(True) == 1
    async with fresh_db.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(audit_log))).scalar() == 1
    assert await check(fresh_db) == (1, None)


class AppendBeforeHeadRead:
    """Wraps verify's connection: between its two reads (the chain head, then the log),
    another connection commits an append - a live service writing during a verify."""

    def __init__(self, conn: Any, db: Database) -> None:
        self.conn, self.db = conn, db

    async def stream(self, *args: Any, **kw: Any) -> Any:
        async with self.db.write() as other:
            await append(other, entry(99), datetime.now(UTC))
        return await self.conn.stream(*args, **kw)

    async def execute(self, *args: Any, **kw: Any) -> Any:
        return await self.conn.execute(*args, **kw)


async def test_an_append_committed_during_verify_is_not_reported_as_a_break(
        fresh_db: Database) -> None:
    await fill(fresh_db, 5)
    async with fresh_db.read() as conn:
        result = await verify(AppendBeforeHeadRead(conn, fresh_db))  # type: ignore[arg-type]
    assert result == (5, None)
    assert await check(fresh_db) == (6, None)


async def test_an_entry_appended_with_a_non_utc_aware_time_verifies(fresh_db: Database) -> None:
    cest = timezone(timedelta(hours=2))
    async with fresh_db.write() as conn:
        await append(conn, entry(1), datetime(2025, 6, 1, 12, 0, tzinfo=cest))
    assert await check(fresh_db) == (1, None)



async def test_a_log_longer_than_one_fetch_verifies_to_its_end_and_a_late_edit_is_found(
        fresh_db: Database) -> None:
    """`verify` streams the log; on SQLite a statement brings back its rows a chunk at a time
    (persistence/sqlite_driver.py). Every entry past the first chunks must still be read."""
    from persistence.sqlite_driver import CHUNK
    n = 2 * CHUNK + 345
    async with fresh_db.write() as conn:  # one transaction: 2,000 separate ones are slow here
        for i in range(1, n + 1):
            assert await append(conn, entry(i), T0 + timedelta(seconds=i))
    assert await check(fresh_db) == (n, None)
    assert len(await rows(fresh_db)) == n  # a plain (unstreamed) read of more than a chunk

    late = 2 * CHUNK + 100
    async with fresh_db.write() as conn:
        await conn.execute(update(audit_log).where(audit_log.c.seq == late)
                           .values(outcome="rejected" if entry(late).outcome == "accepted"
                                   else "accepted"))
    found, broken = await check(fresh_db)
    assert names_seq(broken, late), broken
    assert found == late
