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
