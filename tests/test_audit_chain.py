"""The audit log's hash chains (persistence/audit.py, persistence/sessions.py, CONTRACT.md v1.1):
one chain per session (`session:<id>`) and one per SOP family (`sop:<family_id>`).

What this file proves, on SQLite and on PostgreSQL:
- sessions' changes, rejections and catalog actions form gapless chains whose hashes anyone
  can re-check from the entries as GET /api/v1/audit shows them (an independent
  implementation of the documented formula is written out below);
- writing a change is idempotent and order-proof: a resent change stores nothing, a late one
  adds its check and entry without rolling the session back;
- every kind of tampering is reported by `verify`, naming the chain (and the entry); what a
  plain verify cannot see (a chain cut short with its head rewound, or rewritten with every
  hash recomputed) an anchor taken before does;
- `worksession audit verify` / `audit anchor` do the same from the command line;
- concurrent writers leave gapless chains;
- migration 0003 carries an old single-chain log over, entry by entry, into chains that verify.

Each test gets its OWN fresh database (`fresh_db`): the suite's session `db` is shared."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    Uuid,
    cast,
    delete,
    inspect,
    select,
    text,
    update,
)

from api.schemas import AuditEntryOut
from application.audit import anchor as take_anchor
from application.audit import verify as verify_log
from domain.changes import SYSTEM, AuditFacts, SessionChange
from domain.sop import CheckKind, CheckResult, CheckSpec, Sop, SopStatus, SopStep, SopTask
from domain.work_session import BEGINNING, CheckSubmission, Mark, SessionStatus, WorkSession
from persistence.audit import AuditLog
from persistence.db import Database
from persistence.migrate import upgrade
from persistence.sqlite_driver import CHUNK
from persistence.tables import audit_chains, audit_log, session_checks, work_sessions
from persistence.uow import SqlStore
from tests.conftest import audit_cli, fresh_database

IS_PG = os.environ.get("WORKSESSION_TEST_DATABASE", "sqlite") == "postgresql"
REPO = Path(__file__).resolve().parent.parent
ZEROS = "0" * 64
T0 = datetime(2025, 3, 14, 9, 26, 53, 589793, tzinfo=UTC)
CEST = timezone(timedelta(hours=2))
SUPERVISOR = uuid4()

# What `populate` writes: per session, start, a passed measurement, a failed check that
# escalates (two entries), a passed check, a refused resume; three catalog actions.
SESSION_ACTIONS = ["session_start", "check_submitted", "check_submitted", "session_escalated",
                   "check_submitted", "session_resume"]
PER_SESSION = len(SESSION_ACTIONS)
FAMILY_ACTIONS = ["sop_create", "sop_edit", "sop_confirm"]
SESSIONS = 3
TOTAL = SESSIONS * PER_SESSION + len(FAMILY_ACTIONS)


# ---- databases -----------------------------------------------------------------------------
@pytest.fixture
async def empty_url() -> AsyncIterator[str]:
    """The URL of an empty database of this test's own."""
    async with fresh_database("audit") as url:
        yield url


@pytest.fixture
async def fresh_db(empty_url: str) -> AsyncIterator[Database]:
    """A database of its own, migrated to the latest schema."""
    await asyncio.to_thread(upgrade, empty_url)
    database = Database(empty_url)
    try:
        yield database
    finally:
        await database.dispose()


# ---- the documented formula, written out independently of persistence.audit ----------------
def as_api(row: Any) -> dict[str, Any]:
    """An entry as a client of GET /api/v1/audit receives it: `at` in ISO 8601 UTC, UUIDs as
    strings, parsed back from the JSON the API's schema writes."""
    shown = {**row, "at": row["at"].astimezone(UTC).isoformat()}
    return json.loads(AuditEntryOut.model_validate(shown).model_dump_json())


def recheck(entry: dict[str, Any]) -> str:
    """sha256(prev_hash + canonical JSON of the entry without its hash): keys sorted,
    separators `,` and `:`, UTF-8 unescaped (CONTRACT.md, audit log)."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((entry["prev_hash"] + canonical).encode("utf-8")).hexdigest()


# ---- a catalog and its sessions, written as the service writes them -----------------------
def make_sop(steps: int = 4) -> Sop:
    """A confirmed SOP: a voltage measurement (0 to 0.5 V), then confirmations."""
    def check(i: int) -> CheckSpec:
        if i == 0:
            return CheckSpec(CheckKind.MEASUREMENT, "Voltage at terminal A", "V", 0, 0.5)
        return CheckSpec(CheckKind.CONFIRM, f"Step {i + 1} done")

    task = SopTask(uuid4(), "Isolate energy sources", 0,
                   [SopStep(uuid4(), f"Step {i + 1}", check(i), i) for i in range(steps)])
    return Sop(id=uuid4(), family_id=uuid4(), version=1, status=SopStatus.CONFIRMED,
               title="Lockout/Tagout – Presse 4", description=None, tasks=[task],
               created_at=T0, updated_at=T0, confirmed_at=T0)


class Run:
    """One worker's session, taken change by change as its workflow run takes them."""

    def __init__(self, sop: Sop, at: datetime) -> None:
        self.worker = uuid4()
        self.at = at
        self.session = WorkSession.start(uuid4(), self.worker, sop.plan(), at)
        self.start = self._change(BEGINNING, [self._facts("session_start", sop_id=str(sop.id))])

    @property
    def id(self) -> UUID:
        return self.session.state.id

    @property
    def chain(self) -> str:
        return f"session:{self.id}"

    def _facts(self, action: str, **detail: Any) -> AuditFacts:
        return AuditFacts(action, self.worker, "worker", detail, f"req-{uuid4().hex[:12]}")

    def _tick(self) -> None:
        self.at += timedelta(seconds=41, microseconds=271_828)

    def _change(self, before: Mark, entries: list[AuditFacts]) -> SessionChange:
        return SessionChange.of(self.session.state, before, entries, self.at,
                                f"work-session-{self.worker}", "run-1")

    def check(self, passed: bool = True, escalate_after: int = 0) -> SessionChange:
        """A check of the current step; a failure that escalates adds the system's entry."""
        self._tick()
        st = self.session.state
        before, attention = self.session.mark(), st.needs_attention
        step = self.session.plan.step(st.current_step_id)  # type: ignore[arg-type]
        assert step is not None
        if step.check.kind is CheckKind.MEASUREMENT:
            sub = CheckSubmission(check_id=uuid4(), step_id=step.id, value=0.35 if passed else 7.5,
                                  notes="Spannung geprüft ✓ 電圧 «A»")
        else:
            sub = CheckSubmission(check_id=uuid4(), step_id=step.id,
                                  result=CheckResult.PASSED if passed else CheckResult.FAILED)
        check = self.session.add_check(sub, by=self.worker, now=self.at,
                                       escalate_after_failures=escalate_after)
        assert check is not None
        entries = [self._facts("check_submitted", check_id=str(check.id),
                               step_id=str(step.id), result=check.result.value,
                               value=check.value, notes=check.notes)]
        if st.needs_attention and not attention:
            entries.append(AuditFacts("session_escalated", None, SYSTEM, {
                "step_id": str(step.id), "failed_checks_in_a_row": escalate_after}))
        return self._change(before, entries)

    def pause(self) -> SessionChange:
        self._tick()
        before = self.session.mark()
        self.session.pause(self.at, reason="break")
        return self._change(before, [self._facts("session_pause", reason="break")])

    def refused_resume(self) -> tuple[AuditFacts, datetime]:
        """A resume of a session in progress: refused, audited at a time given in CEST."""
        self._tick()
        return (self._facts("session_resume").rejected(
            reason="cannot resume: session is in_progress, not paused", code="wrong_state"),
            self.at.astimezone(CEST))


@dataclass
class Log:
    sop: Sop
    runs: list[Run] = field(default_factory=list)

    @property
    def family(self) -> str:
        return f"sop:{self.sop.family_id}"


async def write(db: Database, change: SessionChange) -> bool:
    async with SqlStore(db)() as uow:
        return await uow.sessions.write_change(change)


async def reject(db: Database, session_id: UUID, facts: AuditFacts, at: datetime) -> None:
    async with SqlStore(db)() as uow:
        await uow.sessions.record_rejection(session_id, facts, at)


async def catalog_action(db: Database, sop: Sop, action: str, at: datetime) -> None:
    async with SqlStore(db)() as uow:
        await uow.audit.append_to_sop_family(sop.family_id, AuditFacts(
            action, SUPERVISOR, "supervisor", {"sop_id": str(sop.id), "version": sop.version},
            f"req-{action}"), at)


async def add_sop(db: Database, sop: Sop) -> None:
    async with SqlStore(db)() as uow:
        await uow.sops.add(sop, created_by=SUPERVISOR)


async def new_run(db: Database) -> Run:
    """A session of a new SOP, not written yet."""
    sop = make_sop()
    await add_sop(db, sop)
    return Run(sop, T0)


async def populate(db: Database, sessions: int = SESSIONS) -> Log:
    """An SOP family with its catalog actions and `sessions` sessions, their writes
    interleaved in time (one chain's entries between another's)."""
    log = Log(make_sop())
    await add_sop(db, log.sop)
    for i, action in enumerate(FAMILY_ACTIONS):
        await catalog_action(db, log.sop, action, T0 + timedelta(minutes=i))
    log.runs = [Run(log.sop, T0 + timedelta(hours=k + 1)) for k in range(sessions)]
    for run in log.runs:
        assert await write(db, run.start)
    for step in (lambda r: r.check(), lambda r: r.check(passed=False, escalate_after=1),
                 lambda r: r.check()):
        for run in log.runs:
            assert await write(db, step(run))
    for run in log.runs:
        await reject(db, run.id, *run.refused_resume())
    return log


# ---- reading back ------------------------------------------------------------------------
async def api_entries(db: Database, session_id: UUID | None = None,
                      chain: str | None = None) -> list[dict[str, Any]]:
    """What GET /api/v1/audit?session_id= lists (all entries without a session id), in the
    API's shape; narrowed to one chain when `chain` is given."""
    async with SqlStore(db)(read_only=True) as uow:
        items, total = await uow.audit.list_page(session_id, 1000, 0)
    assert total == len(items)
    return [as_api(i) for i in items if chain is None or i["chain"] == chain]


async def rows_of(db: Database, chain: str) -> list[dict[str, Any]]:
    async with db.read() as conn:
        return [dict(r) for r in (await conn.execute(
            select(audit_log).where(audit_log.c.chain == chain)
            .order_by(audit_log.c.seq))).mappings()]


async def session_row(db: Database, session_id: UUID) -> Any:
    async with db.read() as conn:
        return (await conn.execute(select(work_sessions)
                                   .where(work_sessions.c.id == session_id))).mappings().one()


async def problems(db: Database, anchor: dict[str, Any] | None = None) -> list[str]:
    return (await verify_log(SqlStore(db), anchor))[1]


async def sql(db: Database, *statements: Any) -> None:
    """Tampering: statements run directly against the database, as someone with its
    credentials would."""
    async with db.write() as conn:
        for s in statements:
            await conn.execute(s)


def at_entry(chain: str, seq: int) -> Any:
    return (audit_log.c.chain == chain) & (audit_log.c.seq == seq)


def reported(found: list[str], chain: str, seq: int | None = None) -> bool:
    """Some problem names `chain` (at entry `seq`), and none names another chain."""
    prefix = f"{chain} seq {seq} (" if seq is not None else f"{chain}:"
    return any(p.startswith(prefix) for p in found) and all(chain in p for p in found)


def expect_chain_intact(entries: list[dict[str, Any]], chain: str) -> None:
    """The chain as a client re-checks it: seq 1..n, each entry after the previous one (64
    zeros first), every hash recomputed from the entry as shown."""
    assert [e["chain"] for e in entries] == [chain] * len(entries)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert [e["prev_hash"] for e in entries] == [ZEROS] + [e["hash"] for e in entries[:-1]]
    for e in entries:
        assert re.fullmatch(r"[0-9a-f]{64}", e["hash"])
        assert recheck(e) == e["hash"], e


# ---- 1. intact chains ----------------------------------------------------------------------
async def test_sessions_and_an_sop_family_form_chains_anyone_can_recheck_from_the_api(
        fresh_db: Database) -> None:
    assert await verify_log(SqlStore(fresh_db)) == (0, [])  # an empty log is intact too
    log = await populate(fresh_db)
    assert await verify_log(SqlStore(fresh_db)) == (TOTAL, [])

    all_hashes: set[str] = set()
    for run in log.runs:
        entries = await api_entries(fresh_db, run.id)
        expect_chain_intact(entries, run.chain)
        assert [e["action"] for e in entries] == SESSION_ACTIONS
        assert [e["outcome"] for e in entries] == ["accepted"] * 5 + ["rejected"]
        assert {e["session_id"] for e in entries} == {str(run.id)}
        assert [e["actor_role"] for e in entries] == ["worker"] * 3 + [SYSTEM, "worker",
                                                                      "worker"]
        assert entries[3]["actor_id"] is None
        assert entries[1]["detail"]["value"] == 0.35
        assert entries[1]["detail"]["notes"] == "Spannung geprüft ✓ 電圧 «A»"
        for e in entries:  # ISO 8601 in UTC, as hashed
            assert e["at"].endswith("+00:00") and datetime.fromisoformat(e["at"]) >= T0
        # The refusal was recorded at a CEST time: shown (and hashed) in UTC.
        assert datetime.fromisoformat(entries[-1]["at"]) == run.at
        row = await session_row(fresh_db, run.id)
        assert (row["audit_seq"], row["audit_hash"]) == (PER_SESSION, entries[-1]["hash"])
        all_hashes |= {e["hash"] for e in entries}

    family = await api_entries(fresh_db, None, chain=log.family)
    expect_chain_intact(family, log.family)
    assert [e["action"] for e in family] == FAMILY_ACTIONS
    assert {e["session_id"] for e in family} == {None}
    async with fresh_db.read() as conn:
        head = (await conn.execute(select(audit_chains.c.seq, audit_chains.c.hash)
                                   .where(audit_chains.c.chain == log.family))).one()
    assert tuple(head) == (len(FAMILY_ACTIONS), family[-1]["hash"])
    all_hashes |= {e["hash"] for e in family}
    assert len(all_hashes) == TOTAL


# ---- 2. writing changes --------------------------------------------------------------------
async def test_writing_the_same_change_twice_stores_it_once(fresh_db: Database) -> None:
    run = await new_run(fresh_db)
    assert await write(fresh_db, run.start)
    change = run.check()
    assert await write(fresh_db, change)
    before = await session_row(fresh_db, run.id)

    assert not await write(fresh_db, change)
    assert not await write(fresh_db, run.start)
    entries = await api_entries(fresh_db, run.id)
    assert [e["action"] for e in entries] == ["session_start", "check_submitted"]
    assert await session_row(fresh_db, run.id) == before
    assert await checks_of(fresh_db, run.id) == [c.id for c in change.checks]
    assert await problems(fresh_db) == []


async def test_a_late_older_change_adds_its_check_and_entry_without_rolling_the_session_back(
        fresh_db: Database) -> None:
    run = await new_run(fresh_db)
    checked = run.check()  # the measurement passes: the session moves to step 2
    paused = run.pause()
    assert checked.version < paused.version
    assert await write(fresh_db, run.start)
    assert await write(fresh_db, paused)  # the newer change arrives first
    assert await write(fresh_db, checked)  # then the older one

    row = await session_row(fresh_db, run.id)
    assert row["version"] == paused.version
    assert row["status"] == SessionStatus.PAUSED.value
    assert row["current_step_id"] == run.session.plan.steps[1].id
    assert await checks_of(fresh_db, run.id) == [c.id for c in checked.checks]
    entries = await api_entries(fresh_db, run.id)  # in the order they were written
    assert [e["action"] for e in entries] == ["session_start", "session_pause",
                                             "check_submitted"]
    assert (row["audit_seq"], row["audit_hash"]) == (3, entries[-1]["hash"])
    assert not await write(fresh_db, checked)
    assert await problems(fresh_db) == []


async def test_a_change_with_an_escalation_stores_both_entries_one_after_the_other(
        fresh_db: Database) -> None:
    run = await new_run(fresh_db)
    assert await write(fresh_db, run.start)
    failed = run.check(passed=False, escalate_after=1)
    assert [f.action for f in failed.entries] == ["check_submitted", "session_escalated"]
    assert await write(fresh_db, failed)
    assert not await write(fresh_db, failed)

    entries = await api_entries(fresh_db, run.id)
    check, escalated = entries[1], entries[2]
    assert len(entries) == 3 and (check["seq"], escalated["seq"]) == (2, 3)
    assert escalated["prev_hash"] == check["hash"]
    assert (escalated["actor_role"], escalated["actor_id"]) == (SYSTEM, None)
    assert escalated["at"] == check["at"]
    assert (await session_row(fresh_db, run.id))["needs_attention"] is True
    expect_chain_intact(entries, run.chain)
    assert await problems(fresh_db) == []


async def until_a_writer_waits(db: Database) -> None:
    """Until another transaction of this database waits on a lock (PostgreSQL); on SQLite a
    second writer queues for the only write transaction anyway."""
    if db.is_sqlite:
        await asyncio.sleep(0.2)
        return
    for _ in range(200):
        async with db.read() as conn:
            if (await conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock'"))).scalar():
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the second writer never waited for the first")


async def test_a_change_resent_while_its_first_write_is_still_open_is_stored_once(
        fresh_db: Database) -> None:
    """The session is not recorded yet (no row to hold): the entry's dedup key decides."""
    run = await new_run(fresh_db)
    async with SqlStore(fresh_db)() as first:
        assert await first.sessions.write_change(run.start)
        resent = asyncio.create_task(write(fresh_db, run.start))
        await until_a_writer_waits(fresh_db)
    assert await resent is False
    assert [e["seq"] for e in await api_entries(fresh_db, run.id)] == [1]
    assert await problems(fresh_db) == []


async def test_two_changes_of_a_session_not_yet_recorded_written_at_once_both_land(
        fresh_db: Database) -> None:
    """Changes may be written in any order (persistence/sessions.py), also the first two of
    a session at once: the API writing a check while the run writes the start it took."""
    run = await new_run(fresh_db)
    checked = run.check()
    async with SqlStore(fresh_db)() as first:
        assert await first.sessions.write_change(run.start)
        second = asyncio.create_task(write(fresh_db, checked))
        await until_a_writer_waits(fresh_db)
    assert await second is True
    entries = await api_entries(fresh_db, run.id)
    expect_chain_intact(entries, run.chain)
    assert [e["action"] for e in entries] == ["session_start", "check_submitted"]
    assert await problems(fresh_db) == []


async def checks_of(db: Database, session_id: UUID) -> list[UUID]:
    async with db.read() as conn:
        return list((await conn.execute(
            select(session_checks.c.id).where(session_checks.c.session_id == session_id)
            .order_by(session_checks.c.seq))).scalars())


# ---- 3. tampering --------------------------------------------------------------------------
# Edits of entry 3 of the second session's chain: its failed check.
FIELD_EDITS: list[Any] = [
    pytest.param("detail", lambda r: {**r["detail"], "result": "passed"}, id="detail"),
    pytest.param("detail", lambda r: None, id="detail-removed"),
    pytest.param("outcome", lambda r: "rejected", id="outcome"),
    pytest.param("action", lambda r: "session_pause", id="action"),
    pytest.param("actor_id", lambda r: uuid4(), id="actor_id"),
    pytest.param("actor_id", lambda r: None, id="actor_id-removed"),
    pytest.param("actor_role", lambda r: "supervisor", id="actor_role"),
    pytest.param("at", lambda r: r["at"] + timedelta(microseconds=1), id="at-one-microsecond"),
    pytest.param("at", lambda r: r["at"] - timedelta(days=1), id="at-backdated"),
    pytest.param("session_id", lambda r: uuid4(), id="session_id"),
    pytest.param("request_id", lambda r: "req-forged", id="request_id"),
    pytest.param("id", lambda r: uuid4(), id="id"),
    pytest.param("hash", lambda r: "f" * 64, id="hash"),
    pytest.param("prev_hash", lambda r: "e" * 64, id="prev_hash"),
]


@pytest.mark.parametrize(("column", "forge"), FIELD_EDITS)
async def test_editing_a_field_of_an_entry_is_reported_naming_its_chain_and_seq(
        fresh_db: Database, column: str, forge: Callable[[dict[str, Any]], Any]) -> None:
    log = await populate(fresh_db)
    chain = log.runs[1].chain
    original = (await rows_of(fresh_db, chain))[2]
    await sql(fresh_db, update(audit_log).where(at_entry(chain, 3))
              .values({column: forge(original)}))
    found = await problems(fresh_db)
    assert reported(found, chain, 3), found
    assert len(found) == 1


async def test_editing_a_catalog_action_is_reported_on_the_sop_family_chain(
        fresh_db: Database) -> None:
    log = await populate(fresh_db)
    await sql(fresh_db, update(audit_log).where(at_entry(log.family, 2))
              .values(actor_id=uuid4()))
    found = await problems(fresh_db)
    assert reported(found, log.family, 2), found


async def test_rewriting_detail_as_equal_json_in_another_key_order_is_not_a_break(
        fresh_db: Database) -> None:
    """The hash covers canonical JSON, not the stored text. Both backends keep the JSON
    text as written (SQLite's TEXT, PostgreSQL's `json`, not `jsonb`), so the stored text
    really changes here: that is asserted, or the test would prove nothing."""
    log = await populate(fresh_db)
    chain = log.runs[1].chain

    async def stored_text() -> str:
        async with fresh_db.read() as conn:
            return (await conn.execute(select(cast(audit_log.c.detail, Text))
                                       .where(at_entry(chain, 2)))).scalar_one()

    before = await stored_text()
    original = (await rows_of(fresh_db, chain))[1]["detail"]
    reordered = dict(reversed(list(original.items())))
    await sql(fresh_db, update(audit_log).where(at_entry(chain, 2)).values(detail=reordered))
    after = await stored_text()
    assert after != before and json.loads(after) == json.loads(before)
    assert await verify_log(SqlStore(fresh_db)) == (TOTAL, [])


@pytest.mark.parametrize("seq", [1, 3])
async def test_deleting_an_entry_inside_a_chain_is_reported_as_missing(
        fresh_db: Database, seq: int) -> None:
    log = await populate(fresh_db)
    chain = log.runs[1].chain
    await sql(fresh_db, delete(audit_log).where(at_entry(chain, seq)))
    found = await problems(fresh_db)
    assert reported(found, chain), found
    assert any(f"expected seq {seq}, found {seq + 1}" in p and "missing" in p for p in found)


async def test_deleting_the_last_entry_of_a_session_is_reported_by_the_session_row(
        fresh_db: Database) -> None:
    log = await populate(fresh_db)
    chain = log.runs[1].chain
    await sql(fresh_db, delete(audit_log).where(at_entry(chain, PER_SESSION)))
    n, found = await verify_log(SqlStore(fresh_db))
    assert n == TOTAL - 1
    assert reported(found, chain), found
    assert f"head says {PER_SESSION} entries" in found[0]
    assert f"the log has {PER_SESSION - 1}" in found[0]


async def test_deleting_a_whole_session_chain_is_reported_by_the_session_row(
        fresh_db: Database) -> None:
    log = await populate(fresh_db)
    chain = log.runs[1].chain
    await sql(fresh_db, delete(audit_log).where(audit_log.c.chain == chain))
    found = await problems(fresh_db)
    assert found == [f"{chain}: its head says {PER_SESSION} entries, the log has none"]


async def test_cutting_a_chain_short_and_rewinding_its_session_row_needs_an_anchor(
        fresh_db: Database) -> None:
    """Whoever can rewrite the session row can hide a truncation from a plain verify: that
    is what the anchor, kept outside the database, is for."""
    log = await populate(fresh_db)
    anchor = await take_anchor(SqlStore(fresh_db))
    chain, run = log.runs[1].chain, log.runs[1]
    kept = (await rows_of(fresh_db, chain))[3]
    await sql(fresh_db,
              delete(audit_log).where(audit_log.c.chain == chain, audit_log.c.seq > 4),
              update(work_sessions).where(work_sessions.c.id == run.id)
              .values(audit_seq=4, audit_hash=kept["hash"]))

    assert await verify_log(SqlStore(fresh_db)) == (TOTAL - 2, [])
    found = await problems(fresh_db, anchor)
    assert reported(found, chain), found
    assert f"the anchor holds entry {PER_SESSION}" in found[0]


async def test_swapping_the_content_of_two_entries_is_reported(fresh_db: Database) -> None:
    log = await populate(fresh_db)
    chain = log.runs[1].chain
    rows = await rows_of(fresh_db, chain)
    a, b = rows[1], rows[4]  # seq 2 and 5
    content = [c.name for c in audit_log.c if c.name not in ("chain", "seq")]
    await sql(fresh_db,  # park entry 2's unique values, then move each content over
              update(audit_log).where(at_entry(chain, 2)).values(id=uuid4(), dedup_key=None),
              update(audit_log).where(at_entry(chain, 5)).values({k: a[k] for k in content}),
              update(audit_log).where(at_entry(chain, 2)).values({k: b[k] for k in content}))
    swapped = await rows_of(fresh_db, chain)
    assert (swapped[1]["id"], swapped[4]["id"]) == (b["id"], a["id"])
    found = await problems(fresh_db)
    assert reported(found, chain, 2), found


async def test_a_forged_entry_with_its_own_hash_recomputed_is_reported_at_the_next_entry(
        fresh_db: Database) -> None:
    log = await populate(fresh_db)
    chain = log.runs[1].chain
    forged = as_api((await rows_of(fresh_db, chain))[2])
    forged["detail"] = {**forged["detail"], "result": "passed"}
    forged["hash"] = recheck(forged)
    await sql(fresh_db, update(audit_log).where(at_entry(chain, 3))
              .values(detail=forged["detail"], hash=forged["hash"]))
    found = await problems(fresh_db)
    assert reported(found, chain, 4), found
    assert "prev_hash" in found[0]
    assert not any(p.startswith(f"{chain} seq 3 ") for p in found)


async def test_a_forged_last_entry_with_its_hash_recomputed_is_reported_at_the_head(
        fresh_db: Database) -> None:
    log = await populate(fresh_db)
    chain = log.runs[1].chain
    forged = as_api((await rows_of(fresh_db, chain))[-1])
    forged["outcome"] = "accepted"
    forged["hash"] = recheck(forged)
    await sql(fresh_db, update(audit_log).where(at_entry(chain, PER_SESSION))
              .values(outcome="accepted", hash=forged["hash"]))
    found = await problems(fresh_db)
    assert reported(found, chain), found
    assert f"head says {PER_SESSION} entries ending in" in found[0]


async def test_deleting_the_last_catalog_action_is_reported_by_the_family_head(
        fresh_db: Database) -> None:
    log = await populate(fresh_db)
    last = len(FAMILY_ACTIONS)
    await sql(fresh_db, delete(audit_log).where(at_entry(log.family, last)))
    found = await problems(fresh_db)
    assert reported(found, log.family), found
    assert f"head says {last} entries" in found[0] and f"the log has {last - 1}" in found[0]


# ---- 4. the anchor -------------------------------------------------------------------------
async def test_the_anchor_holds_every_chains_head_and_a_digest(fresh_db: Database) -> None:
    log = await populate(fresh_db)
    anchor = await take_anchor(SqlStore(fresh_db))
    heads = {}
    for chain in [r.chain for r in log.runs] + [log.family]:
        last = (await rows_of(fresh_db, chain))[-1]
        heads[chain] = {"chain": chain, "seq": last["seq"], "hash": last["hash"]}
    assert sorted(anchor["chains"], key=lambda c: c["chain"]) == sorted(heads.values(),
                                                                      key=lambda c: c["chain"])
    assert re.fullmatch(r"[0-9a-f]{64}", anchor["digest"])
    assert datetime.fromisoformat(anchor["at"]).utcoffset() == timedelta(0)
    assert await problems(fresh_db, json.loads(json.dumps(anchor))) == []


EDITED_ANCHORS: list[Any] = [
    pytest.param("earlier-head", id="claims-an-earlier-head"),
    pytest.param("drop-chain", id="drops-a-chain"),
    pytest.param("other-hash", id="rewrites-a-hash"),
]


@pytest.mark.parametrize("edit", EDITED_ANCHORS)
async def test_an_anchor_file_edited_after_it_was_taken_is_reported(
        fresh_db: Database, edit: str) -> None:
    log = await populate(fresh_db)
    anchor = await take_anchor(SqlStore(fresh_db))
    chain = log.runs[1].chain
    held = next(c for c in anchor["chains"] if c["chain"] == chain)
    if edit == "earlier-head":  # consistent with the log: only the digest gives it away
        held.update(seq=4, hash=(await rows_of(fresh_db, chain))[3]["hash"])
    elif edit == "drop-chain":
        anchor["chains"].remove(held)
    else:
        held["hash"] = "a" * 64
    found = await problems(fresh_db, anchor)
    assert any("digest" in p and "altered" in p for p in found), found


async def test_an_anchor_still_holds_after_the_log_grew(fresh_db: Database) -> None:
    log = await populate(fresh_db)
    anchor = await take_anchor(SqlStore(fresh_db))
    for run in log.runs:
        assert await write(fresh_db, run.check())
        assert await write(fresh_db, run.pause())
    newcomer = Run(log.sop, T0 + timedelta(days=1))
    assert await write(fresh_db, newcomer.start)
    await catalog_action(fresh_db, log.sop, "sop_archive", T0 + timedelta(days=1))
    assert await verify_log(SqlStore(fresh_db), anchor) == (TOTAL + 2 * SESSIONS + 2, [])


async def test_an_anchor_reveals_a_chain_rewritten_with_every_hash_recomputed(
        fresh_db: Database) -> None:
    """From entry 3 on, the chain is forged and re-hashed, and the session row moved to the
    forged head: consistent in itself, so only the anchor can tell."""
    log = await populate(fresh_db)
    anchor = await take_anchor(SqlStore(fresh_db))
    run = log.runs[1]
    entries = [as_api(r) for r in await rows_of(fresh_db, run.chain)]
    entries[2]["detail"] = {**entries[2]["detail"], "result": "passed"}
    statements = []
    for i in range(2, PER_SESSION):
        entries[i]["prev_hash"] = entries[i - 1]["hash"]
        entries[i]["hash"] = recheck(entries[i])
        statements.append(update(audit_log).where(at_entry(run.chain, i + 1)).values(
            detail=entries[i]["detail"], prev_hash=entries[i]["prev_hash"],
            hash=entries[i]["hash"]))
    statements.append(update(work_sessions).where(work_sessions.c.id == run.id)
                      .values(audit_hash=entries[-1]["hash"]))
    await sql(fresh_db, *statements)

    assert await problems(fresh_db) == []
    found = await problems(fresh_db, anchor)
    assert reported(found, run.chain), found
    assert f"the anchor holds entry {PER_SESSION}" in found[0]


class AppendWhileVerifying:
    """verify's connection, with another writer committing an entry between verify's read
    of the chains' heads and its walk of the log: a live service writing during a check."""

    def __init__(self, conn: Any, append: Callable[[], Any]) -> None:
        self.conn, self.append, self.dialect = conn, append, conn.dialect

    async def execute(self, *args: Any, **kw: Any) -> Any:
        return await self.conn.execute(*args, **kw)

    async def stream(self, *args: Any, **kw: Any) -> Any:
        await self.append()
        return await self.conn.stream(*args, **kw)


async def test_an_entry_appended_while_verify_runs_is_not_reported_as_a_break(
        fresh_db: Database) -> None:
    log = await populate(fresh_db)
    run = log.runs[0]

    async def append() -> None:
        await reject(fresh_db, run.id, *run.refused_resume())

    # as application.audit.verify (`worksession audit verify`) reads it: one snapshot
    async with SqlStore(fresh_db)(read_only=True, snapshot=True) as uow:
        found = await AuditLog(AppendWhileVerifying(uow.audit.conn, append)).verify()
    assert found == (TOTAL, [])
    assert await verify_log(SqlStore(fresh_db)) == (TOTAL + 1, [])


async def test_a_chain_longer_than_one_fetch_verifies_to_its_end_and_a_late_edit_is_found(
        fresh_db: Database) -> None:
    """`verify` streams the log; on SQLite a statement brings back its rows a chunk at a time
    (persistence/sqlite_driver.py). A chain across chunk boundaries is read to its end."""
    log = Log(make_sop())
    await add_sop(fresh_db, log.sop)
    n = 2 * CHUNK + 345
    async with SqlStore(fresh_db)() as uow:  # one transaction: thousands are slow
        for i in range(n):
            await uow.audit.append_to_sop_family(log.sop.family_id, AuditFacts(
                "sop_edit", SUPERVISOR, "supervisor", {"i": i}), T0 + timedelta(seconds=i))
    assert await verify_log(SqlStore(fresh_db)) == (n, [])

    late = 2 * CHUNK + 100
    await sql(fresh_db, update(audit_log).where(at_entry(log.family, late))
              .values(detail={"i": -1}))
    found, broken = await verify_log(SqlStore(fresh_db))
    assert found == late
    assert reported(broken, log.family, late), broken


# ---- 5. the command line -------------------------------------------------------------------
async def test_cli_audit_verify_exits_0_when_intact_and_1_naming_the_chain_after_tampering(
        fresh_db: Database) -> None:
    log = await populate(fresh_db)
    code, out = await audit_cli(fresh_db.url, "verify")
    assert code == 0, out
    assert f"audit log intact: {TOTAL} entries verified" in out

    chain = log.runs[2].chain
    await sql(fresh_db, update(audit_log).where(at_entry(chain, 2))
              .values(detail={"result": "passed", "value": 0.1}))
    code, out = await audit_cli(fresh_db.url, "verify")
    assert code == 1, out
    assert f"BROKEN: {chain} seq 2 (" in out, out


async def test_cli_anchor_file_is_accepted_then_catches_a_cut_chain_with_a_rewound_head(
        fresh_db: Database, tmp_path: Path) -> None:
    log = await populate(fresh_db)
    anchor_file = tmp_path / "anchor.json"
    code, out = await audit_cli(fresh_db.url, "anchor", "--out", str(anchor_file))
    assert code == 0, out
    anchor = json.loads(anchor_file.read_text())
    assert len(anchor["chains"]) == SESSIONS + 1 and anchor["digest"]
    code, out = await audit_cli(fresh_db.url, "verify", "--anchor", str(anchor_file))
    assert code == 0, out
    assert f"anchor of {SESSIONS + 1} chains held" in out

    run = log.runs[0]
    kept = (await rows_of(fresh_db, run.chain))[1]
    await sql(fresh_db,
              delete(audit_log).where(audit_log.c.chain == run.chain, audit_log.c.seq > 2),
              update(work_sessions).where(work_sessions.c.id == run.id)
              .values(audit_seq=2, audit_hash=kept["hash"]))
    code, out = await audit_cli(fresh_db.url, "verify")
    assert code == 0, out  # hidden from a plain verify
    code, out = await audit_cli(fresh_db.url, "verify", "--anchor", str(anchor_file))
    assert code == 1, out
    assert f"BROKEN: {run.chain}: the anchor holds entry {PER_SESSION}" in out, out


# ---- 6. concurrency ------------------------------------------------------------------------
async def test_concurrent_writes_of_many_sessions_and_of_one_session_leave_gapless_chains(
        fresh_db: Database) -> None:
    """Every session's changes written at once, in shuffled order, with resends and refusals,
    each in its own transaction (on PostgreSQL, one session's writers queue on its row);
    catalog actions of one family at the same time."""
    sop = make_sop(steps=8)
    await add_sop(fresh_db, sop)
    runs = [Run(sop, T0 + timedelta(minutes=k)) for k in range(6)]
    later = {run.id: [run.check(), run.check(passed=False), run.check(), run.check(),
                      run.pause()] for run in runs}

    async def write_each(changes: list[SessionChange]) -> list[bool]:
        return list(await asyncio.gather(*(write(fresh_db, c) for c in changes)))

    assert all(await write_each([run.start for run in runs]))
    batch = [c for changes in later.values() for c in changes]
    batch += [changes[1] for changes in later.values()]  # resent
    random.Random(7).shuffle(batch)
    refusals = [(run.id, *run.refused_resume()) for run in runs for _ in range(2)]
    written, _, _ = await asyncio.gather(
        write_each(batch),
        asyncio.gather(*(reject(fresh_db, *r) for r in refusals)),
        asyncio.gather(*(catalog_action(fresh_db, sop, f"sop_edit_{i}", T0)
                         for i in range(8))))
    assert written.count(True) == sum(len(c) for c in later.values())

    for run in runs:
        entries = await api_entries(fresh_db, run.id)
        expect_chain_intact(entries, run.chain)
        expected = [run.start, *later[run.id]]
        assert sorted(e["request_id"] for e in entries) == sorted(
            [f.request_id for c in expected for f in c.entries]
            + [f.request_id for sid, f, _ in refusals if sid == run.id])
        row = await session_row(fresh_db, run.id)
        assert row["version"] == later[run.id][-1].version
        assert row["status"] == SessionStatus.PAUSED.value
        assert (row["audit_seq"], row["audit_hash"]) == (len(entries), entries[-1]["hash"])
        assert sorted(await checks_of(fresh_db, run.id)) == sorted(
            k.id for c in later[run.id] for k in c.checks)
    family = await api_entries(fresh_db, None, chain=f"sop:{sop.family_id}")
    expect_chain_intact(family, f"sop:{sop.family_id}")
    assert len(family) == 8
    assert await verify_log(SqlStore(fresh_db)) == (len(runs) * (6 + 2) + 8, [])


# ---- 7. migration 0003 ---------------------------------------------------------------------
# The tables of revision 0002 that the old log touches, typed as the service wrote them (on
# SQLite: UUIDs as 32 hex characters, datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' in UTC).
OLD = MetaData()
OLD_AUDIT = Table(
    "audit_log", OLD,
    Column("seq", Integer, primary_key=True, autoincrement=False), Column("id", Uuid),
    Column("at", DateTime(timezone=True)), Column("actor_id", Uuid),
    Column("actor_role", String), Column("action", String), Column("session_id", Uuid),
    Column("outcome", String), Column("detail", JSON), Column("request_id", String),
    Column("dedup_key", String), Column("prev_hash", String), Column("hash", String))
OLD_HEAD = Table("audit_chain", OLD, Column("id", Integer, primary_key=True),
                 Column("last_seq", Integer), Column("last_hash", String))
OLD_SOPS = Table(
    "sops", OLD, Column("id", Uuid, primary_key=True), Column("family_id", Uuid),
    Column("version", Integer), Column("status", String), Column("title", String),
    Column("created_at", DateTime(timezone=True)), Column("updated_at", DateTime(timezone=True)))
OLD_SESSIONS = Table(
    "work_sessions", OLD, Column("id", Uuid, primary_key=True), Column("worker_id", Uuid),
    Column("sop_id", Uuid), Column("sop_title", String), Column("sop_version", Integer),
    Column("status", String), Column("current_step_id", Uuid),
    Column("started_at", DateTime(timezone=True)), Column("workflow_id", String),
    Column("run_id", String), Column("version", Integer),
    Column("updated_at", DateTime(timezone=True)), Column("run_position", Integer))
OLD_CHECKS = Table(
    "session_checks", OLD, Column("session_id", Uuid, primary_key=True),
    Column("id", Uuid, primary_key=True), Column("seq", Integer), Column("step_id", Uuid),
    Column("result", String), Column("value", Float),
    Column("checked_at", DateTime(timezone=True)), Column("checked_by", Uuid))


def old_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """The single chain's formula before 0003 (its hashes are kept, not re-checked)."""
    body = {k: str(v) if isinstance(v, UUID) else v for k, v in row.items() if k != "hash"}
    body["at"] = row["at"].isoformat()
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


async def test_migration_0003_carries_the_single_chain_log_into_chains_that_verify(
        empty_url: str) -> None:
    await asyncio.to_thread(upgrade, empty_url, "0002")
    family, kept_sop, deleted_sop = uuid4(), uuid4(), uuid4()
    session, unrecorded, worker, step = uuid4(), uuid4(), uuid4(), uuid4()
    check_id = uuid4()

    def entry(action: str, at: datetime, *, session_id: UUID | None = None,
              actor: UUID = SUPERVISOR, role: str = "supervisor", outcome: str = "accepted",
              detail: dict[str, Any] | None = None, dedup_key: str | None = None
              ) -> dict[str, Any]:
        return {"id": uuid4(), "at": at, "actor_id": actor, "actor_role": role,
                "action": action, "session_id": session_id, "outcome": outcome,
                "detail": detail, "request_id": f"req-{uuid4().hex[:8]}",
                "dedup_key": dedup_key}

    # What the service logged before 0003: session actions with their session, a start
    # refused because of another active session (under that session's id, or under none),
    # and SOP deletes (no session; the SOP's row is gone since).
    as_worker = {"actor": worker, "role": "worker", "session_id": session}
    old = [
        entry("session_start", T0, **as_worker, detail={"sop_id": str(kept_sop)}),
        entry("session_start", T0 + timedelta(seconds=1), actor=uuid4(), role="worker",
              outcome="rejected", detail={"sop_id": str(kept_sop),
                                          "reason": "active_session_exists"}),
        entry("check_submitted", T0 + timedelta(minutes=2, microseconds=7), **as_worker,
              detail={"check_id": str(check_id), "step_id": str(step), "result": "passed",
                      "value": 0.35, "notes": "Spannung geprüft ✓ 電圧"},
              dedup_key=f"check:{session}:{check_id}"),
        entry("sop_delete", T0 + timedelta(minutes=3),
              detail={"sop_id": str(deleted_sop), "result": "deleted"}),
        entry("session_start", T0 + timedelta(minutes=4), **as_worker, outcome="rejected",
              detail={"sop_id": str(kept_sop), "reason": "active_session_exists"}),
        entry("session_start", T0 + timedelta(minutes=5), actor=uuid4(), role="worker",
              session_id=unrecorded, detail={"sop_id": str(kept_sop)}),
        entry("modification_rejected", T0.replace(microsecond=0) + timedelta(minutes=6),
              **as_worker, outcome="rejected", detail=None),
        entry("sop_delete", T0 + timedelta(minutes=7),
              detail={"sop_id": str(deleted_sop), "result": "already_deleted"}),
    ]
    prev = ZEROS
    for seq, row in enumerate(old, start=1):
        row.update(seq=seq, prev_hash=prev)
        row["hash"] = prev = old_hash(prev, row)

    db = Database(empty_url)
    try:
        async with db.write() as conn:
            await conn.execute(OLD_SOPS.insert(), {
                "id": kept_sop, "family_id": family, "version": 1, "status": "confirmed",
                "title": "Lockout/Tagout – Presse 4", "created_at": T0, "updated_at": T0})
            await conn.execute(OLD_SESSIONS.insert(), {
                "id": session, "worker_id": worker, "sop_id": kept_sop,
                "sop_title": "Lockout/Tagout – Presse 4", "sop_version": 1,
                "status": "in_progress", "current_step_id": uuid4(),
                "started_at": T0 + timedelta(minutes=1),
                "workflow_id": f"work-session-{worker}", "run_id": "run-1", "version": 2,
                "updated_at": T0 + timedelta(minutes=2), "run_position": 2})
            await conn.execute(OLD_CHECKS.insert(), {
                "session_id": session, "id": check_id, "seq": 0, "step_id": step,
                "result": "passed", "value": 0.35,
                "checked_at": T0 + timedelta(minutes=2), "checked_by": worker})
            await conn.execute(OLD_AUDIT.insert(), old)
            await conn.execute(update(OLD_HEAD).where(OLD_HEAD.c.id == 1)
                               .values(last_seq=len(old), last_hash=prev))
    finally:
        await db.dispose()

    await asyncio.to_thread(upgrade, empty_url)

    db = Database(empty_url)
    try:
        async with db.read() as conn:
            migrated = {r["id"]: dict(r) for r in
                        (await conn.execute(select(audit_log))).mappings()}
            assert not await conn.run_sync(lambda c: inspect(c).has_table("audit_chain"))
        assert migrated.keys() == {r["id"] for r in old}
        for r in old:  # every entry, as it was recorded
            new = migrated[r["id"]]
            for k in ("actor_id", "actor_role", "action", "session_id", "outcome", "detail",
                      "request_id", "dedup_key", "at"):
                assert new[k] == r[k], (k, new[k], r[k])
            assert new["legacy"] == {"seq": r["seq"], "prev_hash": r["prev_hash"],
                                     "hash": r["hash"]}

        def chain_of(chain: str) -> list[int]:  # old seqs, in the new chain's order
            return [m["legacy"]["seq"] for m in sorted(
                (m for m in migrated.values() if m["chain"] == chain), key=lambda m: m["seq"])]

        assert chain_of(f"session:{session}") == [1, 3, 5, 7]
        assert chain_of(f"session:{unrecorded}") == [6]  # its head is in audit_chains
        assert chain_of(f"sop:{family}") == [2]
        # A deleted SOP's family went with its row: its actions chain under the SOP's id.
        assert chain_of(f"sop:{deleted_sop}") == [4, 8]
        assert await verify_log(SqlStore(db)) == (len(old), [])
        for chain in {m["chain"] for m in migrated.values()}:
            expect_chain_intact([as_api(r) for r in await rows_of(db, chain)], chain)

        row = await session_row(db, session)
        last = (await rows_of(db, f"session:{session}"))[-1]
        assert (row["audit_seq"], row["audit_hash"]) == (4, last["hash"])
        assert await checks_of(db, session) == [check_id]

        # The chains go on after the migration.
        await reject(db, session, AuditFacts("session_resume", worker, "worker",
                                             {"reason": "not paused"}, outcome="rejected"),
                     T0 + timedelta(hours=1))
        sop = Sop(id=kept_sop, family_id=family, version=1, status=SopStatus.CONFIRMED,
                  title="x", description=None, tasks=[], created_at=T0, updated_at=T0)
        await catalog_action(db, sop, "sop_archive", T0 + timedelta(hours=1))
        after = (await rows_of(db, f"session:{session}"))[-1]
        assert (after["seq"], after["prev_hash"]) == (5, last["hash"])
        assert [r["seq"] for r in await rows_of(db, f"sop:{family}")] == [1, 2]
        assert await verify_log(SqlStore(db)) == (len(old) + 2, [])
    finally:
        await db.dispose()
