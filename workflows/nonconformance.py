"""A nonconformance's own durable workflow (`nonconformance-<id>`): its two deadlines as
durable timers, and the release of the session it holds once it is contained.

The record (the database) decides every change of an NC: contain and close are decided and
written by the API (application/nonconformances.py), which then tells this workflow with
the `changed` signal. A signal, not an update: there is nothing for the workflow to decide
or refuse, so the API need not wait for a worker to run it; Temporal keeps the signal
(durably, one history event) even while no worker runs, and the workflow acts on it when
one does. A signal the API failed to send (Temporal down) is made up for at the deadline:
the overdue activity reads the record and says where the NC stands.

Per NC: one timer while it is open (containment), one while it is contained (closure, or
from the missed containment on while it is still open); each cancelled when its step is
done in time; one activity per missed deadline. It sleeps in
between at no cost. The run ends once the NC is closed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from domain.nonconformance import Deadline, NcStatus
    from workflows.messages import (
        NC_CONTAINED_SIGNAL,
        NC_FOLLOW_ACTIVITY,
        NC_OVERDUE_ACTIVITY,
        NcContained,
        NcInput,
        NcOverdue,
        workflow_id_for,
    )

# The NC's row may not be written yet (its session's run writes it within its write-behind,
# when the API died before): keep trying, at most a minute apart.
OVERDUE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2,
                            maximum_interval=timedelta(minutes=1))
ORDER = [NcStatus.OPEN, NcStatus.CONTAINED, NcStatus.CLOSED]
# The closure deadline is timed while the NC is still open too (docs/versioning.md); a run
# recorded without this marker timed it only from containment.
CLOSURE_WHILE_OPEN_PATCH = "nc-closure-timed-while-open"


@workflow.defn(name="Nonconformance")
class NonconformanceWorkflow:
    @workflow.init
    def __init__(self, inp: NcInput) -> None:
        self._status = NcStatus.OPEN

    @workflow.signal
    def changed(self, status: NcStatus) -> None:
        """The record moved on (contained, closed): never backwards."""
        self._learn(status)

    @workflow.query
    def status(self) -> str:
        return self._status.value

    @workflow.run
    async def run(self, inp: NcInput) -> str:
        await self._deadline(inp, Deadline.CONTAINMENT, inp.containment_due,
                             lambda: self._status is not NcStatus.OPEN)
        closure_passed = False
        if self._status is NcStatus.OPEN and workflow.patched(CLOSURE_WHILE_OPEN_PATCH):
            # never contained in time: its closure deadline still comes, audited and sent
            # when it passes (and the run wakes then to learn a containment it missed)
            closure_passed = await self._deadline(inp, Deadline.CLOSURE, inp.close_due,
                                                  lambda: self._status is not NcStatus.OPEN)
        await workflow.wait_condition(lambda: self._status is not NcStatus.OPEN)
        if inp.notify_session:
            await self._tell_session(inp)
        if not closure_passed:
            await self._deadline(inp, Deadline.CLOSURE, inp.close_due,
                                 lambda: self._status is NcStatus.CLOSED)
        await workflow.wait_condition(lambda: self._status is NcStatus.CLOSED)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._status.value

    async def _deadline(self, inp: NcInput, deadline: Deadline, due: datetime,
                        done: Callable[[], bool]) -> bool:
        """Wait for `done` until `due` (one durable timer); when it passes first, the record
        decides and says whether the NC is overdue (at most once per deadline). Whether it
        passed."""
        left = due - workflow.now()
        if done():
            return False
        if left > timedelta(0):
            try:
                await workflow.wait_condition(done, timeout=left)
                return False
            except TimeoutError:
                pass
        found = await workflow.execute_activity(
            NC_OVERDUE_ACTIVITY, NcOverdue(nc_id=inp.nc_id, deadline=deadline,
                                           at=workflow.now()),
            start_to_close_timeout=timedelta(seconds=15), retry_policy=OVERDUE_RETRY)
        self._learn(NcStatus(found))
        return True

    async def _tell_session(self, inp: NcInput) -> None:
        """The session no longer holds this NC open (and is released if it held it)."""
        try:
            await workflow.get_external_workflow_handle(workflow_id_for(inp.worker_id)).signal(
                NC_CONTAINED_SIGNAL, NcContained(session_id=inp.session_id, nc_id=inp.nc_id))
        except FailureError:
            workflow.logger.info("the session's run is closed: nothing to release")

    def _learn(self, status: NcStatus) -> None:
        if ORDER.index(status) > ORDER.index(self._status):
            self._status = status


@workflow.defn(name="NonconformanceSweep")
class NonconformanceSweepWorkflow:
    """The backstop's run (a schedule, orchestration/schedules.py): starts the workflow of
    each NC opened by hand whose start was lost, and tells a held session's NC workflow of
    a containment it missed (application.nonconformances.follow_up)."""

    @workflow.run
    async def run(self, grace_seconds: float) -> int:
        """How many workflows it started or told."""
        return await workflow.execute_activity(
            NC_FOLLOW_ACTIVITY, grace_seconds, result_type=int,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=3))
