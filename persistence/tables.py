"""The schema, one definition for SQLite and PostgreSQL. Alembic migrations mirror it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
    text,
)

from domain.audit_chain import GENESIS  # the server default of a new head
from domain.evidence import EvidenceFile
from domain.people import NAME_MAX, SEARCH_KEY_MAX
from domain.signature import STATEMENT_MAX
from domain.work_session import VerificationWait

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})



class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both backends (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


TZ = UTCDateTime()


class Wait(TypeDecorator):
    """A session's wait for verification (domain.work_session.VerificationWait) as a JSON
    object; none is SQL NULL (so that the session list's filter reads `IS NULL`)."""

    impl = JSON(none_as_null=True)
    cache_ok = True

    def process_bind_param(self, value: VerificationWait | None,
                           dialect: Any) -> dict[str, str] | None:
        if value is None:
            return None
        return {"step_id": str(value.step_id), "check_id": str(value.check_id),
                "since": value.since.astimezone(UTC).isoformat()}

    def process_result_value(self, value: dict[str, str] | None,
                             dialect: Any) -> VerificationWait | None:
        if value is None:
            return None
        return VerificationWait(UUID(value["step_id"]), UUID(value["check_id"]),
                                datetime.fromisoformat(value["since"]))


class EvidenceFiles(TypeDecorator):
    """A check's evidence files (domain.evidence.EvidenceFile), as a JSON list of objects;
    none is an empty tuple (checks from before evidence files existed hold NULL)."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: tuple[EvidenceFile, ...] | None,
                           dialect: Any) -> list[dict[str, Any]] | None:
        if not value:
            return None
        return [{"id": str(f.id), "sha256": f.sha256, "content_type": f.content_type,
                 "bytes": f.bytes, "filename": f.filename} for f in value]

    def process_result_value(self, value: list[dict[str, Any]] | None,
                             dialect: Any) -> tuple[EvidenceFile, ...]:
        return tuple(EvidenceFile(**{**f, "id": UUID(f["id"])}) for f in value or ())

sops = Table(
    "sops", metadata,
    Column("id", Uuid, primary_key=True),
    Column("family_id", Uuid, nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("title", String(200), nullable=False),
    Column("description", Text),
    Column("created_at", TZ, nullable=False),
    Column("updated_at", TZ, nullable=False),
    Column("confirmed_at", TZ),
    Column("created_by", Uuid),
    Index("ix_sops_status_created", "status", "created_at"),
    Index("uq_sops_family_version", "family_id", "version", unique=True),
)

sop_tasks = Table(
    "sop_tasks", metadata,
    Column("id", Uuid, primary_key=True),
    Column("sop_id", Uuid, ForeignKey("sops.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("position", Integer, nullable=False),
    Column("title", String(200), nullable=False),
)

sop_steps = Table(
    "sop_steps", metadata,
    Column("id", Uuid, primary_key=True),
    Column("sop_id", Uuid, ForeignKey("sops.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("task_id", Uuid, ForeignKey("sop_tasks.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),
    Column("title", String(200), nullable=False),
    Column("instructions", Text),
    Column("check_kind", String(16), nullable=False),
    Column("check_prompt", String(500), nullable=False),
    Column("check_unit", String(32)),
    Column("check_min", Float),
    Column("check_max", Float),
    Column("check_evidence", String(20)),  # domain.sop.EvidenceRule; NULL (older): optional
    Column("check_verify", Boolean),  # second-person verification; NULL (older): false
    Column("check_on_fail", String(16)),  # domain.sop.OnFail; NULL (older): retry
    Column("check_severity", String(16)),  # domain.sop.Severity; NULL (older): major
)

ACTIVE = "status IN ('in_progress', 'paused')"
AWAITING = "awaiting_verification IS NOT NULL"

work_sessions = Table(
    "work_sessions", metadata,
    Column("id", Uuid, primary_key=True),
    Column("worker_id", Uuid, nullable=False),
    Column("sop_id", Uuid, ForeignKey("sops.id"), nullable=False),
    Column("sop_title", String(200), nullable=False),
    Column("sop_version", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("current_step_id", Uuid),
    Column("started_at", TZ, nullable=False),
    Column("paused_at", TZ),
    Column("paused_seconds", Float, nullable=False, server_default=text("0")),
    Column("paused_reason", String(32)),
    Column("completed_at", TZ),
    Column("cancelled_at", TZ),
    Column("cancel_reason", String(500)),
    Column("unchecked_step_ids", JSON),
    # From start to close, pauses not counted; null while open.
    Column("duration_seconds", Float),
    Column("needs_attention", Boolean, nullable=False, server_default=text("false")),
    Column("locked", Boolean, nullable=False, server_default=text("false")),
    Column("approved_by", Uuid),
    Column("approved_at", TZ),
    Column("workflow_id", String(200), nullable=False),
    Column("run_id", String(64)),
    # Names the stored state: it grows with every change, across runs, reopening and
    # approval. A write of a change replaces the row only when its version is higher.
    Column("version", Integer, nullable=False),
    Column("updated_at", TZ, nullable=False),
    # The head of the session's audit chain (`session:<id>`): the session's own record of
    # how long its chain is, moved in the transaction of every entry appended to it.
    Column("audit_seq", Integer, nullable=False, server_default=text("0")),
    Column("audit_hash", String(64), nullable=False, server_default=text(f"'{GENESIS}'")),
    # The passed check waiting for a second person's verification, if any (contract v1.2).
    Column("awaiting_verification", Wait()),
    # Why the service itself set `needs_attention` beyond what the session's own rules say:
    # `spc` (an out-of-control measurement, persistence/spc.py). Written by `write_change`
    # alone; it holds `needs_attention` until the session is approved.
    Column("attention_reason", String(16)),
    # Second line of defence behind Temporal's workflow ID: one active session per worker.
    Index("uq_work_sessions_one_active_per_worker", "worker_id", unique=True,
          sqlite_where=text(ACTIVE), postgresql_where=text(ACTIVE)),
    Index("ix_work_sessions_worker_started", "worker_id", "started_at"),
    Index("ix_work_sessions_started", "started_at"),
    Index("ix_work_sessions_status_started", "status", "started_at"),
    # an SOP's sessions by status, and its completed ones in order of duration (statistics)
    Index("ix_work_sessions_sop_status", "sop_id", "status", "duration_seconds", "started_at"),
    # the session list's filters, each with the list's order
    Index("ix_work_sessions_sop_started", "sop_id", "started_at"),
    Index("ix_work_sessions_attention_started", "needs_attention", "started_at"),
    # the few that need attention, by SOP (a partial index: the queries write the flag as
    # each dialect renders `== True`)
    Index("ix_work_sessions_attention_by_sop", "sop_id", "started_at",
          sqlite_where=text("needs_attention = 1"), postgresql_where=text("needs_attention")),
    Index("ix_work_sessions_locked_started", "locked", "started_at"),
    # the few awaiting verification (the list's filter, `true`)
    Index("ix_work_sessions_awaiting_started", "started_at",
          sqlite_where=text(AWAITING), postgresql_where=text(AWAITING)),
)

# Electronic signatures (CONTRACT.md v1.2), in signing order (`seq`), written by
# `write_change` with the change that made them and its `signed` audit entry; never updated
# or deleted. `record_hash` is the session's chain head as that write found it.
signatures = Table(
    "signatures", metadata,
    Column("id", Uuid, primary_key=True),
    Column("session_id", Uuid, ForeignKey("work_sessions.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("meaning", String(16), nullable=False),
    Column("step_id", Uuid),
    Column("signer_id", Uuid, nullable=False),
    Column("signer_name", String(NAME_MAX), nullable=False),
    Column("signer_role", String(16), nullable=False),
    Column("signed_at", TZ, nullable=False),
    Column("statement", String(STATEMENT_MAX)),
    Column("record_hash", String(64), nullable=False),
    Index("uq_signatures_session_seq", "session_id", "seq", unique=True),
)

session_checks = Table(
    "session_checks", metadata,
    Column("session_id", Uuid, ForeignKey("work_sessions.id", ondelete="CASCADE"),
           primary_key=True),
    Column("id", Uuid, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("step_id", Uuid, nullable=False),
    Column("result", String(8), nullable=False),
    Column("value", Float),
    Column("notes", Text),
    Column("evidence_uri", String(2048)),
    Column("evidence", EvidenceFiles()),
    Column("checked_at", TZ, nullable=False),
    Column("checked_by", Uuid, nullable=False),
    # a step's values in order of time: its SPC chart (persistence/spc.py)
    Index("ix_session_checks_step_at", "step_id", "checked_at", "id"),
)

# Statistical process control (CONTRACT.md v1.2): per chart (domain.spc.chart_id: an SOP
# family's measurement step with its limits), what judging its next value takes (domain.spc
# .ChartState): how many values, the last eight, and the baseline's figures. Written by
# `write_change` with each measurement check (the row held while it judges the value) and by
# a supervisor's baseline; the values themselves are the checks' (`session_checks`).
spc_charts = Table(
    "spc_charts", metadata,
    Column("id", Uuid, primary_key=True),
    Column("family_id", Uuid, nullable=False),
    Column("n", Integer, nullable=False),
    Column("recent", JSON, nullable=False),
    Column("base_n", Integer, nullable=False),
    Column("base_mean", Float),
    Column("base_mr_bar", Float),
    Column("base_from", TZ),
    Column("base_to", TZ),
    Column("base_manual", Boolean, nullable=False),
    Column("updated_at", TZ, nullable=False),
)

# Files uploaded to a session (CONTRACT.md, "Evidence files"), one row per upload; the bytes
# are in the evidence store under `sha256` (several rows, of several sessions, may share
# them). A row is attached to a check (`check_id`) by the write of the change that recorded
# the check (persistence.sessions.write_change); one never attached is removed after a day
# (application/evidence.remove_unattached), counted from the last time a check named it
# (`named_at`: a check in flight between the API's look-up and its write keeps its file).
evidence = Table(
    "evidence", metadata,
    Column("id", Uuid, primary_key=True),
    Column("session_id", Uuid, ForeignKey("work_sessions.id"), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content_type", String(32), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("filename", String(255)),
    Column("uploaded_at", TZ, nullable=False),
    Column("uploaded_by", Uuid, nullable=False),
    Column("check_id", Uuid),
    Column("attached_at", TZ),
    Column("named_at", TZ),
    # the same bytes uploaded again to the same session are the same upload
    Index("uq_evidence_session_sha256", "session_id", "sha256", unique=True),
    Index("ix_evidence_sha256", "sha256"),
    # the cleanup's candidates: the few never attached, oldest first
    Index("ix_evidence_unattached", "uploaded_at", sqlite_where=text("check_id IS NULL"),
          postgresql_where=text("check_id IS NULL")),
)

# Time on each step a session reached (`step_times`), as its changes arrive: a row is
# replaced only by a newer change of its session (`version`), like the session's row. The
# session's SOP and start are repeated here (they never change) so that an SOP's statistics
# read this table alone, through its two indexes.
session_steps = Table(
    "session_steps", metadata,
    Column("session_id", Uuid, ForeignKey("work_sessions.id", ondelete="CASCADE"),
           primary_key=True),
    Column("step_id", Uuid, primary_key=True),
    Column("sop_id", Uuid, nullable=False),
    Column("session_started_at", TZ, nullable=False),
    Column("started_at", TZ, nullable=False),
    Column("passed_at", TZ),
    Column("attempts", Integer, nullable=False),
    Column("failed_checks", Integer, nullable=False),
    Column("first_passed", Boolean),
    Column("active_seconds", Float, nullable=False),
    Column("since", TZ),
    Column("paused_mark", Float, nullable=False),
    Column("version", Integer, nullable=False),
    # per step: how many reached, passed, passed first time, failed (covering)
    Index("ix_session_steps_sop_step", "sop_id", "step_id", "failed_checks", "first_passed",
          "passed_at", "session_started_at"),
    # per step: the passed ones in order of time, for percentiles by rank
    Index("ix_session_steps_sop_step_time", "sop_id", "step_id", "active_seconds",
          "session_started_at", sqlite_where=text("passed_at IS NOT NULL"),
          postgresql_where=text("passed_at IS NOT NULL")),
)

audit_log = Table(
    "audit_log", metadata,
    Column("id", Uuid, primary_key=True),
    # `session:<id>` or `sop:<family_id>`; seq counts from 1 within it.
    Column("chain", String(80), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("at", TZ, nullable=False),
    Column("actor_id", Uuid),
    Column("actor_role", String(16)),
    Column("action", String(64), nullable=False),
    Column("session_id", Uuid),
    Column("outcome", String(16), nullable=False),
    Column("detail", JSON),
    Column("request_id", String(128)),
    # Names the accepted change an entry records, so that writing it twice stores it once.
    Column("dedup_key", String(200), unique=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    # Entries from before per-chain hashing (migration 0003): their seq and hashes in the
    # old single chain, kept as they were recorded.
    Column("legacy", JSON),
    Index("uq_audit_log_chain_seq", "chain", "seq", unique=True),
    Index("ix_audit_log_session", "session_id", "chain", "seq"),
    Index("ix_audit_log_at", "at"),  # the whole log, oldest first
)

# Heads of the SOP families' audit chains (a session's chain has its head on its row).
audit_chains = Table(
    "audit_chains", metadata,
    Column("chain", String(80), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

# The directory of people whose tokens the service accepted (CONTRACT.md v1.2, "People"),
# written by the API as it authenticates (application/people.note_seen), never with a session
# change. `id` is the token's user id; `name_key` is the name as searched (domain.people
# .search_key), so that case-insensitive search and the list's order read one index the same
# way on both databases (SQLite's lower() folds ASCII only).
people = Table(
    "people", metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(NAME_MAX)),
    Column("name_key", String(SEARCH_KEY_MAX)),
    Column("role", String(16), nullable=False),
    Column("first_seen", TZ, nullable=False),
    Column("last_seen", TZ, nullable=False),
    Index("ix_people_name_key", "name_key", "id"),
)

# Webhooks (CONTRACT.md v1.2, "Webhooks"). A subscription's secret is kept encrypted under the
# service's webhook key (persistence/webhooks.SecretBox: AES-GCM, the row's id as associated
# data), never as it was shown.
webhook_subscriptions = Table(
    "webhook_subscriptions", metadata,
    Column("id", Uuid, primary_key=True),
    Column("url", String(2048), nullable=False),
    Column("events", JSON, nullable=False),
    Column("description", String(500)),
    Column("secret", Text, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("created_by", Uuid),
)

# The outbox: each event, recorded in the transaction of the change that caused it, with the
# exact body every delivery of it sends (so a retry signs the same bytes). `ordinal` orders a
# session's events (the session's version and the event's place in its change).
webhook_events = Table(
    "webhook_events", metadata,
    Column("id", String(40), primary_key=True),
    Column("type", String(64), nullable=False),
    Column("session_id", Uuid),
    Column("ordinal", BigInteger, nullable=False),
    Column("at", TZ, nullable=False),
    Column("body", Text, nullable=False),
)

# One delivery of an event to one subscription: `pending` until its receiver answers 2xx
# (`delivered`) or its retries run out (`failed`). `queued_at` is when it was recorded or last
# redelivered by hand: the retries' 24 h count from it. `stream` is what orders it (the
# session's id, or "-"): one subscription's deliveries of one stream go out in `ordinal` order.
webhook_deliveries = Table(
    "webhook_deliveries", metadata,
    Column("id", Uuid, primary_key=True),
    Column("subscription_id", Uuid, nullable=False),
    Column("event_id", String(40), nullable=False),
    Column("stream", String(40), nullable=False),
    Column("ordinal", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("queued_at", TZ, nullable=False),
    Column("last_attempt_at", TZ),
    Column("last_status_code", Integer),
    Column("last_error", String(500)),
    Column("delivered_at", TZ),
    # a stream's next deliveries, in order
    Index("ix_webhook_deliveries_stream", "subscription_id", "stream", "status", "ordinal"),
    # a subscription's deliveries, newest first
    Index("ix_webhook_deliveries_recent", "subscription_id", "queued_at"),
    # the few pending ones (the backstop's sweep)
    Index("ix_webhook_deliveries_pending", "queued_at",
          sqlite_where=text("status = 'pending'"), postgresql_where=text("status = 'pending'")),
)

# Nonconformances (CONTRACT.md v1.2), one row each, with the head of its own audit chain
# (`nc:<id>`), moved in the transaction of every entry appended to it (as a session's). One
# opened by a failed check is inserted by `write_change` with the change that recorded the
# check; every other change of it by application/nonconformances.py, or by the NC's
# workflow (`overdue`), each holding the row. `number` comes from `counters` in the same
# transaction (gap-free: persistence/nonconformances.py).
nonconformances = Table(
    "nonconformances", metadata,
    Column("id", Uuid, primary_key=True),
    Column("number", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("session_id", Uuid, ForeignKey("work_sessions.id"), nullable=False),
    Column("sop_id", Uuid, nullable=False),
    Column("step_id", Uuid),
    Column("check_id", Uuid),
    Column("hold", Boolean, nullable=False),
    Column("description", Text, nullable=False),
    Column("opened_at", TZ, nullable=False),
    Column("opened_by", Uuid),
    Column("owner_id", Uuid),
    Column("containment_due", TZ, nullable=False),
    Column("close_due", TZ, nullable=False),
    Column("containment", Text),
    Column("contained_at", TZ),
    Column("contained_by", Uuid),
    Column("disposition", String(16)),
    Column("corrective_action", Text),
    Column("closed_at", TZ),
    Column("closed_by", Uuid),
    Column("overdue", Boolean, nullable=False),
    Column("overdue_deadlines", JSON, nullable=False),  # ["containment", "closure"]
    Column("evidence", EvidenceFiles()),
    Column("signature", JSON),  # the closing `approved` signature
    Column("audit_seq", Integer, nullable=False, server_default=text("0")),
    Column("audit_hash", String(64), nullable=False, server_default=text(f"'{GENESIS}'")),
    Index("uq_nonconformances_number", "number", unique=True),
    Index("ix_nonconformances_opened", "opened_at"),
    Index("ix_nonconformances_status_opened", "status", "opened_at"),
    Index("ix_nonconformances_session", "session_id", "status"),
    Index("ix_nonconformances_sop_opened", "sop_id", "opened_at"),
)

# Counters that must have no gaps (`nonconformance`: the last NC number given). Taken by
# `UPDATE … SET value = value + 1 … RETURNING` in the transaction that uses the number.
counters = Table(
    "counters", metadata,
    Column("name", String(40), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
