"""The Temporal worker: `python worker.py` or `worksession worker`."""

from __future__ import annotations

import asyncio
import logging

from temporalio.client import Client
from temporalio.worker import Worker

from activities.session_store import SessionStore
from persistence.db import Database
from workflows.work_session import WorkSessionWorkflow
from worksession.settings import Settings
from worksession.temporal import connect


def build_worker(client: Client, db: Database, task_queue: str) -> Worker:
    store = SessionStore(db)
    return Worker(client, task_queue=task_queue, workflows=[WorkSessionWorkflow],
                  activities=[store.persist_session])


async def run_worker(settings: Settings, stop: asyncio.Event | None = None) -> None:
    db = Database(settings.db_url)
    client = await connect(settings)
    worker = build_worker(client, db, settings.task_queue)
    try:
        if stop is None:
            await worker.run()
        else:
            async with worker:
                await stop.wait()
    finally:
        await db.dispose()


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    asyncio.run(run_worker(Settings()))


if __name__ == "__main__":
    main()
