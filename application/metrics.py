"""What the service measures about sessions (Prometheus names), and the one rule of what a
written change counts.

A change is counted by the process that writes it, once its transaction has committed: the
API for what it answered, the worker for what the API could not write (and the run's own
changes, such as an idle pause). `write_change` writes a change once, whoever tries, so the
counters summed over the API and worker processes count each change once.

The gauges describe the whole fleet, not one process: every API process that refreshes them
reports the same figure (read them with `max`, not `sum`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

from domain.changes import SessionChange
from domain.work_session import SessionStatus

# name: (help, label names)
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "worksession_sessions_started_total": ("Sessions started (written)", ()),
    "worksession_sessions_completed_total": (
        "Sessions completed, by the last step's passed check or by hand (written)", ()),
    "worksession_sessions_cancelled_total": ("Sessions cancelled (written)", ()),
    "worksession_checks_total": ("Checks recorded, by result (written)", ("result",)),
}
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "worksession_sessions_needing_attention": (
        "Active sessions flagged after repeated failed checks", ()),
    "worksession_sessions_stuck": (
        "Sessions that cannot make progress, by reason (as `worksession ops stuck` says)",
        ("reason",)),
}


class Meter(Protocol):
    """Where the figures go (Prometheus in the API, the Temporal SDK's meter in the worker)."""

    def add(self, name: str, amount: int, labels: Mapping[str, str]) -> None: ...

    def set(self, name: str, value: float, labels: Mapping[str, str]) -> None: ...


class NoMeter:
    def add(self, name: str, amount: int, labels: Mapping[str, str]) -> None:
        pass

    def set(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        pass


def tally(change: SessionChange) -> Counter[tuple[str, tuple[tuple[str, str], ...]]]:
    """What one written change counts. A change completes (or cancels) the session when the
    state it leaves was completed (cancelled) at the change's own moment: approval, a later
    change of a completed session, is not a second completion; a reopened session completed
    again is."""
    st = change.state
    out: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    if change.entries and change.entries[0].action == "session_start":
        out["worksession_sessions_started_total", ()] += 1
    if st.status is SessionStatus.COMPLETED and st.completed_at == change.at:
        out["worksession_sessions_completed_total", ()] += 1
    if st.status is SessionStatus.CANCELLED and st.cancelled_at == change.at:
        out["worksession_sessions_cancelled_total", ()] += 1
    for check in change.checks:
        out["worksession_checks_total", (("result", check.result.value),)] += 1
    return out


def count_written(meter: Meter, changes: Iterable[SessionChange]) -> None:
    for change in changes:
        for (name, labels), n in tally(change).items():
            meter.add(name, n, dict(labels))
