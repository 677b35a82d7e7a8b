"""The Alembic migrations build exactly the schema `persistence/tables.py` describes."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from persistence.tables import metadata


async def test_migrated_schema_matches_the_tables_the_code_uses(db) -> None:
    def diff(sync_conn):  # type: ignore[no-untyped-def]
        ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return compare_metadata(ctx, metadata)

    async with db.read() as conn:
        found = await conn.run_sync(diff)
    assert found == []


async def test_migration_0004_gives_closed_sessions_their_duration() -> None:
    """Sessions closed before step times were kept count in their SOP's session statistics:
    their duration (start to close, pauses not counted) is filled in; open ones stay null."""
    import asyncio
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    import sqlalchemy as sa

    from persistence.db import Database
    from persistence.migrate import upgrade
    from persistence.tables import work_sessions
    from tests.conftest import fresh_database

    t0 = datetime(2026, 1, 5, 7, 0, tzinfo=UTC)
    sop, done, cancelled, open_ = uuid4(), uuid4(), uuid4(), uuid4()
    async with fresh_database("migrate") as url:
        await asyncio.to_thread(upgrade, url, "0003")
        db = Database(url)
        try:
            async with db.write() as conn:
                await conn.execute(sa.text(
                    "INSERT INTO sops (id, family_id, version, status, title, created_at, "
                    "updated_at) VALUES (:id, :id, 1, 'confirmed', 'Old', :at, :at)")
                    .bindparams(sa.bindparam("id", type_=sa.Uuid()),
                                sa.bindparam("at", type_=sa.DateTime(timezone=True))),
                    {"id": sop, "at": t0})
                base = {"sop_id": sop, "sop_title": "Old", "sop_version": 1,
                        "workflow_id": "wf", "version": 3, "updated_at": t0,
                        "started_at": t0, "worker_id": uuid4(), "completed_at": None,
                        "cancelled_at": None}
                old = sa.table("work_sessions", *(sa.column(c.name, c.type) for c in
                                                  work_sessions.c if c.name in (
                    *base, "id", "status", "completed_at", "cancelled_at", "paused_seconds")))
                await conn.execute(old.insert(), [
                    {**base, "id": done, "status": "completed", "paused_seconds": 30.0,
                     "completed_at": t0 + timedelta(minutes=5)},
                    {**base, "id": cancelled, "status": "cancelled", "paused_seconds": 0.0,
                     "cancelled_at": t0 + timedelta(seconds=42), "worker_id": uuid4()},
                    {**base, "id": open_, "status": "in_progress", "paused_seconds": 0.0,
                     "worker_id": uuid4()}])
            await asyncio.to_thread(upgrade, url)
            async with db.read() as conn:
                got = dict((await conn.execute(sa.select(
                    work_sessions.c.id, work_sessions.c.duration_seconds))).all())
        finally:
            await db.dispose()
    assert got == {done: 270.0, cancelled: 42.0, open_: None}
