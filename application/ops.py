"""Operations: stuck sessions and retrying them (admins only).

Stuck means: the session's workflow cannot make progress (a failing activity or workflow
task, no worker), or the database holds an active session that no running workflow holds
(its run was terminated or lost); the latter is repaired by starting a run from the
database copy."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import asdict
from datetime import timedelta
from typing import Any
from uuid import UUID

from application.authz import Actor, authorize, ensure_visible
from application.context import Context
from application.metrics import Meter
from application.ports import (
    ACTIVITY_FAILING,
    NO_WORKER,
    WORKFLOW_TASK_FAILING,
    StoredSession,
    WorkflowRunning,
)
from domain.errors import Conflict, NotFound
from domain.work_session import WorkSession

log = logging.getLogger("worksession.ops")

WORKFLOW_NOT_RUNNING = "workflow_not_running"
STUCK_REASONS = (ACTIVITY_FAILING, WORKFLOW_TASK_FAILING, NO_WORKER, WORKFLOW_NOT_RUNNING)
# A session row younger than this may belong to a run that visibility has not shown yet.
ORPHAN_GRACE = timedelta(seconds=60)


async def stuck_sessions(ctx: Context, actor: Actor | None) -> list[dict[str, Any]]:
    if actor is not None:
        authorize(actor, "ops")
    found = [asdict(s) for s in await ctx.workflows.find_stuck()]
    try:
        titles = {}
        async with ctx.uow(read_only=True) as uow:
            for s in found:
                if s["session_id"]:
                    row = await uow.sessions.load(UUID(s["session_id"]), with_checks=False)
                    titles[s["session_id"]] = row.state.sop_title if row else None
            candidates = await uow.sessions.active_not_updated_since(
                ctx.clock() - ORPHAN_GRACE)
    except Exception:  # the database may be the very thing that is down
        titles, candidates = {}, []
    for s in found:
        s["sop_title"] = titles.get(s["session_id"])
    found += [_orphan(r) for r in await _orphans(ctx, candidates)]
    return found


async def _orphans(ctx: Context, rows: list[StoredSession]) -> list[StoredSession]:
    gate = asyncio.Semaphore(8)

    async def held(row: StoredSession) -> bool:
        async with gate:
            running = await ctx.workflows.running(row.state.worker_id)
        return running is not None and running.session_id == row.state.id

    flags = await asyncio.gather(*(held(r) for r in rows))
    return [r for r, ok in zip(rows, flags, strict=True) if not ok]


def _orphan(row: StoredSession) -> dict[str, Any]:
    st = row.state
    return {"workflow_id": row.workflow_id, "run_id": row.run_id, "session_id": str(st.id),
            "worker_id": str(st.worker_id), "sop_id": str(st.sop_id), "sop_title": st.sop_title,
            "kind": WORKFLOW_NOT_RUNNING,
            "reason": "the database says the session is active but no running workflow holds "
                      "it (terminated or lost); retry starts a run from the database copy",
            "attempts": 0, "since": None, "last_error": None, "activity_id": None,
            "next_attempt_at": None}


async def retry_session(ctx: Context, actor: Actor | None, session_id: UUID) -> dict[str, Any]:
    async with ctx.uow(read_only=True) as uow:
        stored = await uow.sessions.load(session_id)
    if actor is not None:  # CONTRACT precedence: 404 (may not see it), then 403
        ensure_visible(actor, stored.state.worker_id if stored else None)
        authorize(actor, "ops")
    if stored is None:
        raise NotFound("session not found")
    worker = stored.state.worker_id
    if stored.session.is_active and await ctx.workflows.running(worker) is None:
        # Read again now that no run is seen: a run closes only after its last state is
        # saved, so a row still active now really has no run (terminated or lost).
        async with ctx.uow(read_only=True) as uow:
            stored = await uow.sessions.load(session_id)
        assert stored is not None
        if stored.session.is_active:
            try:
                run_id = await ctx.workflows.start(stored.session.plan, stored.state, None)
            except WorkflowRunning as e:
                held = e.running.session_id if e.running else None
                raise Conflict(f"session {session_id} is not stuck: its worker's workflow "
                               f"now holds session {held}") from None
            return {"session_id": str(session_id), "kind": WORKFLOW_NOT_RUNNING,
                    "action": f"started a new run {run_id} from the database copy "
                              f"({len(stored.state.checks)} checks, step "
                              f"{_step_label(stored.session)})"}
    stuck = await ctx.workflows.diagnose(worker)
    if stuck is None or stuck.session_id != str(session_id):
        raise Conflict(f"session {session_id} is not stuck: its workflow is making progress "
                       "(or is closed); nothing to retry")
    if stuck.kind == NO_WORKER:
        raise Conflict(f"session {session_id} is waiting, which a retry cannot fix: "
                       f"{stuck.reason}")
    return {"session_id": str(session_id), "kind": stuck.kind,
            "action": await ctx.workflows.retry(stuck)}


def _step_label(session: WorkSession) -> str:
    step = session.state.current_step_id
    i = None if step is None else session.plan.index_of(step)
    return "none" if i is None else f"{i + 1} of {len(session.plan.steps)}"


async def keep_gauges(ctx: Context, meter: Meter, every: timedelta) -> None:
    """Refresh the fleet gauges every `every`, not on each scrape: finding stuck sessions
    describes each running session workflow (`ops stuck`'s own diagnosis)."""
    while True:
        try:
            async with ctx.uow(read_only=True) as uow:
                meter.set("worksession_sessions_needing_attention",
                          await uow.sessions.count_needing_attention(), {})
        except Exception:  # the database may be down: the figure stays as it was
            log.warning("could not count the sessions needing attention", exc_info=True)
        try:
            kinds = Counter(s["kind"] for s in await stuck_sessions(ctx, None))
            for reason in STUCK_REASONS:
                meter.set("worksession_sessions_stuck", kinds.get(reason, 0),
                          {"reason": reason})
        except Exception:  # Temporal may be down: the no-worker alert covers that
            log.warning("could not look for stuck sessions", exc_info=True)
        await asyncio.sleep(every.total_seconds())
