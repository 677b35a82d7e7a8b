"""The hourly removal of evidence uploads that no check took (CONTRACT.md, "Evidence files":
"an upload not attached to any check within 24 h may be removed"). A Temporal schedule
(orchestration/schedules.py) starts it: durable, once per period whatever the number of
workers, visible and pausable in the Temporal UI. The work is one activity
(activities/evidence_cleanup.py); a run that fails is simply the next hour's to finish."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

REMOVE_UNATTACHED_ACTIVITY = "remove_unattached_evidence"


class CleanupInput(BaseModel):
    older_than_seconds: float = 24 * 3600


@workflow.defn(name="EvidenceCleanup")
class EvidenceCleanupWorkflow:
    @workflow.run
    async def run(self, inp: CleanupInput) -> int:
        """How many uploads were removed."""
        return await workflow.execute_activity(
            REMOVE_UNATTACHED_ACTIVITY, inp, result_type=int,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_attempts=3))
