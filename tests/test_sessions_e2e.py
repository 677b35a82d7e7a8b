"""End-to-end through HTTP against the real Temporal dev server, one test per spec scenario."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.conftest import check, pass_step, start, step_ids


async def test_start_work_session_from_sop(http, worker_user, confirmed_sop):
    """session-001: in_progress, first step of the first task, linked, started_at set."""
    s = await start(http, worker_user, confirmed_sop)
    assert s["status"] == "in_progress"
    assert s["current_step_id"] == step_ids(confirmed_sop)[0]
    assert s["current_step"]["task"]["title"] == "Task 1"
    assert s["current_step"]["index"] == 0 and s["current_step"]["total"] == 3
    assert s["sop"] == {"id": confirmed_sop["id"], "title": confirmed_sop["title"],
                        "version": 1}
    assert s["worker_id"] == str(worker_user.id)
    assert datetime.fromisoformat(s["started_at"]).utcoffset() == timedelta(0)
    assert s["workflow_id"] == f"work-session-{worker_user.id}" and s["run_id"]
