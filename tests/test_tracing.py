"""Traces as a collector receives them: the stack run as `worksession dev` runs it (the API
and the worker in processes of their own) with `WORKSESSION_OTLP_ENDPOINT` pointing at a
small OTLP/HTTP receiver here. One check through the API is one trace, from the HTTP handler
through the Temporal client and the worker's run of the update to the SQL that wrote it."""

from __future__ import annotations

import gzip
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from faults.harness import DevProcess
from tests.conftest import sop_body

CHECKS = "POST /api/v1/sessions/{session_id}/checks"


class Collector:
    """Receives OTLP/HTTP trace exports; keeps each span with its service's name."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
                with collector.lock:
                    for resource in request.resource_spans:
                        service = next(a.value.string_value for a in resource.resource.attributes
                                       if a.key == "service.name")
                        for scope in resource.scope_spans:
                            collector.spans += [_span(service, s) for s in scope.spans]
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace_of(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            (root,) = [s for s in self.spans if s["name"] == name]
            return [s for s in self.spans if s["trace_id"] == root["trace_id"]]


def _span(service: str, s: Span) -> dict[str, Any]:
    attributes = {a.key: a.value.string_value or a.value.int_value for a in s.attributes}
    return {"service": service, "name": s.name, "trace_id": s.trace_id.hex(),
            "span_id": s.span_id.hex(), "parent": s.parent_span_id.hex() or None,
            "kind": Span.SpanKind.Name(s.kind), "attributes": attributes}


@pytest.fixture
def traced_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    collector = Collector()
    monkeypatch.setenv("WORKSESSION_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # export within 0.2 s, not 5 s
    dev = DevProcess(tmp_path)
    banner = dev.start()
    yield dev, banner, collector
    dev.stop()
    collector.server.shutdown()


def test_one_check_is_one_trace_from_the_api_through_the_worker_to_the_database(
        traced_stack):
    dev, banner, collector = traced_stack
    worker, supervisor = ({"Authorization": f"Bearer {t}"}
                          for t in re.findall(r"^\s+(ey[\w-]+\.[\w-]+\.[\w-]+)$", banner, re.M))
    with httpx.Client(base_url=dev.api, timeout=15) as http:
        sop = http.post("/api/v1/sops", json=sop_body(), headers=supervisor).json()
        http.post(f"/api/v1/sops/{sop['id']}/confirm", headers=supervisor)
        session = http.post("/api/v1/sessions", json={"sop_id": sop["id"]},
                            headers=worker).json()
        r = http.post(f"/api/v1/sessions/{session['id']}/checks", headers=worker,
                      json={"step_id": session["current_step_id"], "result": "passed"})
        assert r.status_code == 200, r.text

    deadline = time.monotonic() + 20
    while True:  # the worker's spans reach the collector on their own schedule
        try:
            spans = collector.trace_of(CHECKS)
        except ValueError:
            spans = []
        if any(s["name"] == "HandleUpdate:submit_check" for s in spans) or \
                time.monotonic() > deadline:
            break
        time.sleep(0.2)

    (server,) = [s for s in spans if s["name"] == CHECKS]
    assert server["service"] == "worksession-api" and server["kind"] == "SPAN_KIND_SERVER"
    assert server["parent"] is None, "the request starts its own trace"
    by_name = {s["name"]: s for s in spans}
    # the API's call to Temporal, and the worker's validation and run of that update
    assert by_name["StartWorkflowUpdate:submit_check"]["service"] == "worksession-api"
    for name in ("ValidateUpdate:submit_check", "HandleUpdate:submit_check"):
        assert by_name[name]["service"] == "worksession-worker", name
        assert by_name[name]["parent"] == by_name["StartWorkflowUpdate:submit_check"][
            "span_id"], name
    # the write of the change: its check, its audit entry, the session's row
    statements = [str(s["attributes"].get("db.statement") or s["attributes"].get(
        "db.query.text") or "") for s in spans if s["kind"] == "SPAN_KIND_CLIENT"]
    for table in ("INSERT INTO session_checks", "INSERT INTO audit_log",
                  "UPDATE work_sessions"):
        assert any(q.startswith(table) for q in statements), (table, statements)
    # and every span of the trace hangs from the request's
    ids = {s["span_id"] for s in spans}
    assert all(s["parent"] in ids for s in spans if s is not server)
    # health checks are not traced
    assert not [s for s in collector.spans if "healthz" in s["name"] or "readyz" in s["name"]]
