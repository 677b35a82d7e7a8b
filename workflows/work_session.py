"""The session workflow: thin. It holds the WorkSession aggregate and turns worker actions
(Workflow Updates) into aggregate method calls. Each update returns the session as the change
left it; that answer exists only once the change is in the run's history, so the API writes
it to the read model (with the audit entry) before it answers the client. The run writes the
session itself too, in the background, so the read model never stays behind when an API dies
before its write: at the run's start, when the API asks, a while after an unwritten change,
and before the run closes.

Runs started before that design persisted each change from a local activity inside the
update (the `else` branches of COMMITTED_WRITES_PATCH); they keep doing so until they close."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from domain.errors import DomainError
    from domain.work_session import CheckSubmission, SessionStatus, WorkSession
    from workflows import search_attributes
    from workflows.messages import (
        PERSIST_ACTIVITY,
        SESSION_MISMATCH,
        PersistSession,
        SessionCommand,
        SessionInput,
        SubmitCheck,
    )

T = TypeVar("T")

# A failing database must never lose a check: keep retrying; ops see the session as stuck.
PERSIST_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2,
                            maximum_interval=timedelta(seconds=10))
PERSIST_TIMEOUT = timedelta(seconds=15)
COMMITTED_WRITES_PATCH = "api-writes-committed-changes"
LOCAL_PERSIST_PATCH = "persist-as-local-activity-first"
# Both local attempts together must end well before the workflow task would need a heartbeat
# (80 % of its 10 s timeout): a local activity spanning workflow tasks inside an update
# handler is what makes replays of it fail (seen in the database-outage fault test).
LOCAL_PERSIST_TIMEOUT = timedelta(seconds=2)
LOCAL_PERSIST_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=100),
                                  maximum_attempts=2)


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
        self._lock = asyncio.Lock()
        self._updates_this_run = 0
        self._touched = False
        self._in_flight: dict[str, tuple[str, str]] = {}  # update id -> (name, since)
        # Fixed for the run's life: a run that began persisting from its updates goes on so.
        self._committed_writes = workflow.patched(COMMITTED_WRITES_PATCH)
        # Where the state's last change stands in the run: the count of changes so far
        # (older runs: the history length then, which their own writes use).
        self._changed_at = 0
        self._last_touch = workflow.now()
        self._synced_version: int | None = None
        self._sync_requested = True  # the first write covers an API that died after starting us
        self._writer: asyncio.Task[None] | None = None

    @workflow.run
    async def run(self, inp: SessionInput) -> dict[str, Any]:
        self._show_progress()
        if self._committed_writes:
            return await self._run(inp)
        async with self._lock:
            await self._persist()  # idempotent: covers an API that died after starting us
        idle = timedelta(seconds=inp.idle_timeout_seconds)
        while not self._must_stop():
            self._touched = False
            try:
                await workflow.wait_condition(lambda: self._touched or self._must_stop(),
                                              timeout=idle)
            except TimeoutError:
                await self._pause_when_idle()
        # Never return while an update is running, or its client sees "already completed".
        await workflow.wait_condition(workflow.all_handlers_finished)
        if not self._session.is_closed:
            workflow.continue_as_new(self._next_input(inp))
        return self._view()

    async def _run(self, inp: SessionInput) -> dict[str, Any]:
        # Held by the workflow (a task nobody references may be collected); never awaited:
        # a write it has started when the run ends may finish or not, writes are ordered.
        self._writer = asyncio.create_task(self._keep_read_model())
        idle = timedelta(seconds=inp.idle_timeout_seconds)
        while not self._must_stop():
            # One timer per idle period, not one per change: a change only moves the deadline.
            due = self._last_touch + idle
            if workflow.now() >= due:
                await self._pause_when_idle()
                self._last_touch = workflow.now()
                continue
            try:
                await workflow.wait_condition(self._must_stop, timeout=due - workflow.now())
            except TimeoutError:
                pass
        # Never return while an update is running, or its client sees "already completed".
        await workflow.wait_condition(workflow.all_handlers_finished)
        if not self._session.is_closed:
            # the next run writes the session as soon as it starts
            workflow.continue_as_new(self._next_input(inp))
        await self._write(self._change())  # the closed session reaches the read model
        return self._view()

    async def _keep_read_model(self) -> None:
        """Write the session from the run when asked, or once a change has gone unwritten
        (by the run) for `write_behind_seconds` (the API writes every change it answers;
        this covers an API that died before its write)."""
        while True:
            await workflow.wait_condition(
                lambda: self._sync_requested or self._synced_version != self._version())
            if not self._sync_requested:
                try:
                    await workflow.wait_condition(
                        lambda: self._sync_requested,
                        timeout=timedelta(seconds=self._input.write_behind_seconds))
                except TimeoutError:
                    pass
            self._sync_requested = False
            written = self._version()  # the change holds the live state, which moves on
            await self._write(self._change())
            self._synced_version = written

    @workflow.signal
    def write_read_model(self) -> None:
        """The API could not write a change this run answered (its database failed): the run
        writes the session itself now, retrying until the database takes it."""
        self._sync_requested = True

    # ---- worker actions ------------------------------------------------------------------
    @workflow.update
    async def submit_check(self, cmd: SubmitCheck) -> PersistSession:
        return await self._apply(cmd, lambda s: s.add_check(
            _submission(cmd), by=cmd.actor_id, now=workflow.now(),
            escalate_after_failures=self._input.escalate_after_failures))

    @submit_check.validator
    def _validate_submit_check(self, cmd: SubmitCheck) -> None:
        self._dry_run(cmd, lambda s: s.add_check(_submission(cmd), by=cmd.actor_id,
                                                 now=workflow.now()))

    @workflow.update
    async def complete(self, cmd: SessionCommand) -> PersistSession:
        return await self._apply(cmd, lambda s: s.complete(workflow.now(), manual=True))

    @complete.validator
    def _validate_complete(self, cmd: SessionCommand) -> None:
        self._dry_run(cmd, lambda s: s.complete(workflow.now(), manual=True))

    @workflow.update
    async def pause(self, cmd: SessionCommand) -> PersistSession:
        return await self._apply(cmd, lambda s: s.pause(workflow.now()))

    @pause.validator
    def _validate_pause(self, cmd: SessionCommand) -> None:
        self._dry_run(cmd, lambda s: s.pause(workflow.now()))

    @workflow.update
    async def resume(self, cmd: SessionCommand) -> PersistSession:
        return await self._apply(cmd, lambda s: s.resume(workflow.now()))

    @resume.validator
    def _validate_resume(self, cmd: SessionCommand) -> None:
        self._dry_run(cmd, lambda s: s.resume(workflow.now()))

    @workflow.update
    async def cancel(self, cmd: SessionCommand) -> PersistSession:
        return await self._apply(cmd, lambda s: s.cancel(cmd.reason or "", workflow.now()))

    @cancel.validator
    def _validate_cancel(self, cmd: SessionCommand) -> None:
        self._dry_run(cmd, lambda s: s.cancel(cmd.reason or "", workflow.now()))

    @workflow.query
    def session(self) -> dict[str, Any]:
        return self._view()

    @workflow.query
    def pending_updates(self) -> list[dict[str, str]]:
        """Worker actions admitted but not answered yet (ops: an update waiting too long)."""
        return [{"id": i, "name": name, "since": since}
                for i, (name, since) in self._in_flight.items()]

    # ---- machinery -----------------------------------------------------------------------
    def _next_input(self, inp: SessionInput) -> SessionInput:
        return inp.model_copy(update={"plan": self._session.plan, "state": self._session.state})

    def _dry_run(self, cmd: SubmitCheck | SessionCommand,
                  action: Callable[[WorkSession], Any]) -> None:
        """Validators reject wrong-state and wrong-step requests before they enter history."""
        self._ensure_same_session(cmd)
        domain_rule(lambda: action(self._session.copy()))

    def _ensure_same_session(self, cmd: SubmitCheck | SessionCommand) -> None:
        if cmd.session_id is not None and cmd.session_id != self._session.state.id:
            raise ApplicationError(f"this run holds session {self._session.state.id}, not "
                                   f"{cmd.session_id}", type=SESSION_MISMATCH,
                                   non_retryable=True)

    async def _apply(self, cmd: SubmitCheck | SessionCommand,
                     action: Callable[[WorkSession], Any]) -> PersistSession:
        self._ensure_same_session(cmd)
        update = workflow.current_update_info()
        if update is not None:  # for ops: which updates are waiting, and since when
            self._in_flight[update.id] = (update.name, workflow.now().isoformat())
        try:
            return await self._apply_locked(action)
        finally:
            if update is not None:
                self._in_flight.pop(update.id, None)

    async def _apply_locked(self, action: Callable[[WorkSession], Any]) -> PersistSession:
        async with self._lock:  # state may have moved on while this update waited
            version = self._version()
            domain_rule(lambda: action(self._session))
            self._updates_this_run += 1
            self._touched = True
            self._last_touch = workflow.now()
            if self._version() != version:
                await self._changed()
            # The answer is sent once the workflow task holding the change is recorded: the
            # API writes only what the run has committed.
            return self._change()

    async def _pause_when_idle(self) -> None:
        async with self._lock:
            if self._session.state.status is SessionStatus.IN_PROGRESS:
                self._session.pause(workflow.now(), reason="idle")
                self._sync_requested = True  # no API writes what the run did by itself
                await self._changed()

    async def _changed(self) -> None:
        self._show_progress()
        if self._committed_writes:
            self._changed_at += 1
        else:
            self._changed_at = workflow.info().get_current_history_length()
            await self._persist()

    def _version(self) -> int:
        return self._session.state.version

    def _change(self) -> PersistSession:
        info = workflow.info()
        return PersistSession(state=self._session.state, workflow_id=info.workflow_id,
                              run_id=info.run_id, run_position=self._changed_at,
                              written=not self._committed_writes)

    async def _write(self, change: PersistSession) -> None:
        """A regular activity: it runs only once the workflow task that scheduled it is
        recorded, so it never writes a change the run might lose."""
        await workflow.execute_activity(PERSIST_ACTIVITY, change,
                                        start_to_close_timeout=PERSIST_TIMEOUT,
                                        retry_policy=PERSIST_RETRY)

    async def _persist(self) -> None:
        """Runs from before COMMITTED_WRITES_PATCH: write the change from inside the update
        (`_changed` has set its position, the history length)."""
        req = self._change()
        if workflow.patched(LOCAL_PERSIST_PATCH):
            # Fast path: a local activity runs inside the same workflow task, saving a
            # round trip per change. If it fails twice, fall back to a regular activity that
            # retries for ever and shows up (attempts, last error) for `ops stuck`.
            try:
                await workflow.execute_local_activity(
                    PERSIST_ACTIVITY, req, start_to_close_timeout=LOCAL_PERSIST_TIMEOUT,
                    retry_policy=LOCAL_PERSIST_RETRY)
                return
            except FailureError:
                # A failed local activity surfaces as its failure itself (ApplicationError),
                # and as TimeoutError when an attempt timed out, live and on replay alike:
                # catch them all, or a replay would not reach the fallback below.
                pass
        await self._write(req)

    def _must_stop(self) -> bool:
        return (self._session.is_closed
                or self._updates_this_run >= self._input.continue_as_new_after_updates
                or workflow.info().is_continue_as_new_suggested())

    def _show_progress(self) -> None:
        state, plan = self._session.state, self._session.plan
        if not self._committed_writes:
            workflow.upsert_search_attributes(search_attributes.changes(state))
        elif updates := search_attributes.changes(state, workflow.info().typed_search_attributes):
            workflow.upsert_search_attributes(updates)
        if state.current_step_id is None:
            details = f"{state.status.value.replace('_', ' ').capitalize()}: {plan.sop_title}"
        else:
            i = plan.index_of(state.current_step_id) or 0
            details = f"Step {i + 1} of {len(plan.steps)}: {plan.steps[i].title}"
            if state.status is SessionStatus.PAUSED:
                details = f"Paused at {details[0].lower()}{details[1:]}"
            if state.needs_attention:
                details += " (needs attention)"
        # The static summary does not survive continue-as-new: name SOP and worker here too.
        workflow.set_current_details(f"{details}\n\nSOP: {plan.sop_title} "
                                     f"(v{plan.sop_version}) · worker {state.worker_id}")

    def _view(self) -> dict[str, Any]:
        info = workflow.info()
        return self._session.view(run_id=info.run_id, workflow_id=info.workflow_id)


def _submission(cmd: SubmitCheck) -> CheckSubmission:
    return CheckSubmission(check_id=cmd.check_id, step_id=cmd.step_id, result=cmd.result,
                           value=cmd.value, notes=cmd.notes, evidence_uri=cmd.evidence_uri)
