"""Engine and transactions. SQLite gets WAL, a busy timeout and BEGIN IMMEDIATE for writes
(so two writers queue instead of failing); PostgreSQL uses plain transactions and row locks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from domain.errors import Unavailable
from persistence import sqlite_driver

LOCK_TIMEOUT_MS = 10_000
# PostgreSQL errors that say "not now" rather than "wrong": a lock or statement timeout, a
# serialization failure, a deadlock. Asyncpg reports them as plain DBAPIErrors.
TRANSIENT_SQLSTATES = {"55P03", "57014", "40001", "40P01"}


class Database:
    def __init__(self, url: str, *, connect_timeout: float = 5.0,
                 lock_timeout_ms: int = LOCK_TIMEOUT_MS, echo: bool = False) -> None:
        """`lock_timeout_ms` bounds how long a statement waits for a lock (SQLite's busy
        timeout, PostgreSQL's lock_timeout): a blocked database fails instead of hanging."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # Every connection is used inside one `begin()` block, which ends its transaction
        # (commit or rollback): the pool's own rollback on return would be a no-op trip.
        kwargs: dict[str, Any] = {"echo": echo, "pool_reset_on_return": None}
        if self.is_sqlite:
            kwargs["async_creator"] = sqlite_driver.creator(make_url(url).database or "",
                                                            lock_timeout_ms / 1000)
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True,
                          pool_timeout=connect_timeout,
                          connect_args={"timeout": connect_timeout, "command_timeout": 10,
                                        "server_settings": {
                                            "lock_timeout": str(lock_timeout_ms)}})
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        # SQLite has one writer at a time; writers of this process queue here instead of in
        # SQLite's busy handler, which sleeps in growing steps (up to 100 ms) while it waits.
        self._sqlite_writer = asyncio.Lock() if self.is_sqlite else None
        if self.is_sqlite:
            _configure_sqlite(self.engine, lock_timeout_ms)
        self._lock_timeout = lock_timeout_ms / 1000

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed on success, rolled back on error."""
        if self._sqlite_writer is None:
            async with self._connect(write=True) as conn:
                yield conn
            return
        try:
            await asyncio.wait_for(self._sqlite_writer.acquire(), self._lock_timeout)
        except TimeoutError:
            raise Unavailable("database busy: another write did not finish in time") from None
        try:
            async with self._connect(write=True) as conn:
                yield conn
        finally:
            self._sqlite_writer.release()

    @asynccontextmanager
    async def read(self, *, snapshot: bool = False) -> AsyncIterator[AsyncConnection]:
        """`snapshot`: every statement sees the database as of the first (PostgreSQL's
        REPEATABLE READ; a SQLite read transaction always does)."""
        async with self._connect(write=False) as conn:
            if snapshot and not self.is_sqlite:
                await conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield conn

    @asynccontextmanager
    async def _connect(self, write: bool) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                if self.is_sqlite:
                    await conn.execution_options(sqlite_write=write)
                async with conn.begin():
                    yield conn
        except (TimeoutError, exc.OperationalError, exc.InterfaceError, OSError) as e:
            raise Unavailable(f"database unavailable: {type(e).__name__}") from e
        except exc.DBAPIError as e:
            if e.connection_invalidated:
                raise Unavailable("database connection lost") from e
            if getattr(e.orig, "sqlstate", None) in TRANSIENT_SQLSTATES:
                raise Unavailable(f"database busy: {type(e.orig).__name__}") from e
            raise

    async def refresh_planner_statistics(self) -> None:
        """SQLite's query planner picks the right one of the session list's indexes only
        with statistics of the data (PostgreSQL's autovacuum keeps its own): ANALYZE takes
        about 150 ms at 100,000 sessions, writers waiting meanwhile."""
        if self.is_sqlite:
            async with self.write() as conn:
                await conn.exec_driver_sql("ANALYZE")

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        await self.engine.dispose()


def dialect_insert(is_sqlite: bool, table: Any) -> Any:
    """An INSERT with the dialect's ON CONFLICT clauses (SQLite and PostgreSQL alike)."""
    return (sqlite.insert if is_sqlite else postgresql.insert)(table)


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN IMMEDIATE is ours to emit.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("sqlite_write", True)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
