"""Work-session use cases (spec session-001 … 009).

A live session (in progress or paused) changes only inside its workflow; a closed one is
read from the database, where approval and the lock live. Every state-changing request that
reaches a session is audited, accepted or rejected."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from sqlalchemy.ext.asyncio import AsyncConnection

from application import audit
from application.authz import Actor, allowed, authorize, ensure_visible
from application.context import Context
from domain.errors import (
    ActiveSessionExists,
    Conflict,
    InvalidInput,
    NotFound,
    SessionLocked,
    Unavailable,
)
from domain.sop import CheckResult
from domain.work_session import ACTIVE_STATUSES, CheckSubmission, SessionStatus, WorkSession
from persistence import sessions, sops
from persistence.sessions import SessionRow
from workflows.client import RunClosed, WorkflowRunning
from workflows.messages import PersistSession, SessionCommand, SubmitCheck, workflow_id_for

# How long a start waits for the worker's previous run to finish closing after it answered
# `completed` or `cancelled` (it closes within milliseconds; this is a generous bound).
CLOSING_RUN_WAIT_SECONDS = 5.0


async def _row(ctx: Context, actor: Actor, session_id: UUID, *,
               with_checks: bool = True) -> tuple[SessionRow, WorkSession]:
    async with ctx.db.read() as conn:
        row = await sessions.get(conn, session_id, with_checks=with_checks)
        ensure_visible(actor, row.state.worker_id if row else None)
        assert row is not None
        plan = await ctx.plans.get(conn, row.state.sop_id)
    return row, WorkSession(plan=plan, state=row.state)


def _render(row: SessionRow, session: WorkSession) -> dict[str, Any]:
    return session.view(run_id=row.run_id, workflow_id=row.workflow_id)


@dataclass
class Outcome:
    """What a request decided: the session to answer with and, when a run took a change,
    the committed state the API writes to the read model with the audit entry."""

    view: dict[str, Any]
    write: PersistSession | None = None


async def _taken(ctx: Context, change: PersistSession) -> Outcome:
    plan = await ctx.plans.of(ctx.db, change.state.sop_id)
    view = WorkSession(plan=plan, state=change.state).view(run_id=change.run_id,
                                                           workflow_id=change.workflow_id)
    return Outcome(view, change)


# ---- start (session-001, session-009) ---------------------------------------------------------
async def start_session(ctx: Context, actor: Actor, sop_id: UUID,
                        request_id: str | None = None) -> dict[str, Any]:
    authorize(actor, "session.start")
    try:
        view = await _with_closing_run_wait(ctx, actor.id, lambda: _start_once(ctx, actor, sop_id))
    except ActiveSessionExists as e:
        existing = e.extra.get("existing_session_id")
        await audit.record(ctx, actor, "session_start", "rejected",
                           session_id=UUID(existing) if existing else None,
                           detail={"sop_id": str(sop_id), "reason": e.code},
                           request_id=request_id)
        raise
    await audit.record(ctx, actor, "session_start", "accepted", session_id=UUID(view["id"]),
                       detail={"sop_id": str(sop_id)}, request_id=request_id)
    return view


async def _with_closing_run_wait(ctx: Context, worker_id: UUID,
                                 attempt: Callable[[], Awaitable[dict[str, Any]]]
                                 ) -> dict[str, Any]:
    """Start the worker's workflow. If Temporal still has an open run while the database has
    no active session, the previous session answered completed/cancelled and its run is
    closing: wait for it (bounded), then try once more."""
    try:
        return await attempt()
    except WorkflowRunning as first:
        blocking = first.session_id
    if await ctx.workflows.wait_closed(worker_id, CLOSING_RUN_WAIT_SECONDS):
        try:
            return await attempt()
        except WorkflowRunning as again:
            blocking = again.session_id
    if blocking is not None and await ctx.owners.get(ctx.db, blocking) is None:
        # A start whose answer was lost (its transaction failed after the run began, as in
        # a database outage): the run records its session by itself once it can. Until
        # then there is no session to point at.
        raise Unavailable("a session started for you is still being recorded; resend the "
                          "request in a moment")
    raise ActiveSessionExists(
        "the worker already has a session in progress: complete or cancel it first",
        existing_session_id=str(blocking) if blocking else None)


async def _start_once(ctx: Context, actor: Actor, sop_id: UUID) -> dict[str, Any]:
    # One write transaction holds the SOP (row lock on PostgreSQL, the write lock on SQLite)
    # from the status check to the session insert, so a racing delete either sees this
    # session (and refuses) or archives first (and this start refuses).
    async with ctx.db.write() as conn:
        sop = await sops.get(conn, sop_id, for_update=True)
        if sop is None:
            raise NotFound("SOP not found")
        sop.ensure_startable()
        existing = await sessions.active_for_worker(conn, actor.id)
        if existing is not None:
            raise ActiveSessionExists(
                "you already have a session in progress: complete or cancel it first",
                existing_session_id=str(existing.state.id))
        plan = sop.plan()
        session = WorkSession.start(uuid4(), actor.id, plan, ctx.clock())
        run_id = await ctx.workflows.start(plan, session.state)
        row = SessionRow(session.state, workflow_id_for(actor.id), run_id)
        await sessions.save(ctx.db, conn, session.state, row.workflow_id, run_id, ctx.clock())
    ctx.owners.remember(session.state.id, actor.id)
    return _render(row, session)


# ---- worker actions on a session ---------------------------------------------------------
async def _act(ctx: Context, actor: Actor, session_id: UUID, action: str,
               live: Callable[[], Awaitable[PersistSession]],
               offline: Callable[[WorkSession], Any], detail: dict[str, Any],
               request_id: str | None, dedup_key: str | None = None) -> dict[str, Any]:
    async def decide() -> Outcome:
        # A worker's request goes first to the worker's own run (the workflow ID is the
        # worker's), which takes it only for the session it holds: no read is needed to know
        # whose session it is or whether it is active. Whatever that run refuses (another
        # worker's session, a closed one, no run at all) is decided on the database copy.
        # A closed session is offered to the run too: the database can be one change ahead
        # of a run that is still open when the workflow task that wrote it was lost (a
        # crashed Temporal server), and that run must get the resend, not the copy.
        if allowed(actor, "session.work"):
            try:
                return await _taken(ctx, await live())
            except RunClosed:
                pass
        row, stored = await _row(ctx, actor, session_id)  # 404 first, then 403
        authorize(actor, "session.work")
        if stored.is_active:
            # The database says active but no run holds the session (terminated by hand,
            # lost): answering from a copy would accept a check nobody records.
            raise Unavailable("this session's workflow is not running; operators can restart "
                              "it with `worksession ops retry`. Resend the request later.")
        return Outcome(_offline(row, stored, offline))

    return await _audited(ctx, actor, session_id, action, decide, detail, request_id,
                          dedup_key)


async def _audited(ctx: Context, actor: Actor, session_id: UUID, action: str,
                   run: Callable[[], Awaitable[Outcome]], detail: dict[str, Any],
                   request_id: str | None, dedup_key: str | None = None) -> dict[str, Any]:
    """Every state-changing request that reaches a session leaves an audit entry: accepted,
    rejected, or `modification_rejected` when the session is locked. An accepted change a
    run took is written to the read model in the entry's transaction, before the answer."""
    try:
        outcome = await run()
    except SessionLocked as e:
        await audit.record(ctx, actor, "modification_rejected", "rejected", session_id,
                           {"attempted": action, "reason": e.detail, **detail}, request_id)
        raise
    except (Conflict, InvalidInput) as e:
        await audit.record(ctx, actor, action, "rejected", session_id,
                           {"reason": e.detail, "code": e.code, **detail}, request_id)
        raise
    change = outcome.write
    if change is None or change.written:
        await audit.record(ctx, actor, action, "accepted", session_id, detail, request_id,
                           dedup_key=dedup_key)
        return outcome.view

    async def save(conn: AsyncConnection) -> None:
        await sessions.save(ctx.db, conn, change.state, change.workflow_id, change.run_id,
                            ctx.clock(), run_position=change.run_position)

    try:
        await audit.record(ctx, actor, action, "accepted", session_id, detail, request_id,
                           dedup_key=dedup_key, along_with=save)
    except Unavailable:
        # The run holds the change; the read model does not yet. The run writes it itself
        # (now, if the signal gets through), and a resend is answered from the run.
        await ctx.workflows.ask_to_write(change.state.worker_id)
        raise Unavailable("the session took the change but the database did not: resend the "
                          "same request (with the same check_id) to get its outcome") from None
    return outcome.view


def _offline(row: SessionRow, session: WorkSession, action: Callable[[WorkSession], Any]
             ) -> dict[str, Any]:
    """A closed session: the domain decides (locked, wrong state, or an idempotent repeat)
    on a copy; nothing is written."""
    action(session.copy())
    return _render(row, session)


async def submit_check(ctx: Context, actor: Actor, session_id: UUID, *, step_id: UUID,
                       result: CheckResult | None, value: float | None, notes: str | None,
                       evidence_uri: str | None, check_id: UUID | None,
                       request_id: str | None = None) -> dict[str, Any]:
    check_id = check_id or uuid4()
    cmd = SubmitCheck(actor_id=actor.id, session_id=session_id, check_id=check_id,
                      step_id=step_id, result=result, value=value, notes=notes,
                      evidence_uri=evidence_uri)
    sub = CheckSubmission(check_id=check_id, step_id=step_id, result=result, value=value,
                          notes=notes, evidence_uri=evidence_uri)
    return await _act(
        ctx, actor, session_id, "check_submitted",
        live=lambda: ctx.workflows.submit_check(actor.id, cmd),
        offline=lambda s: s.add_check(sub, by=actor.id, now=ctx.clock()),
        detail={"check_id": str(check_id), "step_id": str(step_id),
                "result": result.value if result else None, "value": value},
        request_id=request_id, dedup_key=f"check:{session_id}:{check_id}")


async def complete_session(ctx: Context, actor: Actor, session_id: UUID,
                           request_id: str | None = None) -> dict[str, Any]:
    return await _command(ctx, actor, session_id, "complete",
                          lambda s: s.complete(ctx.clock(), manual=True), None, request_id)


async def pause_session(ctx: Context, actor: Actor, session_id: UUID,
                        request_id: str | None = None) -> dict[str, Any]:
    return await _command(ctx, actor, session_id, "pause", lambda s: s.pause(ctx.clock()),
                          None, request_id)


async def resume_session(ctx: Context, actor: Actor, session_id: UUID,
                         request_id: str | None = None) -> dict[str, Any]:
    return await _command(ctx, actor, session_id, "resume", lambda s: s.resume(ctx.clock()),
                          None, request_id)


async def cancel_session(ctx: Context, actor: Actor, session_id: UUID, reason: str,
                         request_id: str | None = None) -> dict[str, Any]:
    return await _command(ctx, actor, session_id, "cancel",
                          lambda s: s.cancel(reason, ctx.clock()), reason, request_id)


async def _command(ctx: Context, actor: Actor, session_id: UUID, name: str,
                   offline: Callable[[WorkSession], Any], reason: str | None,
                   request_id: str | None) -> dict[str, Any]:
    cmd = SessionCommand(actor_id=actor.id, session_id=session_id, reason=reason)
    return await _act(ctx, actor, session_id, f"session_{name}",
                      live=lambda: ctx.workflows.command(actor.id, name, cmd), offline=offline,
                      detail={"reason": reason} if reason else {}, request_id=request_id)


# ---- supervisor actions --------------------------------------------------------------------
async def approve_session(ctx: Context, actor: Actor, session_id: UUID,
                          request_id: str | None = None) -> dict[str, Any]:
    async def approve() -> dict[str, Any]:
        row, session = await _row(ctx, actor, session_id)
        session.copy().approve(actor.id, ctx.clock())  # the domain's refusals come first
        await _ensure_run_closed(ctx, session)
        session.approve(actor.id, ctx.clock())
        async with ctx.db.write() as conn:
            won = await sessions.approve(conn, session.state, ctx.clock())
        if not won:  # someone else changed it first: decide again on what is stored now
            row, session = await _row(ctx, actor, session_id)
            session.approve(actor.id, ctx.clock())
            raise Conflict("the session changed while it was being approved; try again")
        return _render(row, session)

    return await _supervise(ctx, actor, session_id, "session_approve", approve, {}, request_id)


async def _ensure_run_closed(ctx: Context, session: WorkSession) -> None:
    """Only a session no run holds any more can be locked. The run closes within
    milliseconds of answering `completed`; one that still holds the session after that is
    not done (the database got ahead of it when a workflow task was lost), and locking it
    would leave the worker with a run nobody may finish."""
    worker = session.state.worker_id
    if await ctx.workflows.running_session_id(worker) != session.state.id:
        return
    if not await ctx.workflows.wait_closed(worker, CLOSING_RUN_WAIT_SECONDS):
        raise Conflict("the session's workflow is still running: it is not finished yet; "
                       "try again later")


async def reopen_session(ctx: Context, actor: Actor, session_id: UUID, reason: str,
                         step_id: UUID | None, request_id: str | None = None) -> dict[str, Any]:
    async def reopen_once() -> dict[str, Any]:
        # Decide on the row as it is now and hold it (an approval racing this waits), so
        # the new run is started only for a session that really goes back to work.
        async with ctx.db.write() as conn:
            row = await sessions.get(conn, session_id, for_update=True)
            assert row is not None
            session = WorkSession(plan=await ctx.plans.get(conn, row.state.sop_id),
                                  state=row.state)
            session.reopen(ctx.clock(), step_id)
            worker_id = session.state.worker_id
            other = await sessions.active_for_worker(conn, worker_id, with_checks=False)
            if other is not None:
                raise ActiveSessionExists(
                    "the worker has another active session: it must be completed or "
                    "cancelled first", existing_session_id=str(other.state.id))
            run_id = await ctx.workflows.start(session.plan, session.state)
            reopened = SessionRow(session.state, row.workflow_id, run_id)
            await sessions.save(ctx.db, conn, session.state, row.workflow_id, run_id,
                                ctx.clock())
        return _render(reopened, session)

    async def reopen() -> dict[str, Any]:
        _, session = await _row(ctx, actor, session_id, with_checks=False)
        return await _with_closing_run_wait(ctx, session.state.worker_id, reopen_once)

    detail = {"reason": reason, "step_id": str(step_id) if step_id else None}
    return await _supervise(ctx, actor, session_id, "session_reopen", reopen, detail,
                            request_id)


async def _supervise(ctx: Context, actor: Actor, session_id: UUID, action: str,
                     run: Callable[[], Awaitable[dict[str, Any]]], detail: dict[str, Any],
                     request_id: str | None) -> dict[str, Any]:
    await _row(ctx, actor, session_id, with_checks=False)  # 404 first
    authorize(actor, "session.override")

    async def decide() -> Outcome:
        return Outcome(await run())

    return await _audited(ctx, actor, session_id, action, decide, detail, request_id)


# ---- reads (session-003) -------------------------------------------------------------------
async def current_session(ctx: Context, actor: Actor) -> dict[str, Any]:
    """The worker's active session, as its live workflow knows it."""
    if not allowed(actor, "session.start"):  # only those who work sessions have a current one
        raise NotFound("supervisors and admins have no current session")
    # The worker's workflow ID is the worker's: ask its run first (a closed run refuses the
    # query at once instead of replaying its history).
    try:
        view = await ctx.workflows.query(actor.id)
        if SessionStatus(view["status"]) in ACTIVE_STATUSES:
            return view
    except RunClosed:
        pass
    # No open run holds an active session; the database may still (a run terminated by
    # hand): then its copy is shown, and ops can restart the run.
    async with ctx.db.read() as conn:
        row = await sessions.active_for_worker(conn, actor.id, with_checks=False)
    if row is None:
        raise NotFound("you have no session in progress or paused")
    _, session = await _row(ctx, actor, row.state.id)
    return _render(row, session)


async def get_session(ctx: Context, actor: Actor, session_id: UUID) -> dict[str, Any]:
    row, session = await _row(ctx, actor, session_id)
    return _render(row, session)


async def list_sessions(ctx: Context, actor: Actor, status: SessionStatus | None, limit: int,
                        offset: int) -> tuple[list[dict], int]:
    authorize(actor, "session.read")
    worker = None if allowed(actor, "session.read_all") else actor.id
    async with ctx.db.read() as conn:
        return await sessions.list_page(conn, worker, status, limit, offset)



async def gate(ctx: Context, actor: Actor, session_id: UUID, permission: str) -> None:
    """The precedence of CONTRACT.md: 404 (may not see it), then 403 (may not do it)."""
    ensure_visible(actor, await ctx.owners.get(ctx.db, session_id))
    authorize(actor, permission)
