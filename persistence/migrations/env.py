"""Alembic environment: runs against the URL given by persistence.migrate (async drivers)."""

import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

from persistence.tables import metadata

config = context.config


def _run(connection):  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    engine = create_async_engine(config.get_main_option("sqlalchemy.url"))
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()
    await engine.dispose()


asyncio.run(_main())
