"""A workflow that breaks the rules on purpose (a module of its own: the sandbox imports it)."""

from datetime import datetime

from temporalio import workflow


@workflow.defn(name="ReadsTheWallClock")
class ReadsTheWallClock:
    @workflow.run
    async def run(self) -> str:
        return datetime.now().isoformat()  # not workflow.now(): non-deterministic
