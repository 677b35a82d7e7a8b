"""The floor: the same check traffic sent straight to a workflow as Temporal updates from the
SDK — no HTTP, no database write, no audit — against the same dev server. `RawSessionFloor`
takes the checks of the open-model sweep; `RawSession` is the floor of a whole session."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow


@workflow.defn(name="RawSessionFloor")
class RawSessionFloor:
    """A session reduced to what Temporal must do: accept an update, record it, answer."""

    @workflow.init
    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.checks: list[str] = []
        self.done = False

    @workflow.run
    async def run(self, steps: int) -> int:
        await workflow.wait_condition(lambda: self.done or len(self.checks) >= 1000,
                                      timeout=timedelta(hours=1))
        await workflow.wait_condition(workflow.all_handlers_finished)
        return len(self.checks)

    @workflow.update
    async def check(self, check_id: str) -> int:
        if check_id not in self.checks:
            self.checks.append(check_id)
        return len(self.checks)

    @workflow.query
    def state(self) -> list[str]:
        return self.checks

    @workflow.signal
    def finish(self) -> None:
        self.done = True


@workflow.defn(name="RawSession")
class RawSession:
    """A whole session reduced to what Temporal must do: a start, one update per step, and
    completion once every step has its check."""

    @workflow.init
    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.checks: list[str] = []

    @workflow.run
    async def run(self, steps: int) -> int:
        await workflow.wait_condition(lambda: len(self.checks) >= self.steps)
        # The last check's caller is still owed its answer: completing before the handler
        # has returned would leave that update unanswered.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return len(self.checks)

    @workflow.update
    async def check(self, check_id: str) -> int:
        if check_id not in self.checks:
            self.checks.append(check_id)
        return len(self.checks)
