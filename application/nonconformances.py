"""Nonconformance use cases (CONTRACT.md, "Nonconformances").

The record decides: each change of an NC (opening by hand, containment, closure, a missed
deadline) is decided on its row, held, and written with its audit entries on the NC's chain
(`nc:<id>`) in one transaction; only then is its workflow told (a signal, or its start),
which no transaction waits for. An NC opened by a failed check is written with that check
(persistence.sessions.write_change) and its workflow started by the session's run."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar
from uuid import UUID, uuid4

from application.authz import Actor, allowed, authorize
from application.context import Context
from application.events import Render, record_nonconformance, start_deliveries
from application.ports import Deliveries, SessionWorkflows, Store, UnitOfWork
from application.sessions import ensure_fresh
from domain.changes import SYSTEM, AuditFacts
from domain.errors import Conflict, InvalidInput, NotFound
from domain.nonconformance import (
    Deadline,
    Disposition,
    NcFilter,
    Nonconformance,
)
from domain.signature import Meaning, Signature
from domain.sop import Severity

log = logging.getLogger("worksession.api")
T = TypeVar("T")
# How long after a containment `follow_up` keeps asking whether the NC's workflow knows it:
# a minute's sweep finds a lost signal at its first run; this bounds the queries.
TELL_AGAIN_FOR = timedelta(hours=1)


@dataclass(frozen=True)
class NcAccess:
    """A request's right to act on one NC, decided once (`gate`): 404 before 403."""

    actor: Actor
    nc_id: UUID


async def gate(ctx: Context, actor: Actor, nc_id: UUID, permission: str) -> NcAccess:
    """A worker sees the NCs of their own sessions only; any other is 404 to them."""
    async with ctx.uow(read_only=True) as uow:
        exists, worker = await uow.nonconformances.worker_of(nc_id)
    if not exists or not (allowed(actor, "nc.read_all") or worker == actor.id):
        raise NotFound("nonconformance not found")
    authorize(actor, permission)
    return NcAccess(actor, nc_id)


def _facts(actor: Actor, action: str, request_id: str | None, **detail: object) -> AuditFacts:
    return AuditFacts(action, actor.id, actor.role.value, dict(detail), request_id)


async def get(ctx: Context, access: NcAccess) -> Nonconformance:
    async with ctx.uow(read_only=True) as uow:
        nc = await uow.nonconformances.get(access.nc_id)
    assert nc is not None  # `gate` let it through
    return nc


async def list_page(ctx: Context, actor: Actor, f: NcFilter, limit: int,
                    offset: int) -> tuple[list[Nonconformance], int]:
    authorize(actor, "nc.read")
    worker = None if allowed(actor, "nc.read_all") else actor.id
    async with ctx.uow(read_only=True) as uow:
        return await uow.nonconformances.list_page(worker, f, limit, offset)


async def open_by_hand(ctx: Context, actor: Actor, session_id: UUID, step_id: UUID | None,
                       severity: Severity, description: str,
                       request_id: str | None = None) -> Nonconformance:
    """A supervisor opens an NC on a session (and one of its steps). It holds nothing: the
    session goes on."""
    authorize(actor, "nc.manage")
    now = ctx.clock()
    async with ctx.uow() as uow:
        stored = await uow.sessions.load(session_id, with_checks=False)
        if stored is None:  # as a start naming an unknown SOP
            raise NotFound("session not found")
        if step_id is not None and stored.session.plan.index_of(step_id) is None:
            raise InvalidInput("step_id is not a step of the session's SOP", errors=[
                {"field": "step_id", "message": "unknown step"}])
        nc = Nonconformance.open_by_hand(uuid4(), session_id, stored.state.sop_id, step_id,
                                         severity, description, actor.id, now,
                                         ctx.nc_deadlines)
        await uow.nonconformances.add(nc, [_facts(
            actor, "nonconformance_opened", request_id, session_id=str(session_id),
            step_id=str(step_id) if step_id else None, severity=severity.value,
            description=description, containment_due=nc.containment_due.isoformat(),
            close_due=nc.close_due.isoformat())], now)
        await record_nonconformance(uow, ctx.render, "nonconformance.opened", nc, now)
        worker = stored.state.worker_id
    try:
        await ctx.workflows.start_nonconformance(nc, worker, notify_session=False)
    except Exception as e:  # noqa: BLE001 (recorded, so answered 201: a 5xx would have the
        # client open it again; `follow_up` starts its workflow)
        log.warning("nonconformance %s recorded, its workflow not started (%s)", nc.id, e)
    return nc


async def follow_up(store: Store, workflows: SessionWorkflows, now: datetime,
                    grace: timedelta) -> int:
    """The backstop (the `NonconformanceSweep` schedule) for what the API could not tell an
    NC's workflow (Temporal was down, or the API died, after the record was written), where
    waiting for the NC's next deadline is not good enough:

    - an NC opened by hand whose workflow was never started: nothing would ever mark it
      overdue. Each NC opened by hand more than `grace` ago and not closed is started unless
      its workflow runs or ran to its end (one start call each; the NCs a failed check
      opens are their session run's to start, durably);
    - an NC holding a session, contained more than `grace` ago, whose workflow missed the
      news: the worker would stay held until the NC's next deadline (its closure, days
      away, when the containment was late). Each such NC contained within the last
      TELL_AGAIN_FOR is asked (a query, no history) and told again if behind.

    Returns how many workflows it started or told."""
    async with store(read_only=True) as uow:
        unfollowed = await uow.nonconformances.opened_by_hand_before(now - grace)
        released = await uow.nonconformances.released_between(now - TELL_AGAIN_FOR,
                                                              now - grace)
    started, told, failed = [], [], []
    for nc, worker in unfollowed:  # one that fails (Temporal busy) keeps none from the rest
        try:
            if await workflows.follow_nonconformance(nc, worker):
                started.append(nc.id)
        except Exception as e:  # noqa: BLE001
            failed.append(f"{nc.id} ({e})")
    for nc in released:
        try:
            if await workflows.nonconformance_behind(nc.id, nc.status):
                await workflows.nonconformance_changed(nc.id, nc.status)
                told.append(nc.id)
        except Exception as e:  # noqa: BLE001
            failed.append(f"{nc.id} ({e})")
    if started:
        log.warning("started the workflow of %d nonconformance(s) opened without one: %s",
                    len(started), ", ".join(map(str, started)))
    if told:
        log.warning("told %d nonconformance workflow(s) of a containment they missed: %s",
                    len(told), ", ".join(map(str, told)))
    if failed:  # the run fails (and is retried; the next runs in a minute), the rest done
        raise RuntimeError(f"could not follow {len(failed)} nonconformance(s): "
                           + "; ".join(failed))
    return len(started) + len(told)


async def _audited(ctx: Context, nc_id: UUID, facts: AuditFacts,
                   decide: Callable[[], Awaitable[T]]) -> T:
    """A refused change leaves its entry on the NC's chain (`outcome: rejected`), in a
    transaction of its own: the one that decided it rolled back."""
    try:
        return await decide()
    except (Conflict, InvalidInput) as e:
        async with ctx.uow() as uow:
            nc = await uow.nonconformances.get(nc_id, for_update=True)
            assert nc is not None
            await uow.nonconformances.save(nc, [facts.rejected(reason=e.detail, code=e.code)],
                                           ctx.clock())
        raise


async def contain(ctx: Context, access: NcAccess, containment: str,
                  request_id: str | None = None) -> Nonconformance:
    """open → contained; the NC's workflow is told (its containment deadline stops, and
    the session it holds is released)."""
    actor = access.actor
    facts = _facts(actor, "nonconformance_contained", request_id, containment=containment)

    async def decide() -> Nonconformance:
        async with ctx.uow() as uow:
            nc = await uow.nonconformances.get(access.nc_id, for_update=True)
            assert nc is not None
            nc.contain(containment, actor.id, ctx.clock())
            at = nc.contained_at or ctx.clock()
            await _record_missed(uow, ctx.render, nc, at)  # late: overdue first
            await uow.nonconformances.save(nc, [facts], at)
            await record_nonconformance(uow, ctx.render, "nonconformance.contained", nc, at)
        return nc

    nc = await _audited(ctx, access.nc_id, facts, decide)
    await _tell(ctx, nc)
    return nc


async def close(ctx: Context, access: NcAccess, disposition: Disposition,
                corrective_action: str, statement: str | None = None,
                request_id: str | None = None) -> Nonconformance:
    """contained → closed: the closer's `approved` signature, under the re-authentication
    rule (401 before anything is read or recorded)."""
    actor = access.actor
    ensure_fresh(ctx, actor)
    facts = _facts(actor, "nonconformance_closed", request_id, disposition=disposition.value,
                   corrective_action=corrective_action)

    async def decide() -> Nonconformance:
        async with ctx.uow() as uow:
            nc = await uow.nonconformances.get(access.nc_id, for_update=True)
            assert nc is not None
            sig = Signature(id=uuid4(), session_id=nc.session_id, meaning=Meaning.APPROVED,
                            step_id=None, signer_id=actor.id,
                            signer_name=actor.name or str(actor.id),
                            signer_role=actor.role.value, signed_at=ctx.clock(),
                            statement=statement)
            nc.close(disposition, corrective_action, sig)
            await _record_missed(uow, ctx.render, nc, sig.signed_at)
            signed = AuditFacts("signed", actor.id, actor.role.value, {
                "signature_id": str(sig.id), "meaning": sig.meaning.value,
                "nonconformance_id": str(nc.id), "signer_name": sig.signer_name,
                "signed_at": sig.signed_at.isoformat(), "statement": statement,
                "manifest": sig.manifest()}, request_id)
            await uow.nonconformances.save(nc, [signed, facts], sig.signed_at)
            await record_nonconformance(uow, ctx.render, "nonconformance.closed", nc,
                                        sig.signed_at)
        return nc

    nc = await _audited(ctx, access.nc_id, facts, decide)
    await _tell(ctx, nc)
    return nc


async def _tell(ctx: Context, nc: Nonconformance) -> None:
    """The NC's workflow learns where the record stands. Best effort: what it misses it
    learns from the record when its next deadline passes, or sooner from `follow_up`
    when a held session waits on it."""
    try:
        await ctx.workflows.nonconformance_changed(nc.id, nc.status)
    except Exception as e:  # noqa: BLE001 (Temporal down or the run gone: the record holds)
        log.warning("nonconformance %s is %s; its workflow was not told (%s)", nc.id,
                    nc.status.value, e)


async def mark_overdue(store: Store, nc_id: UUID, deadline: Deadline, at: datetime,
                       render: Render | None = None,
                       deliveries: Deliveries | None = None) -> str | None:
    """A deadline of the NC passed (the NC workflow's timer, at its time `at`): overdue,
    audited by the system, if the record says it was missed, once. Where the NC stands,
    None when it is not recorded (yet)."""
    async with store() as uow:
        nc = await uow.nonconformances.get(nc_id, for_update=True)
        if nc is None:
            return None
        await _record_missed(uow, render, nc, at, [deadline])
    await start_deliveries(deliveries, uow.events.streams)
    return nc.status.value


async def _record_missed(uow: UnitOfWork, render: Render | None, nc: Nonconformance,
                         at: datetime, deadlines: Iterable[Deadline] = tuple(Deadline)
                         ) -> None:
    """Each of those deadlines of `nc` (held for update) missed by `at` and not marked yet:
    overdue, audited by the system once, and its `nonconformance.overdue` event. Called
    when a deadline's timer fires, and when a step is done late (the timer may not have
    fired yet: no worker ran), so a late containment or closure is never on time."""
    for deadline in deadlines:
        if nc.mark_overdue(deadline, at):
            due = nc.containment_due if deadline is Deadline.CONTAINMENT else nc.close_due
            await uow.nonconformances.save(nc, [AuditFacts(
                "nonconformance_overdue", None, SYSTEM,
                {"deadline": deadline.value, "due": due.isoformat()})], at,
                dedup_key=f"nc:{nc.id}@overdue-{deadline.value}")
            # the event at the due time, when it went overdue: before the late step's own
            # event of this transaction (both at `at` would share their place in the stream)
            await record_nonconformance(uow, render, "nonconformance.overdue", nc, due)
