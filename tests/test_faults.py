"""Fault tests, CI size (the long version: `python -m faults`; see docs/reliability.md).

Each test runs one scenario of `faults.scenarios` on its own stack of real subprocesses
(Temporal dev server, `worksession api`, `worksession worker`) with a few simulated field
devices, injects its fault and asserts that no acknowledged check was lost or duplicated and
that the workflow state, the read model and the audit log agree. The database is SQLite, or a
fresh PostgreSQL database when WORKSESSION_TEST_DATABASE=postgresql. They carry the `faults`
mark (`-m "not faults"` leaves them out) and run in the normal suite."""

from __future__ import annotations

import os

import pytest

from faults.__main__ import table
from faults.scenarios import QUICK, Figures, run_scenario

DATABASE = os.environ.get("WORKSESSION_TEST_DATABASE", "sqlite")

pytestmark = pytest.mark.faults


async def run(name: str) -> Figures:
    fig = await run_scenario(name, QUICK[name], DATABASE, say=print)
    report = "\n".join([table([fig]), *(f"note: {n}" for n in fig.notes),
                        *(f"FAILED: {f}" for f in fig.failures)])
    print(report)
    assert fig.acknowledged > 0 and fig.faults > 0, report
    assert fig.lost == 0, report
    assert fig.duplicated == 0, report
    assert fig.disagreements == 0, report
    assert fig.persisted >= fig.acknowledged, report
    assert fig.ok, report
    return fig


async def test_worker_sigkill_loses_and_doubles_nothing() -> None:
    """(a) SIGKILL the worker at random moments during a stream of checks."""
    fig = await run("worker_kill")
    assert fig.faults >= QUICK["worker_kill"].faults


async def test_temporal_restart_keeps_every_acknowledged_check() -> None:
    """(b) restart the Temporal dev server (same database file, same port) mid-stream."""
    await run("temporal_restart")


async def test_database_outage_sessions_stuck_listed_then_recover() -> None:
    """(c) block writes to the read model: sessions become stuck, `worksession ops stuck`
    lists them, they recover after the outage (by themselves or via `ops retry`)."""
    fig = await run("database_outage")
    assert fig.extra["stuck_listed"] >= 1


async def test_same_check_resent_concurrently_across_kills_is_applied_once() -> None:
    """(d) the same check_id sent 2-5 times, some at once, some across a worker kill."""
    fig = await run("resend")
    assert fig.extra["resent_checks"] >= 1


async def test_webhooks_across_kills_and_a_temporal_restart_lose_nothing() -> None:
    """(e) a subscription to a receiver the harness runs: every event the service
    acknowledged arrives, signed, in order per session, none under two webhook-ids."""
    fig = await run("webhook")
    assert fig.extra["wh_outbox"] > 0
    assert fig.extra["wh_received"] == fig.extra["wh_outbox"]
    assert fig.extra["wh_lost"] == fig.extra["wh_dup"] == fig.extra["wh_out_of_order"] == 0
