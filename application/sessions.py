"""Work-session use cases (spec session-001 … 009).

A live session (in progress or paused) changes only inside its workflow run, which answers
each accepted action with the change it made; a closed one changes only here (approval,
reopening). Either way the change is written by `write_change`, with its audit entries, in
one transaction (docs/architecture.md). Every state-changing request that reaches a session
is audited, accepted or rejected."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from uuid import UUID, uuid4

from application.authz import Actor, allowed, authorize, ensure_visible
from application.context import Context
from application.ports import RunClosed, StoredSession, UnitOfWork, WorkflowRunning
from domain.changes import AuditFacts, SessionChange
from domain.errors import (
    ActiveSessionExists,
    Conflict,
    InvalidInput,
    NotFound,
    ReauthenticationRequired,
    SessionLocked,
    SopNotStartable,
    Unavailable,
)
from domain.signature import Meaning, Signature
from domain.sop import SessionPlan, SopStatus
from domain.work_session import (
    ACTIVE_STATUSES,
    BEGINNING,
    CheckSubmission,
    SessionFilter,
    SessionState,
    WorkSession,
)
from worksession import logs

log = logging.getLogger("worksession.api")
T = TypeVar("T")

# How long a start, reopen or approval waits for a run to close once the database says its
# session is closed (it closes within milliseconds of its final write; a generous bound).
CLOSING_RUN_WAIT_SECONDS = 5.0


@dataclass(frozen=True)
class Access:
    """A request's right to act on one session, decided once (`gate`): 404 before 403."""

    actor: Actor
    session_id: UUID


async def gate(ctx: Context, actor: Actor, session_id: UUID, permission: str) -> Access:
    owner = await ctx.owner(session_id)
    _log_about(ctx, session_id, owner)
    ensure_visible(actor, owner)
    authorize(actor, permission)
    return Access(actor, session_id)


def _log_about(ctx: Context, session_id: UUID, worker_id: UUID | None) -> None:
    """The rest of this request's log lines are about this session (worksession/logs.py)."""
    logs.bind(session_id=session_id, worker_id=worker_id,
              workflow_id=ctx.workflows.workflow_id(worker_id) if worker_id else None)


def _log_written(change: SessionChange, new: bool) -> None:
    logs.bind(run_id=change.run_id)
    log.info("session change written: version %d (%s)%s", change.state.version,
             ", ".join(e.action for e in change.entries), "" if new else ", already recorded")


def _facts(actor: Actor, action: str, request_id: str | None, **detail: Any) -> AuditFacts:
    return AuditFacts(action, actor.id, actor.role.value, detail, request_id)


async def _write(ctx: Context, session_id: UUID, change: SessionChange | None
                 ) -> StoredSession:
    """Write the change (when there is one) and answer with the session as now recorded."""
    logs.bind(run_id=change.run_id if change else None)
    try:
        async with ctx.uow() as uow:
            new = change is not None and await uow.sessions.write_change(change)
            stored = await _load(uow, session_id)
    except Exception as e:
        if change is not None:  # the client is answered 503 and may resend: nothing is lost
            log.warning("session change not written: version %d (%s); its run holds it and "
                        "writes it itself", change.state.version, e)
        raise
    if change is not None:
        _log_written(change, new)
    return stored


async def _load(uow: UnitOfWork, session_id: UUID, **kw: Any) -> StoredSession:
    """A session `gate` let through: it is recorded."""
    stored = await uow.sessions.load(session_id, **kw)
    assert stored is not None
    return stored


async def _reject(ctx: Context, session_id: UUID, facts: AuditFacts) -> None:
    async with ctx.uow() as uow:
        await uow.sessions.record_rejection(session_id, facts, ctx.clock())


async def _audited(ctx: Context, session_id: UUID, facts: AuditFacts,
                   decide: Callable[[], Awaitable[T]]) -> T:
    """Run `decide`; a refusal leaves its audit entry (`modification_rejected` when the
    session is locked), in a transaction of its own: the refusal may come from the run or
    from a transaction that it rolled back. What `decide` accepts is audited by the change
    it writes."""
    try:
        return await decide()
    except SessionLocked as e:
        await _reject(ctx, session_id, AuditFacts(
            "modification_rejected", facts.actor_id, facts.actor_role,
            {"attempted": facts.action, "reason": e.detail, **facts.detail}, facts.request_id,
            outcome="rejected"))
        raise
    except (Conflict, InvalidInput) as e:
        await _reject(ctx, session_id, facts.rejected(reason=e.detail, code=e.code))
        raise


# ---- start (session-001, session-009) ---------------------------------------------------------
async def start_session(ctx: Context, actor: Actor, sop_id: UUID,
                        request_id: str | None = None) -> StoredSession:
    """No transaction is open while Temporal is called, and starts of one SOP do not wait
    on each other: the SOP is read, the run started, then the session written while the SOP
    row is held in share mode, so that an SOP delete racing starts is decided one way or the
    other (it holds the row exclusively while it looks for active sessions). Hence two
    transactions around the run's start (a third only to audit a refusal)."""
    authorize(actor, "session.start")
    facts = _facts(actor, "session_start", request_id, sop_id=str(sop_id))
    async with ctx.uow(read_only=True) as uow:
        sop = await uow.sops.get(sop_id, with_content=False)
        if sop is None:
            raise NotFound("SOP not found")
        sop.ensure_startable()
        plan = await uow.sops.plan(sop_id)
        existing = await uow.sessions.active_for_worker(actor.id, with_checks=False)
    try:
        if existing is not None:
            raise ActiveSessionExists(
                "you already have a session in progress: complete or cancel it first",
                existing_session_id=str(existing.state.id))
        session = WorkSession.start(uuid4(), actor.id, plan, ctx.clock())
        _log_about(ctx, session.state.id, actor.id)
        change = SessionChange.of(session.state, BEGINNING, [facts], session.state.started_at,
                                  ctx.workflows.workflow_id(actor.id), None)
        change.run_id = await _start_run(ctx, plan, session.state, change)
    except ActiveSessionExists as e:
        async with ctx.uow() as uow:
            await uow.audit.append_to_sop_family(sop.family_id, facts.rejected(
                reason=e.code, existing_session_id=e.extra.get("existing_session_id")),
                ctx.clock())
        raise
    async with ctx.uow() as uow:
        held = await uow.sops.get(sop_id, lock="share", with_content=False)
        lost = held is None or held.status is not SopStatus.CONFIRMED
        if not lost:
            new = await uow.sessions.write_change(change)
    if lost:  # an SOP delete or archive got in first: the run must not go on
        await ctx.workflows.terminate(actor.id, change.run_id,
                                      "its SOP was archived or deleted while it started")
        raise SopNotStartable("the SOP was archived or deleted while the session started")
    _log_written(change, new)
    ctx.owners.remember(session.state.id, actor.id)
    return StoredSession(session, change.workflow_id, change.run_id, _own_name(ctx, actor))


def _own_name(ctx: Context, actor: Actor) -> str | None:
    """The caller's name in the directory, for an answer about their own session that is not
    read from the database (a start, the live run's): this request has just written it there
    if it differed (api/deps.current_actor), so this process's memo knows it."""
    return ctx.people.name_of(actor.id)


async def _start_run(ctx: Context, plan: SessionPlan, state: Any,
                     change: SessionChange | None) -> str:
    """Start the worker's run. When the worker's workflow ID runs another session: one the
    database has as closed is a run closing after its final change (wait for that run, then
    try once more); any other is the worker's active session (409 at once, naming it)."""
    worker = state.worker_id
    for _ in range(3):
        try:
            return await ctx.workflows.start(plan, state, change)
        except WorkflowRunning as e:
            running = e.running
        if running is None or running.session_id is None:
            continue  # the run closed between the start and the look at it: try again
        async with ctx.uow(read_only=True) as uow:
            row = await uow.sessions.load(running.session_id, with_checks=False)
        if row is None:
            # A start still being written (another request's), or one whose answer was
            # lost (its API died, or its write failed, after the run began): the run is
            # asked to write it now. Named once the worker can read it, not before.
            await ctx.workflows.ask_to_write(worker)
            if not await _recorded(ctx, running.session_id, CLOSING_RUN_WAIT_SECONDS):
                raise Unavailable("a session started for you is still being recorded; "
                                  "resend the request in a moment")
        if row is None or row.state.status in ACTIVE_STATUSES:
            raise ActiveSessionExists(
                "the worker already has a session in progress: complete or cancel it first",
                existing_session_id=str(running.session_id))
        if not await ctx.workflows.wait_closed(worker, running.run_id,
                                               CLOSING_RUN_WAIT_SECONDS):
            break
    raise Unavailable("the worker's previous session is still closing; resend the request "
                      "in a moment")


async def _recorded(ctx: Context, session_id: UUID, within: float) -> bool:
    """Wait (bounded) for a session to be in the database."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with ctx.uow(read_only=True) as uow:
            if await uow.sessions.owner(session_id) is not None:
                return True
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)


# ---- worker actions on a session ---------------------------------------------------------
async def _act(ctx: Context, access: Access, facts: AuditFacts,
               live: Callable[[], Awaitable[SessionChange | None]],
               offline: Callable[[WorkSession], Any]) -> StoredSession:
    async def decide() -> StoredSession:
        # The request goes first to the worker's own run (the workflow ID is the worker's;
        # `gate` let only the session's worker through), which takes it only for the session
        # it holds: no read is needed to know whether it is active. What no run holds (a
        # closed session) is decided on the database copy.
        try:
            return await _write(ctx, access.session_id, await live())
        except RunClosed:
            pass
        async with ctx.uow(read_only=True) as uow:
            stored = await _load(uow, access.session_id)
        if stored.session.is_active:
            # The database says active but no run holds the session (terminated by hand,
            # lost): answering from a copy would accept a change nobody records.
            raise Unavailable("this session's workflow is not running; operators can "
                              "restart it with `worksession ops retry`. Resend later.")
        offline(stored.session.copy())  # locked, wrong state, or an idempotent repeat
        return stored

    return await _audited(ctx, access.session_id, facts, decide)


async def submit_check(ctx: Context, access: Access, sub: CheckSubmission,
                       request_id: str | None = None) -> StoredSession:
    actor = access.actor
    facts = _facts(actor, "check_submitted", request_id, check_id=str(sub.check_id),
                   step_id=str(sub.step_id), result=sub.result.value if sub.result else None,
                   value=sub.value)
    if sub.evidence_ids:
        sub = await _audited(ctx, access.session_id, facts,
                             lambda: _with_files(ctx, access, sub))
        # the entry names the files' bytes: the session's hash chain covers them
        facts = replace(facts, detail={**facts.detail,
                                       "evidence": [f.sha256 for f in sub.evidence]})
    return await _act(ctx, access, facts,
                      live=lambda: ctx.workflows.submit_check(actor.id, access.session_id,
                                                              sub, facts),
                      offline=lambda s: s.add_check(sub, by=actor.id, now=ctx.clock()))


async def _with_files(ctx: Context, access: Access, sub: CheckSubmission
                      ) -> CheckSubmission:
    """The files the check names, found among the session's uploads (422 for any other).
    Whether one is on another check is the session's to say (its run holds the checks)."""
    async with ctx.uow() as uow:
        uploads = await uow.evidence.named(access.session_id, sub.evidence_ids, ctx.clock())
    return sub.with_files(u.file() for u in uploads)


async def complete_session(ctx: Context, access: Access,
                           request_id: str | None = None) -> StoredSession:
    return await _command(ctx, access, "complete",
                          lambda s: s.complete(ctx.clock(), manual=True), None, request_id)


async def pause_session(ctx: Context, access: Access,
                        request_id: str | None = None) -> StoredSession:
    return await _command(ctx, access, "pause", lambda s: s.pause(ctx.clock()), None,
                          request_id)


async def resume_session(ctx: Context, access: Access,
                         request_id: str | None = None) -> StoredSession:
    return await _command(ctx, access, "resume", lambda s: s.resume(ctx.clock()), None,
                          request_id)


async def cancel_session(ctx: Context, access: Access, reason: str,
                         request_id: str | None = None) -> StoredSession:
    return await _command(ctx, access, "cancel", lambda s: s.cancel(reason, ctx.clock()),
                          reason, request_id)


async def _command(ctx: Context, access: Access, name: str,
                   offline: Callable[[WorkSession], Any], reason: str | None,
                   request_id: str | None) -> StoredSession:
    detail = {"reason": reason} if reason else {}
    facts = _facts(access.actor, f"session_{name}", request_id, **detail)
    return await _act(ctx, access, facts,
                      live=lambda: ctx.workflows.command(access.actor.id, name,
                                                         access.session_id, reason, facts),
                      offline=offline)


# ---- signatures (CONTRACT.md, "Electronic signatures") ------------------------------------
# Who may sign with which meaning (the domain adds: performed by the session's own worker,
# verified by anyone but them).
SIGNING_PERMISSION = {Meaning.PERFORMED: "session.work", Meaning.VERIFIED: "session.override",
                      Meaning.APPROVED: "session.override"}


def ensure_fresh(ctx: Context, actor: Actor) -> None:
    """A signer authenticated at most `signature_max_age` seconds ago (the token's
    `auth_time`, else its `iat`): 401 otherwise, before anything is read or recorded."""
    max_age = ctx.signature_max_age
    if actor.auth_time is None or \
            (ctx.clock() - actor.auth_time).total_seconds() > max_age:
        raise ReauthenticationRequired(
            f"signing needs a sign-in at most {max_age} seconds old: sign in again and "
            "resend the request with the new token", max_age=max_age)


def _signature(ctx: Context, access: Access, meaning: Meaning, step_id: UUID | None,
               statement: str | None) -> Signature:
    """The caller's signature, once they may sign with this meaning and are freshly
    authenticated. Its name: the token's (`name`, else `preferred_username`), else the id."""
    actor = access.actor
    authorize(actor, SIGNING_PERMISSION[meaning])
    ensure_fresh(ctx, actor)
    return Signature(id=uuid4(), session_id=access.session_id, meaning=meaning,
                     step_id=step_id, signer_id=actor.id, signer_name=actor.name or str(actor.id),
                     signer_role=actor.role.value, signed_at=ctx.clock(), statement=statement)


async def sign(ctx: Context, access: Access, meaning: Meaning, step_id: UUID | None,
               statement: str | None, request_id: str | None = None) -> Signature:
    """`POST /sessions/{id}/signatures`: the signature as recorded (with its record_hash)."""
    if meaning is Meaning.APPROVED:
        stored = await approve_session(ctx, access, request_id, statement, step_id)
        return stored.state.signatures[-1]
    sig = _signature(ctx, access, meaning, step_id, statement)
    facts = AuditFacts.signed(sig, request_id)
    if meaning is Meaning.VERIFIED:
        # The run decides (it holds the wait): of two verifications at once, one is taken.
        worker = await ctx.owner(access.session_id)
        assert worker is not None  # `gate` let the request through: it is recorded
        stored = await _act(ctx, access, facts,
                            live=lambda: ctx.workflows.verify(worker, access.session_id, sig,
                                                              facts),
                            offline=lambda s: s.verify(sig))
    else:
        stored = await _audited(ctx, access.session_id, facts, lambda: _change_recorded(
            ctx, access, [facts], lambda s: s.sign_performed(sig)))
    # this request's signature, or the one it repeats (a verification resent: taken once)
    found = stored.session.signature_like(sig)
    assert found is not None
    return found


async def approve_session(ctx: Context, access: Access, request_id: str | None = None,
                          statement: str | None = None,
                          step_id: UUID | None = None) -> StoredSession:
    """The approver's `approved` signature: it is the approval (locks the session)."""
    sig = _signature(ctx, access, Meaning.APPROVED, step_id, statement)
    facts = _facts(access.actor, "session_approve", request_id, signature_id=str(sig.id))
    return await _audited(ctx, access.session_id, facts, lambda: _change_recorded(
        ctx, access, [AuditFacts.signed(sig, request_id), facts],
        lambda s: s.approve(sig.signer_id, sig.signed_at, sig)))


async def _change_recorded(ctx: Context, access: Access, entries: list[AuditFacts],
                           rule: Callable[[WorkSession], Any]) -> StoredSession:
    """A change of a closed session, which no run holds (approval, a performed signature):
    decided on the record and written with `entries`. Two transactions, Temporal between
    them: the session's run must have closed (and so written all it took) first, and no
    transaction waits on Temporal."""
    async with ctx.uow(read_only=True) as uow:
        stored = await _load(uow, access.session_id, with_checks=False)
    rule(stored.session.copy())  # the domain's refusals come first
    await _ensure_run_closed(ctx, stored.state)
    async with ctx.uow() as uow:
        stored = await _load(uow, access.session_id, for_update=True)
        session = stored.session
        before = session.mark()
        rule(session)
        change = SessionChange.of(session.state, before, entries, ctx.clock(),
                                  stored.workflow_id, stored.run_id)
        new = await uow.sessions.write_change(change)
        stored = await _load(uow, access.session_id)  # the signatures as written
    _log_written(change, new)
    return stored


async def _ensure_run_closed(ctx: Context, state: SessionState) -> None:
    """Only a session no run holds any more can be locked: a run closes after its final
    write, so until then the record may still lack a change the run took (an API that died
    before writing it) and the approval would lock an incomplete record."""
    running = await ctx.workflows.running(state.worker_id)
    if running is None or running.session_id != state.id:
        return
    if not await ctx.workflows.wait_closed(state.worker_id, running.run_id,
                                           CLOSING_RUN_WAIT_SECONDS):
        raise Conflict("the session's workflow is still running: it is not finished yet; "
                       "try again later")


async def reopen_session(ctx: Context, access: Access, reason: str, step_id: UUID | None,
                         request_id: str | None = None) -> StoredSession:
    facts = _facts(access.actor, "session_reopen", request_id, reason=reason,
                   step_id=str(step_id) if step_id else None)

    async def reopen() -> StoredSession:
        # As approval, and once more after the new run started (below).
        async with ctx.uow(read_only=True) as uow:
            stored = await _load(uow, access.session_id, with_checks=False)
        # the domain's refusals first; then decide on the record its closed run completed
        stored.session.copy().reopen(ctx.clock(), step_id)
        await _ensure_run_closed(ctx, stored.state)
        async with ctx.uow(read_only=True) as uow:
            stored = await _load(uow, access.session_id)
            session = stored.session
            before = session.mark()
            session.reopen(ctx.clock(), step_id)
            worker = session.state.worker_id
            other = await uow.sessions.active_for_worker(worker, with_checks=False)
        if other is not None:
            raise ActiveSessionExists(
                "the worker has another active session: it must be completed or cancelled "
                "first", existing_session_id=str(other.state.id))
        change = SessionChange.of(session.state, before, [facts], ctx.clock(),
                                  stored.workflow_id, None)
        change.run_id = await _start_run(ctx, session.plan, session.state, change)
        # A second transaction because the run had to start in between (no transaction is
        # open while Temporal is called): the session may have been approved meanwhile.
        async with ctx.uow() as uow:
            now = await _load(uow, access.session_id, with_checks=False, for_update=True)
            # unchanged, or changed only by the new run itself (its worker was quick)
            ours = now.state.version == before.version or now.run_id == change.run_id
            new = ours and await uow.sessions.write_change(change)
        if not ours:  # approved (or reopened) meanwhile: not this one
            await ctx.workflows.terminate(worker, change.run_id,
                                          "the session changed while it was reopened")
            now.session.copy().reopen(ctx.clock(), step_id)
            raise Conflict("the session changed while it was being reopened; try again")
        _log_written(change, new)
        return StoredSession(session, stored.workflow_id, change.run_id, stored.worker_name)

    return await _audited(ctx, access.session_id, facts, reopen)


# ---- reads (session-003) -------------------------------------------------------------------
async def current_session(ctx: Context, actor: Actor) -> StoredSession:
    """The worker's active session, as its live workflow knows it."""
    if not allowed(actor, "session.start"):  # only those who work sessions have a current one
        raise NotFound("supervisors and admins have no current session")
    # The worker's workflow ID is the worker's: ask its run first (a closed run refuses the
    # query at once instead of replaying its history).
    try:
        live = await ctx.workflows.live(actor.id)
        if live.session.is_active:
            return replace(live, worker_name=_own_name(ctx, actor))
    except RunClosed:
        pass
    # No open run holds an active session; the database may still (a run terminated by
    # hand): then its copy is shown, and ops can restart the run.
    async with ctx.uow(read_only=True) as uow:
        stored = await uow.sessions.active_for_worker(actor.id)
    if stored is None:
        raise NotFound("you have no session in progress or paused")
    return stored


async def get_session(ctx: Context, access: Access) -> StoredSession:
    async with ctx.uow(read_only=True) as uow:
        return await _load(uow, access.session_id)


async def list_sessions(ctx: Context, actor: Actor, f: SessionFilter, limit: int,
                        offset: int) -> tuple[list[dict], int]:
    """A worker's list is their own whatever the filter says (another worker's id selects
    nothing)."""
    authorize(actor, "session.read")
    owner = None if allowed(actor, "session.read_all") else actor.id
    async with ctx.uow(read_only=True) as uow:
        return await uow.sessions.list_page(owner, f, limit, offset)

