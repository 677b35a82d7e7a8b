"""The session workflow: thin. It holds the WorkSession aggregate and turns worker actions
(Workflow Updates) into aggregate method calls. Each accepted action answers with the change
it made (a SessionChange: the session's fields, the check it added, its audit entries),
which exists only once the change is in the run's history; the API writes it with its audit
entry before it answers the client.

The run also keeps every change it has not written itself, and writes them (one idempotent
activity, a no-op for what the API wrote already) when one has waited `write_behind_seconds`,
when asked, at once for the changes it makes by itself (idle pause), and before it closes.
That covers an API that died between the update and its write. See docs/architecture.md."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

with workflow.unsafe.imports_passed_through():
    from api.schemas import SessionOut
    from domain.changes import SYSTEM, AuditFacts, SessionChange
    from domain.errors import DomainError
    from domain.evidence import EvidenceFile  # noqa: F401 (see below)
    from domain.nonconformance import OpenNc
    from domain.work_session import Mark, SessionStatus, WorkSession
    from workflows import search_attributes
    from workflows.messages import (
        NC_CONTAINED_SIGNAL,
        OUT_OF_CONTROL_SIGNAL,
        SESSION_MISMATCH,
        WRITE_CHANGES_ACTIVITY,
        NcContained,
        NcInput,
        OutOfControl,
        SessionCommand,
        SessionInput,
        SessionSnapshot,
        SignVerified,
        SubmitCheck,
        nc_workflow_id,
    )
    from workflows.nonconformance import NonconformanceWorkflow

# domain.evidence is imported above so that the sandbox knows its module: pydantic resolves
# a check's evidence files (in every SubmitCheck and SessionState) by looking it up there.
T = TypeVar("T")

# Since this patch a session awaiting second-person verification is not idle: the run waits
# for the signature with no timer (docs/versioning.md). Runs recorded before it never await.
VERIFICATION_WAIT_PATCH = "verification-wait-not-idle"
# Since this patch a failed check on a step whose `on_fail` is not `retry` opens a
# nonconformance, whose own workflow this run starts (docs/versioning.md). Runs recorded
# before it never open one (their plans have no such step).
NONCONFORMANCE_PATCH = "nonconformance-workflows"
# A failing database must never lose a change: keep retrying; ops see the session as stuck.
WRITE_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2,
                          maximum_interval=timedelta(seconds=10))
WRITE_TIMEOUT = timedelta(seconds=15)
# Past this many unwritten changes the run writes them at once, whatever the time: they
# travel in the activity's input and across continue-as-new.
MAX_UNWRITTEN = 100


def domain_rule(fn: Callable[[], T]) -> T:
    """Run an aggregate method; a broken rule becomes an ApplicationError carrying the domain
    error's code and payload, so the API can raise the same domain error again."""
    try:
        return fn()
    except DomainError as e:
        raise ApplicationError(e.detail, e.payload(), type=e.code, non_retryable=True) from None


@workflow.defn(name="WorkSession")
class WorkSessionWorkflow:
    @workflow.init
    def __init__(self, inp: SessionInput) -> None:
        # Handlers can run before `run` starts: everything they need is built here.
        self._input = inp
        self._session = WorkSession(plan=inp.plan, state=inp.state)
        # The start's (or reopening's) own change is made before its run has an id.
        self._unwritten: list[SessionChange] = [
            c if c.run_id else replace(c, run_id=workflow.info().run_id) for c in inp.unwritten]
        self._write_now = False
        self._updates_this_run = 0
        self._last_touch = workflow.now()
        self._wait_is_not_idle = False  # decided (patched) when a wait first begins
        self._nc_to_start: list[OpenNc] = []  # opened by a check, their workflows not started

    @workflow.run
    async def run(self, inp: SessionInput) -> dict[str, Any]:
        self._show_progress()
        self._note_verification_wait()  # a wait carried across continue-as-new
        # Held by the workflow (a task nobody references may be collected); never awaited.
        self._writer = asyncio.create_task(self._write_behind())
        idle = timedelta(seconds=inp.idle_timeout_seconds)
        while not self._must_stop():
            if self._nc_to_start:
                await self._start_nonconformances()
                continue
            if self._awaiting_verification():
                # The wait is the session's own state (durable, carried across
                # continue-as-new): no timer runs until a `verify` update ends it.
                await workflow.wait_condition(
                    lambda: self._must_stop() or not self._awaiting_verification()
                    or bool(self._nc_to_start))
                continue
            # One timer per idle period, not one per change: a change only moves the deadline.
            due = self._last_touch + idle
            if workflow.now() >= due:
                self._pause_when_idle()
                continue
            try:
                await workflow.wait_condition(
                    lambda: self._must_stop() or self._awaiting_verification()
                    or bool(self._nc_to_start), timeout=due - workflow.now())
            except TimeoutError:
                pass
        # Never return while an update is running, or its client sees "already completed".
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._start_nonconformances()  # none is left behind by a close or a new run
        if not self._session.is_closed:
            workflow.continue_as_new(inp.model_copy(update={
                "plan": self._session.plan, "state": self._session.state,
                "unwritten": self._unwritten}))
        await self._write_unwritten()  # what the API did not write reaches the read model
        state = self._session.state
        return {"session_id": str(state.id), "status": state.status.value,
                "version": state.version}

    async def _write_behind(self) -> None:
        while True:
            await workflow.wait_condition(lambda: bool(self._unwritten))
            if not self._write_now:
                try:
                    await workflow.wait_condition(
                        lambda: self._write_now,
                        timeout=timedelta(seconds=self._input.write_behind_seconds))
                except TimeoutError:
                    pass
            self._write_now = False
            await self._write_unwritten()

    async def _write_unwritten(self) -> None:
        """A regular activity: it runs only once the workflow task that scheduled it is
        recorded, so it never writes a change the run might lose. Idempotent per change."""
        batch = list(self._unwritten)
        if not batch:
            return
        await workflow.execute_activity(WRITE_CHANGES_ACTIVITY, batch,
                                        start_to_close_timeout=WRITE_TIMEOUT,
                                        retry_policy=WRITE_RETRY)
        last = batch[-1].version
        self._unwritten = [c for c in self._unwritten if c.version > last]

    async def _start_nonconformances(self) -> None:
        """Each NC a check opened gets its own workflow, started once (it outlives this
        run: ABANDON) and named by the NC, so a start repeated on replay is the same one."""
        while self._nc_to_start:
            nc = self._nc_to_start[0]
            if workflow.patched(NONCONFORMANCE_PATCH):
                state = self._session.state
                assert nc.containment_due is not None and nc.close_due is not None
                try:
                    await workflow.start_child_workflow(
                        NonconformanceWorkflow.run, NcInput(
                            nc_id=nc.id, session_id=state.id, worker_id=state.worker_id,
                            containment_due=nc.containment_due, close_due=nc.close_due,
                            notify_session=True),
                        id=nc_workflow_id(nc.id),
                        parent_close_policy=workflow.ParentClosePolicy.ABANDON)
                except WorkflowAlreadyStartedError:
                    pass
            self._nc_to_start.pop(0)

    @workflow.signal(name=OUT_OF_CONTROL_SIGNAL)
    def measured_out_of_control(self, msg: OutOfControl) -> None:
        """A measured value of this session broke an SPC rule, judged and recorded by the
        writer of its check (which then signals): the session needs attention until it
        closes, and `NeedsAttention` says so in the Temporal UI. Nothing to record: the
        record has it. For another session (the worker's next one): nothing."""
        if msg.session_id == self._session.state.id and \
                self._session.measured_out_of_control():
            self._show_progress()

    @workflow.signal(name=NC_CONTAINED_SIGNAL)
    def nonconformance_contained(self, msg: NcContained) -> None:
        """One of this session's NCs was contained (its workflow says so): it is no longer
        open, and a hold on the session ends. For another session (the worker's next one,
        under the same workflow ID): nothing."""
        if msg.session_id == self._session.state.id and \
                self._session.nonconformance_contained(msg.nc_id):
            self._show_progress()

    @workflow.signal
    def write_now(self) -> None:
        """The API found this run's session missing from the read model (a start whose API
        died before its write): write what the run holds now rather than in minutes."""
        self._write_now = True

    # ---- worker actions ------------------------------------------------------------------
    @workflow.update
    def submit_check(self, cmd: SubmitCheck) -> SessionChange | None:
        """None, or the change that recorded it, when the check_id was seen before."""
        return self._apply(cmd, lambda s: s.add_check(
            cmd, by=cmd.audit.actor_id, now=workflow.now(),
            escalate_after_failures=self._input.escalate_after_failures,
            deadlines=self._input.nc_deadlines))

    @submit_check.validator
    def _validate_submit_check(self, cmd: SubmitCheck) -> None:
        self._dry_run(cmd, lambda s: s.add_check(cmd, by=cmd.audit.actor_id,
                                                 now=workflow.now()))

    @workflow.update
    def complete(self, cmd: SessionCommand) -> SessionChange | None:
        return self._apply(cmd, lambda s: s.complete(workflow.now(), manual=True))

    @complete.validator
    def _validate_complete(self, cmd: SessionCommand) -> None:
        self._dry_run(cmd, lambda s: s.complete(workflow.now(), manual=True))

    @workflow.update
    def pause(self, cmd: SessionCommand) -> SessionChange | None:
        return self._apply(cmd, lambda s: s.pause(workflow.now()))

    @pause.validator
    def _validate_pause(self, cmd: SessionCommand) -> None:
        self._dry_run(cmd, lambda s: s.pause(workflow.now()))

    @workflow.update
    def resume(self, cmd: SessionCommand) -> SessionChange | None:
        return self._apply(cmd, lambda s: s.resume(workflow.now()))

    @resume.validator
    def _validate_resume(self, cmd: SessionCommand) -> None:
        self._dry_run(cmd, lambda s: s.resume(workflow.now()))

    @workflow.update
    def cancel(self, cmd: SessionCommand) -> SessionChange | None:
        return self._apply(cmd, lambda s: s.cancel(cmd.reason or "", workflow.now()))

    @cancel.validator
    def _validate_cancel(self, cmd: SessionCommand) -> None:
        self._dry_run(cmd, lambda s: s.cancel(cmd.reason or "", workflow.now()))

    @workflow.update
    def verify(self, cmd: SignVerified) -> SessionChange | None:
        """A second person's `verified` signature: releases the step awaiting it. Two at
        once: the validator of the second sees the first's outcome (nothing awaits) and
        refuses it, or, when both were validated before either ran, its handler does."""
        cmd = self._signed_now(cmd)
        return self._apply(cmd, lambda s: s.verify(cmd.signature))

    @verify.validator
    def _validate_verify(self, cmd: SignVerified) -> None:
        cmd = self._signed_now(cmd)
        self._dry_run(cmd, lambda s: s.verify(cmd.signature))

    @staticmethod
    def _signed_now(cmd: SignVerified) -> SignVerified:
        """The signature at the run's time, and its `signed` entry saying that time."""
        sig = replace(cmd.signature, signed_at=workflow.now())
        return cmd.model_copy(update={
            "signature": sig, "audit": AuditFacts.signed(sig, cmd.audit.request_id)})

    @workflow.query
    def session(self) -> dict[str, Any]:
        """The session in the contract's shape, for people (the Temporal UI, tctl)."""
        info = workflow.info()
        return SessionOut.of(self._session, workflow_id=info.workflow_id,
                             run_id=info.run_id, now=workflow.now()).model_dump(mode="json")

    @workflow.query
    def snapshot(self) -> SessionSnapshot:
        """The session as this run holds it, for the API to answer from."""
        return SessionSnapshot(plan=self._session.plan, state=self._session.state,
                               run_id=workflow.info().run_id)

    # ---- machinery -----------------------------------------------------------------------
    def _dry_run(self, cmd: SubmitCheck | SessionCommand | SignVerified,
                 action: Callable[[WorkSession], Any]) -> None:
        """Validators reject wrong-state and wrong-step requests before they enter history."""
        self._ensure_same_session(cmd)
        domain_rule(lambda: action(self._session.copy()))

    def _ensure_same_session(self, cmd: SubmitCheck | SessionCommand | SignVerified) -> None:
        if cmd.session_id != self._session.state.id:
            raise ApplicationError(f"this run holds session {self._session.state.id}, not "
                                   f"{cmd.session_id}", type=SESSION_MISMATCH,
                                   non_retryable=True)

    def _apply(self, cmd: SubmitCheck | SessionCommand | SignVerified,
               action: Callable[[WorkSession], Any]) -> SessionChange | None:
        self._ensure_same_session(cmd)
        state = self._session.state
        before, attention = self._session.mark(), state.needs_attention
        domain_rule(lambda: action(self._session))
        self._updates_this_run += 1
        self._last_touch = workflow.now()
        self._note_verification_wait()
        if state.version == before.version:  # a resent check or verification: answer with
            # the change that took it (None: written already, the record has it)
            return next((c for c in self._unwritten
                         if (isinstance(cmd, SubmitCheck) and c.added_check(cmd.check_id))
                         or (isinstance(cmd, SignVerified)
                             and c.added_signature_like(cmd.signature))), None)
        entries = [cmd.audit]
        if state.needs_attention and not attention:
            entries.append(AuditFacts("session_escalated", None, SYSTEM, {
                "step_id": str(state.current_step_id),
                "failed_checks_in_a_row": self._input.escalate_after_failures}))
        change = self._record(before, entries)
        self._nc_to_start.extend(change.nonconformances)
        return change

    def _note_verification_wait(self) -> None:
        """The first time this run holds a session awaiting verification, decide (once, by
        the patch) whether the wait stops the idle timer: it does in every run since."""
        if self._session.state.awaiting_verification is not None and not self._wait_is_not_idle:
            self._wait_is_not_idle = workflow.patched(VERIFICATION_WAIT_PATCH)

    def _awaiting_verification(self) -> bool:
        return self._wait_is_not_idle and self._session.state.awaiting_verification is not None

    def _pause_when_idle(self) -> None:
        self._last_touch = workflow.now()
        if self._session.state.status is SessionStatus.IN_PROGRESS:
            before = self._session.mark()
            self._session.pause(workflow.now(), reason="idle")
            self._record(before, [AuditFacts("session_pause", None, SYSTEM,
                                             {"reason": "idle"})])
            self._write_now = True  # no API writes what the run did by itself

    def _record(self, before: Mark, entries: list[AuditFacts]) -> SessionChange:
        info = workflow.info()
        change = SessionChange.of(self._session.state, before, entries,
                                  workflow.now(), info.workflow_id, info.run_id)
        self._unwritten.append(change)
        if len(self._unwritten) >= MAX_UNWRITTEN:
            self._write_now = True
        self._show_progress()
        return change

    def _must_stop(self) -> bool:
        return (self._session.is_closed
                or self._updates_this_run >= self._input.continue_as_new_after_updates
                or workflow.info().is_continue_as_new_suggested())

    def _show_progress(self) -> None:
        state, plan = self._session.state, self._session.plan
        # Only what changed: each upsert is a history event and a visibility write.
        if updates := search_attributes.changes(state, workflow.info().typed_search_attributes):
            workflow.upsert_search_attributes(updates)
        if state.current_step_id is None:
            details = f"{state.status.value.replace('_', ' ').capitalize()}: {plan.sop_title}"
        else:
            i = plan.index_of(state.current_step_id) or 0
            details = f"Step {i + 1} of {len(plan.steps)}: {plan.steps[i].title}"
            if state.status is SessionStatus.PAUSED:
                details = f"Paused at {details[0].lower()}{details[1:]}"
            if state.flagged:
                details += " (needs attention)"
            if state.awaiting_verification is not None:
                details += " (awaiting verification)"
            if state.held_by is not None:
                details += f" (held: nonconformance {state.held_by.id} is not contained)"
        # The static summary does not survive continue-as-new: name SOP and worker here too.
        workflow.set_current_details(f"{details}\n\nSOP: {plan.sop_title} "
                                     f"(v{plan.sop_version}) · worker {state.worker_id}")

