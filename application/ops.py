"""Operations: stuck sessions and retrying them (admins only)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any
from uuid import UUID

from application.authz import Actor, authorize, ensure_visible
from application.context import Context
from domain.errors import Conflict, NotFound
from persistence import sessions
from workflows import ops
from workflows.messages import workflow_id_for


async def stuck_sessions(ctx: Context, actor: Actor | None) -> list[dict[str, Any]]:
    if actor is not None:
        authorize(actor, "ops")
    found = await ctx.workflows.bounded(ops.find_stuck(ctx.workflows.client,
                                                        ctx.workflows.task_queue))
    out = []
    for s in found:
        item = asdict(s)
        item["sop_title"] = None
        if s.session_id:
            try:
                async with ctx.db.read() as conn:
                    row = await sessions.get(conn, UUID(s.session_id))
                item["sop_title"] = row.state.sop_title if row else None
            except Exception:  # the database may be the very thing that is down
                pass
        out.append(item)
    return out


async def retry_session(ctx: Context, actor: Actor | None, session_id: UUID) -> dict[str, Any]:
    async with ctx.db.read() as conn:
        row = await sessions.get(conn, session_id)
    if actor is not None:  # CONTRACT precedence: 404 (may not see it), then 403
        ensure_visible(actor, row.state if row else None)
        authorize(actor, "ops")
    if row is None:
        raise NotFound("session not found")
    client = ctx.workflows.client
    stuck = await ctx.workflows.bounded(ops.diagnose(client, workflow_id_for(row.state.worker_id)))
    if stuck is None or stuck.session_id != str(session_id):
        raise Conflict(f"session {session_id} is not stuck: its workflow is making progress "
                       "(or is closed); nothing to retry")
    if stuck.kind == ops.NO_WORKER:
        raise Conflict(f"session {session_id} waits for a worker, which a retry cannot fix: "
                       f"{stuck.reason}")
    done = await ctx.workflows.bounded(ops.retry(client, stuck))
    return {"session_id": str(session_id), "kind": stuck.kind, "action": done}
