"""CPU of the API's own part of one check, in process: the write of the change with its audit
entry, the read of the session it answers with, and the rendering of that answer. No HTTP,
no Temporal (the load benchmark and `benchmarks.http_floor` measure those, end to end).

    .venv/bin/python -m benchmarks.check_cpu [--checks 2000] [--database postgresql]

Sessions of a 10-step SOP are walked as the field does: a failed check now and then, each
session to its end, one check at a time. Process CPU (every thread: SQLite's included) per
check is reported for the database part and the rendering part."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

from api.schemas import SessionOut
from domain.changes import AuditFacts, SessionChange
from domain.sop import CheckKind, CheckResult, CheckSpec, Sop, SopStatus, SopStep, SopTask
from domain.work_session import BEGINNING, CheckSubmission, WorkSession
from persistence.db import Database
from persistence.migrate import upgrade_async
from persistence.uow import SqlStore

STEPS = 10


def _sop() -> Sop:
    now = datetime.now(UTC)
    sop = Sop(id=uuid4(), family_id=uuid4(), version=1, status=SopStatus.DRAFT,
              title="Benchmark", description=None, created_at=now, updated_at=now,
              tasks=[SopTask(id=uuid4(), title="Task", position=0, steps=[
                  SopStep(id=uuid4(), title=f"Step {i}", instructions="Do it", position=i,
                          check=CheckSpec(kind=CheckKind.MEASUREMENT, prompt="Volts",
                                          unit="V", min=0, max=0.5)
                          if i % 3 == 1 else CheckSpec(kind=CheckKind.CONFIRM, prompt="Done?"))
                  for i in range(STEPS)])])
    sop.confirm(now)
    return sop


async def run(url: str, checks: int) -> dict[str, float]:
    await upgrade_async(url)
    db = Database(url)
    store = SqlStore(db)
    sop = _sop()
    async with store() as uow:
        await uow.sops.add(sop)
    plan = sop.plan()
    db_cpu = render_cpu = 0.0
    done = 0
    clock = datetime.now(UTC)
    while done < checks:
        worker = uuid4()
        session = WorkSession.start(uuid4(), worker, plan, clock)
        async with store() as uow:
            await uow.sessions.write_change(SessionChange.of(
                session.state, BEGINNING, [AuditFacts("session_start", worker, "worker")],
                clock, f"work-session-{worker}", "run"))
        while session.is_active and done < checks:
            clock += timedelta(seconds=5)
            step = plan.step(session.state.current_step_id)  # type: ignore[arg-type]
            assert step is not None
            fail = done % 7 == 3
            sub = CheckSubmission(
                check_id=uuid4(), step_id=step.id,
                value=(9.9 if fail else 0.1) if step.check.kind is CheckKind.MEASUREMENT
                else None,
                result=None if step.check.kind is CheckKind.MEASUREMENT
                else CheckResult.FAILED if fail else CheckResult.PASSED)
            before = session.mark()
            session.add_check(sub, by=worker, now=clock)
            facts = AuditFacts("check_submitted", worker, "worker", {
                "check_id": str(sub.check_id), "step_id": str(sub.step_id)}, "req")
            change = SessionChange.of(session.state, before, [facts], clock,
                                      f"work-session-{worker}", "run")
            t0 = time.process_time()
            async with store() as uow:  # what the API's write does
                await uow.sessions.write_change(change)
                stored = await uow.sessions.load(session.state.id)
            t1 = time.process_time()
            assert stored is not None
            SessionOut.of(stored.session, workflow_id=stored.workflow_id,
                          run_id=stored.run_id, now=clock).model_dump_json()
            t2 = time.process_time()
            db_cpu += t1 - t0
            render_cpu += t2 - t1
            done += 1
    await db.dispose()
    return {"checks": done, "database_ms_per_check": round(1000 * db_cpu / done, 3),
            "render_ms_per_check": round(1000 * render_cpu / done, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checks", type=int, default=2000)
    ap.add_argument("--database", default="sqlite",
                    help="sqlite (a temporary file) or a postgresql+asyncpg:// URL")
    args = ap.parse_args()
    url = args.database
    if url == "sqlite":
        url = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    print(json.dumps(asyncio.run(run(url, args.checks))))


if __name__ == "__main__":
    main()
