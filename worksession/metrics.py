"""Where each process's figures go (application/metrics.py names them).

- The API: `prometheus_client`, on a registry of its own, served at `/metrics` on
  `WORKSESSION_METRICS_PORT` by a small server thread (never on the public API port). Its
  HTTP figures are kept by api/metrics.py.
- The worker: the Temporal SDK's own runtime telemetry (`PrometheusConfig`), which serves
  the SDK's metrics (workflow-task and activity latency and failures, pollers, slots) at
  `/metrics` on `WORKSESSION_WORKER_METRICS_PORT`; the session counters the worker's writes
  move go through the same runtime's meter, so one port has both."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    start_http_server,
)
from temporalio.common import MetricCounter, MetricGauge
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from application.metrics import COUNTERS, GAUGES

disable_created_metrics()  # a `_created` series per counter says nothing Prometheus needs


class PrometheusMeter:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._counters = {name: Counter(name, help_, labels, registry=self.registry)
                          for name, (help_, labels) in COUNTERS.items()}
        self._gauges = {name: Gauge(name, help_, labels, registry=self.registry)
                        for name, (help_, labels) in GAUGES.items()}

    def add(self, name: str, amount: int, labels: Mapping[str, str]) -> None:
        c = self._counters[name]
        (c.labels(**labels) if labels else c).inc(amount)

    def set(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        g = self._gauges[name]
        (g.labels(**labels) if labels else g).set(value)

    def serve(self, host: str, port: int) -> Any:
        """Start serving `/metrics`; returns the server (to shut down in tests)."""
        server, _thread = start_http_server(port, host, registry=self.registry)
        return server


class TemporalMeter:
    """The session counters on the Temporal SDK runtime's meter (the worker)."""

    def __init__(self, runtime: Runtime) -> None:
        meter = runtime.metric_meter
        self._counters: dict[str, MetricCounter] = {
            name: meter.create_counter(name, help_) for name, (help_, _) in COUNTERS.items()}
        self._gauges: dict[str, MetricGauge] = {
            name: meter.create_gauge(name, help_) for name, (help_, _) in GAUGES.items()}

    def add(self, name: str, amount: int, labels: Mapping[str, str]) -> None:
        self._counters[name].add(amount, dict(labels) or None)

    def set(self, name: str, value: float, labels: Mapping[str, str]) -> None:
        self._gauges[name].set(int(value), dict(labels) or None)


def worker_runtime(host: str, port: int) -> Runtime:
    """A Temporal runtime serving its metrics on host:port (raises if the port is taken)."""
    return Runtime(telemetry=TelemetryConfig(
        metrics=PrometheusConfig(bind_address=f"{host}:{port}")))
