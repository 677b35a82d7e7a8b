"""Logs: one line per record on standard error, JSON (production) or text (`worksession
dev`), each carrying the ids of what it is about, so that one request or one session can be
followed across the API and the worker (docs/operations.md, "Logs").

The ids come from one place each, set once and read here for every record:

- `request_id`, `session_id`, `worker_id`, `workflow_id`, `run_id`: `bind`, a context
  variable, set by whoever learns them (the API's front door, the session use cases, the
  write activity), seen by the lines of that request or activity only;
- `workflow_id`, `run_id` also from Temporal's own loggers (`activity.logger`,
  `workflow.logger`), which put the running activity's or workflow's details on the record;
- `trace_id`, `span_id`: the current OpenTelemetry span, when one is recording.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# Imported here, with this module, never first from inside a record's filter: a record of
# the workflow logger is filtered inside Temporal's sandbox, where an import makes a copy of
# the package of its own (measured: after that, the worker's update spans were lost).
from opentelemetry import trace

IDS = ("request_id", "session_id", "worker_id", "workflow_id", "run_id", "trace_id",
       "span_id")

# The ids of the current request (`scope`), or else of the current task. One dict per
# request, filled in place: the API runs each handler in a task of its own (api/routing.py),
# and what the handler learns (the session, its run) belongs on the request's later lines too,
# uvicorn's access line included. asyncio gives every task a copy of the context, so two
# requests, or two activities, never see each other's.
_bound: ContextVar[dict[str, str] | None] = ContextVar("worksession_log_ids", default=None)


def bind(**ids: object) -> None:
    """From here on, the current request's (else task's) lines carry these ids (None: not
    known, left out)."""
    box = _bound.get()
    if box is None:
        box = {}
        _bound.set(box)
    box.update({k: str(v) for k, v in ids.items() if v is not None})


@contextmanager
def scope(**ids: object) -> Iterator[None]:
    """One request: these ids, and those bound while it runs, for the block only."""
    token = _bound.set({})
    bind(**ids)
    try:
        yield
    finally:
        _bound.reset(token)


def _trace_ids() -> dict[str, str]:
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return {}
    return {"trace_id": format(span.trace_id, "032x"), "span_id": format(span.span_id, "016x")}


class WithIds(logging.Filter):
    """Puts `ids` on every record: the known ones among IDS, nothing for the unknown."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = dict(_bound.get() or {})
        temporal = getattr(record, "temporal_activity", None) \
            or getattr(record, "temporal_workflow", None)
        if isinstance(temporal, Mapping):
            ids["workflow_id"] = temporal.get("workflow_id") or ids.get("workflow_id")
            ids["run_id"] = temporal.get("workflow_run_id") or temporal.get("run_id") \
                or ids.get("run_id")
        ids.update(_trace_ids())
        record.ids = {k: str(ids[k]) for k in IDS if ids.get(k)}
        return True


def _time(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, process (the part of
    the service), message, then the known ids, and `exc_info` (the traceback's text) when
    there is one."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": _time(record), "level": record.levelname,
                                "logger": record.name, "process": self.process,
                                "message": record.getMessage(),
                                **getattr(record, "ids", {})}
        if record.exc_info:
            line["exc_info"] = record.exc_text = \
                record.exc_text or self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL process logger: message [id=value …]`, a traceback on the lines below."""

    def __init__(self, process: str) -> None:
        super().__init__(f"%(utc)s %(levelname)s {process} %(name)s: %(message)s%(id_text)s")

    def format(self, record: logging.LogRecord) -> str:
        record.utc = _time(record)
        ids = getattr(record, "ids", {})
        record.id_text = " [" + " ".join(f"{k}={v}" for k, v in ids.items()) + "]" \
            if ids else ""
        return super().format(record)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one this module installs (so that configuring again replaces it)."""


def configure(log_format: str, level: str, process: str) -> None:
    """The root logger of this process: one handler on standard error, in `log_format`
    (`json` or `text`), at `level`. Every logger propagates to it, uvicorn's and Temporal's
    included (the API runs uvicorn without a logging set-up of its own)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    handler = _Handler()
    handler.addFilter(WithIds())
    handler.setFormatter(JsonFormatter(process) if log_format == "json"
                         else TextFormatter(process))
    root.addHandler(handler)
    root.setLevel(level.upper())
