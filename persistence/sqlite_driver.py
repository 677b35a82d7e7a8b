"""aiosqlite, with each statement in one trip to the connection's thread.

aiosqlite runs a connection's calls on a thread of its own, one trip per call; SQLAlchemy's
adapter makes three or four per statement (open a cursor, execute, fetch, close). Each trip
is a hand-over to that thread and back through the event loop, and a write transaction holds
SQLite's only write lock across all of them. Here a statement is one trip: execute, fetch its
rows and close, in the thread. Commit and rollback stay aiosqlite's own (one trip each).
Measured: a transaction with one statement, 9 trips before, 4 now; a check's write (read
model and audit entry), 5.9 ms before, 5.1 ms now, one at a time.

It uses aiosqlite's connection thread (`_execute`, `_conn`), which is why aiosqlite is pinned
to one minor version in pyproject.toml."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiosqlite

CHUNK = 1000  # rows a statement's trip brings back; a longer result (a stream) fetches on


class _Cursor:
    """What SQLAlchemy's aiosqlite adapter uses of a cursor. A statement's trip executes it
    and brings back its first CHUNK rows, closing the sqlite3 cursor when that is all of
    them; the rest of a longer result (the audit verification streams the whole log) comes
    in further trips, CHUNK rows at a time."""

    arraysize = 1

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []
        self._open: sqlite3.Cursor | None = None  # still holding rows not yet fetched

    async def __aenter__(self) -> _Cursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = None) -> _Cursor:
        await self._run(lambda cur: cur.execute(sql, () if parameters is None else parameters))
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> _Cursor:
        await self._run(lambda cur: cur.executemany(sql, parameters))
        return self

    async def _run(self, call: Callable[[sqlite3.Cursor], Any]) -> None:
        await self.close()

        def in_thread() -> tuple[Any, list[Any], int, int | None, sqlite3.Cursor | None]:
            cur = self._conn.sqlite.cursor()
            try:
                call(cur)
                description = cur.description
                rows = cur.fetchmany(CHUNK) if description else []
            except BaseException:
                cur.close()
                raise
            if len(rows) < CHUNK:
                cur.close()
                return description, rows, cur.rowcount, cur.lastrowid, None
            return description, rows, cur.rowcount, cur.lastrowid, cur
        (self.description, self._rows, self.rowcount, self.lastrowid,
         self._open) = await self._conn._execute(in_thread)

    async def _more(self, everything: bool) -> None:
        cur = self._open
        if cur is None:
            return

        def in_thread() -> tuple[list[Any], bool]:
            rows = cur.fetchall() if everything else cur.fetchmany(CHUNK)
            done = everything or len(rows) < CHUNK
            if done:
                cur.close()
            return rows, done
        rows, done = await self._conn._execute(in_thread)
        self._rows.extend(rows)
        if done:
            self._open = None

    async def fetchall(self) -> list[Any]:
        await self._more(everything=True)
        rows, self._rows = self._rows, []
        return rows

    async def fetchone(self) -> Any:
        rows = await self.fetchmany(1)
        return rows[0] if rows else None

    async def fetchmany(self, size: int | None = None) -> Sequence[Any]:
        n = self.arraysize if size is None else size
        while len(self._rows) < n and self._open is not None:
            await self._more(everything=False)
        rows, self._rows = self._rows[:n], self._rows[n:]
        return rows

    async def close(self) -> None:
        self._rows = []
        cur, self._open = self._open, None
        if cur is not None:
            await self._conn._execute(cur.close)


class Connection(aiosqlite.Connection):
    def cursor(self) -> _Cursor:  # type: ignore[override]
        return _Cursor(self)

    @property
    def sqlite(self) -> sqlite3.Connection:
        return self._conn


def creator(path: str, timeout_s: float) -> Callable[[], Any]:
    """For `create_async_engine(async_creator=...)`: what SQLAlchemy's aiosqlite dialect
    would open for a file URL (`check_same_thread` off: the connection lives on its thread)."""
    async def connect() -> Connection:
        conn = Connection(lambda: sqlite3.connect(path, timeout=timeout_s,
                                                  check_same_thread=False), 64)
        conn._thread.daemon = True  # as the dialect does: never keep the process alive
        return await conn
    return connect
