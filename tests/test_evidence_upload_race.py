"""An upload and its session's close at once (PostgreSQL, where writers run side by side):
the session completed while the upload's bytes were being published (a PUT to the bucket
takes a while) refuses the upload with its 409 and its audit entry, and leaves no row and no
file; SQLite's write transaction serialises the two, so the race cannot happen there."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from application import evidence as ev
from application.authz import Actor, Role
from application.sessions import Access
from domain.errors import Conflict
from persistence.db import Database
from persistence.files import DirectoryStore
from persistence.tables import audit_log, evidence, work_sessions
from tests.conftest import make_confirmed_sop, start
from tests.evidence_files import jpeg, sha256

pytestmark = pytest.mark.skipif(
    os.environ.get("WORKSESSION_TEST_DATABASE", "sqlite") != "postgresql",
    reason="SQLite serialises writers: the two cannot overlap")


class ClosedWhilePublishing(DirectoryStore):
    """A directory store whose publishing of the bytes (`keep`) lets another transaction
    commit the session's completion first, as a completion that lands during a PUT does."""

    def __init__(self, root: Path, db: Database, session_id: uuid.UUID) -> None:
        super().__init__(root)
        self.db, self.session_id = db, session_id

    @asynccontextmanager
    async def receive(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[Any]:
        async with super().receive(chunks) as incoming:
            keep = incoming.keep

            async def closing_first() -> None:
                async with self.db.write() as conn:
                    await conn.execute(sa.update(work_sessions).where(
                        work_sessions.c.id == self.session_id).values(status="completed"))
                await keep()
            incoming.keep = closing_first
            yield incoming


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_session_completed_while_its_upload_is_published_refuses_it(
        app: Any, http: Any, db: Database, supervisor: Any, worker_user: Any,
        tmp_path: Path) -> None:
    sop = await make_confirmed_sop(http, supervisor)
    s = await start(http, worker_user, sop)
    sid = uuid.UUID(s["id"])
    store = ClosedWhilePublishing(tmp_path, db, sid)
    ctx = replace(app.state.ctx, files=store)
    data = jpeg()
    try:
        with pytest.raises(Conflict):
            await ev.upload(ctx, Access(Actor(worker_user.id, Role.WORKER), sid),
                            one_chunk(data), "late.jpg")
        async with db.read() as conn:
            assert (await conn.execute(sa.select(evidence).where(
                evidence.c.session_id == sid))).all() == []
            actions = (await conn.execute(sa.select(audit_log.c.action, audit_log.c.outcome)
                                          .where(audit_log.c.session_id == sid)
                                          .order_by(audit_log.c.seq))).all()
        assert [tuple(a) for a in actions][-1] == ("evidence_upload", "rejected")
        assert not (tmp_path / sha256(data)).exists()
    finally:  # its run still takes it for in progress: end it
        await app.state.ctx.workflows.client.get_workflow_handle(
            f"work-session-{worker_user.id}").terminate("test over")
