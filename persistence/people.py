"""The directory of people (`people`): one upsert as tokens are accepted, and its reads."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.people import Person, search_key
from persistence.db import dialect_insert
from persistence.tables import TZ, people


class PeopleRepository:
    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self._sqlite = conn.dialect.name == "sqlite"

    async def seen(self, person_id: UUID, name: str | None, role: str, at: datetime, *,
                   stale_before: datetime) -> None:
        """The person as a token just showed them: inserted the first time; otherwise
        updated only when the role or the name differs (a token without a name keeps the
        known one) or `last_seen` is older than `stale_before`. One statement, so two API
        processes seeing the same person at once both succeed and write one row."""
        await self.conn.execute(_upsert(self._sqlite), {
            "id": person_id, "name": name, "name_key": None if name is None
            else search_key(name), "role": role, "first_seen": at, "last_seen": at,
            "stale_before": stale_before})

    async def get(self, person_id: UUID) -> Person | None:
        row = (await self.conn.execute(select(*_FIELDS).where(people.c.id == person_id))
               ).first()
        return Person(*row) if row is not None else None

    async def list_page(self, q: str | None, role: str | None, limit: int,
                        offset: int) -> tuple[list[Person], int]:
        """People by name (case-insensitively; the nameless last), then id. `q`: names that
        contain it, as plain text (`%`, `_` and the escape character match themselves)."""
        conds: list[Any] = []
        key = search_key(q) if q else ""
        if key:  # a q of nothing but spaces (or invisible characters) selects everyone
            conds.append(people.c.name_key.contains(key, autoescape=True))
        if role is not None:
            conds.append(people.c.role == role)
        total = (await self.conn.execute(
            select(func.count()).select_from(people).where(*conds))).scalar_one()
        rows = (await self.conn.execute(
            select(*_FIELDS).where(*conds)
            .order_by(people.c.name_key.asc().nulls_last(), people.c.id)
            .limit(limit).offset(offset))).all()
        return [Person(*r) for r in rows], total


_FIELDS = (people.c.id, people.c.name, people.c.role, people.c.first_seen, people.c.last_seen)


@functools.cache
def _upsert(is_sqlite: bool) -> Any:
    stmt = dialect_insert(is_sqlite, people)
    new, old = stmt.excluded, people.c
    return stmt.on_conflict_do_update(
        index_elements=[old.id],
        set_={"name": func.coalesce(new.name, old.name),
              "name_key": func.coalesce(new.name_key, old.name_key),
              "role": new.role, "last_seen": new.last_seen},
        where=or_(old.role != new.role,
                  new.name.is_not(None) & old.name.is_distinct_from(new.name),
                  old.last_seen < bindparam("stale_before", type_=TZ)))
