"""The monitoring configuration under deploy/ loads and means what docs/operations.md says.

- Prometheus: `promtool check config` on prometheus.yml (its rule files resolved as Prometheus
  resolves them), `promtool check rules` on alerts.yml, and `promtool test rules` on
  alerts.test.yml, the unit tests that show each alert firing and staying quiet.
- Grafana: the dashboard JSON against a JSON Schema of what Grafana needs to load a provisioned
  dashboard (no validator of Grafana's own CUE schema is published on PyPI), its datasource the
  provisioned one; every PromQL expression in it parsed by promtool (as recording rules).
- Every metric name used is one the service exports (the metrics specification of issue #17)
  or one seen on a real scrape of the Temporal SDK or server; every runbook link is an anchor
  of docs/operations.md, whose stuck-session advice is the same as `ops stuck`'s table.

promtool is Debian's (package `prometheus`; `make promtool` installs it, `make test` does
first). Without it the promtool checks are skipped and say so; the rest still runs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from application.ops import WORKFLOW_NOT_RUNNING
from orchestration.ops import ACTIVITY_FAILING, NO_WORKER, WORKFLOW_TASK_FAILING

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy/prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
GRAFANA_DIR = ROOT / "deploy/grafana"
DASHBOARD = GRAFANA_DIR / "dashboards/worksession.json"
DATASOURCES = GRAFANA_DIR / "provisioning/datasources/prometheus.yml"
OPERATIONS = ROOT / "docs/operations.md"
STUCK_KINDS = (ACTIVITY_FAILING, WORKFLOW_TASK_FAILING, NO_WORKER, WORKFLOW_NOT_RUNNING)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian package `prometheus`; `make promtool` installs "
           "it): the Prometheus config, the alert rules' PromQL and their unit tests are NOT "
           "checked")


def _histogram(name: str) -> set[str]:
    return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}


# The service's own metrics, as specified for issue #17 (API process: HTTP and the stuck /
# needing-attention gauges; API or worker: the session and check counters).
SERVICE_METRICS = {
    "worksession_http_requests_total",
    *_histogram("worksession_http_request_duration_seconds"),
    "worksession_http_requests_in_flight",
    "worksession_http_requests_shed_total",
    "worksession_sessions_needing_attention",
    "worksession_sessions_stuck",
    "worksession_sessions_started_total",
    "worksession_sessions_completed_total",
    "worksession_sessions_cancelled_total",
    "worksession_checks_total",
}
# Seen on /metrics of temporalio 1.35's Runtime(telemetry=TelemetryConfig(metrics=
# PrometheusConfig(...))) with its defaults (counters without `_total`, durations in
# milliseconds), running a Worker with a workflow, an activity, a failing activity and a failing
# workflow task against `temporal server start-dev`: the names the worker's job exports.
SDK_METRICS = {
    "temporal_activity_execution_failed",
    *_histogram("temporal_activity_execution_latency"),
    *_histogram("temporal_activity_schedule_to_start_latency"),
    *_histogram("temporal_activity_succeed_endtoend_latency"),
    "temporal_activity_task_received",
    "temporal_long_request",
    *_histogram("temporal_long_request_latency"),
    "temporal_num_pollers",
    "temporal_request",
    *_histogram("temporal_request_latency"),
    "temporal_sticky_cache_hit",
    "temporal_sticky_cache_size",
    "temporal_sticky_cache_total_forced_eviction",
    "temporal_worker_start",
    "temporal_worker_task_slots_available",
    "temporal_worker_task_slots_used",
    "temporal_workflow_completed",
    *_histogram("temporal_workflow_endtoend_latency"),
    "temporal_workflow_failed",
    "temporal_workflow_task_execution_failed",
    *_histogram("temporal_workflow_task_execution_latency"),
    "temporal_workflow_task_queue_poll_succeed",
    *_histogram("temporal_workflow_task_replay_latency"),
    *_histogram("temporal_workflow_task_schedule_to_start_latency"),
}
# Seen on the Temporal server's /metrics (temporal CLI 1.9.1's dev server, Server 1.32.0, with
# --metrics-port): the matching service's poll counters per task queue, which the server has
# had since long before the 1.27 of docker-compose.yml. Newer ones (approximate_backlog_*) are
# left out on purpose: not sure to exist in 1.27.
SERVER_METRICS = {"poll_success", "poll_timeouts"}
PROMETHEUS_METRICS = {"up"}
KNOWN_METRICS = SERVICE_METRICS | SDK_METRICS | SERVER_METRICS | PROMETHEUS_METRICS

# Grafana's built-in interval variables, replaced by a duration before promtool parses.
GRAFANA_INTERVAL = re.compile(r"\$__(rate_interval|interval|range)\b")


# --- loading ----------------------------------------------------------------------------------

def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _datasource_uid() -> str:
    (source,) = _yaml(DATASOURCES)["datasources"]
    return source["uid"]


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"]]


def _dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return panels


def _dashboard_exprs() -> dict[str, str]:
    return {f"panel {p['id']} ({p['title']}) {t['refId']}": t["expr"]
            for p in _dashboard_panels() for t in p.get("targets", [])}


def _promql_for_promtool(expr: str) -> str:
    return GRAFANA_INTERVAL.sub("5m", expr)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


# --- metric names in PromQL -------------------------------------------------------------------

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, labels (in matchers or grouping), strings or durations."""
    text = STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)   # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = GROUPING.sub(" ", text)
    names = set()
    for match in IDENTIFIER.finditer(text):
        name = match.group()
        if text[match.end():].lstrip().startswith("("):
            continue  # a function call
        if name.lower() not in KEYWORDS:
            names.add(name)
    return names


def test_metric_names_finds_selectors_and_nothing_else() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{route="/x/{id}",s=~"5.."}'
            '[$__rate_interval]))) / on (job) group_left (x) b offset 5m > bool 1e3 '
            'or label_replace(c, "d", "${1}xx", "e", "(.)..") and (sum(f) or vector(0)) == 0')
    assert metric_names(expr) == {"a_bucket", "b", "c", "f"}


def test_every_metric_the_dashboard_and_alerts_use_is_exported() -> None:
    used: dict[str, set[str]] = {}
    for where, expr in _dashboard_exprs().items():
        used[f"dashboard {where}"] = metric_names(expr)
    for rule in _alert_rules():
        used[f"alert {rule['alert']}"] = metric_names(rule["expr"])
    unknown = {where: sorted(names - KNOWN_METRICS) for where, names in used.items()
               if names - KNOWN_METRICS}
    assert not unknown, f"metrics nobody exports: {unknown}"
    assert all(used.values()), [where for where, names in used.items() if not names]
    # The panels the issue asks for read the metrics meant for them.
    everything = set().union(*used.values())
    for name in ("worksession_checks_total", "worksession_http_request_duration_seconds_bucket",
                 "worksession_http_requests_shed_total", "worksession_sessions_stuck",
                 "temporal_workflow_task_execution_latency_bucket",
                 "temporal_workflow_task_execution_failed",
                 "temporal_activity_execution_failed", "temporal_num_pollers"):
        assert name in everything, name


def test_jobs_named_in_queries_are_scraped() -> None:
    jobs = {job["job_name"] for job in _yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    exprs = [*_dashboard_exprs().values(), *(rule["expr"] for rule in _alert_rules())]
    for expr in exprs:
        for matcher in re.findall(r'job(=~?)"([^"]*)"', expr):
            op, value = matcher
            named = value.split("|") if op == "=~" else [value]
            assert set(named) <= jobs, (expr, named)


def test_temporal_sdk_metrics_are_read_from_the_worker_job_only() -> None:
    """The Temporal server's own system workers export temporal_* names too (seen on its
    /metrics): without the job, their pollers would hide a dead worker."""
    exprs = [*_dashboard_exprs().values(), *(rule["expr"] for rule in _alert_rules())]
    for expr in exprs:
        for selector in re.findall(r"\btemporal_[a-z_]+(\{[^}]*\})?", expr):
            assert 'job="worksession-worker"' in selector, expr


# --- Prometheus: promtool ---------------------------------------------------------------------

@needs_promtool
def test_promtool_checks_the_prometheus_config_and_its_rule_files() -> None:
    result = _promtool("check", "config", str(PROMETHEUS_CONFIG), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_checks_the_alert_rules() -> None:
    result = _promtool("check", "rules", str(ALERTS), cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(_alert_rules())} rules found" in result.stdout + result.stderr


@needs_promtool
def test_alert_unit_tests_pass() -> None:
    result = _promtool("test", "rules", ALERT_TESTS.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    exprs = _dashboard_exprs()
    rules = [{"record": f"dashboard:expr_{i}", "expr": _promql_for_promtool(expr)}
             for i, expr in enumerate(exprs.values())]
    for rule in rules:
        # The dashboard defines no variables: a `$` other than Grafana's built-in intervals
        # would be interpolated by Grafana into something promtool never saw.
        assert "$" not in rule["expr"], rule["expr"]
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _promtool("check", "rules", str(rule_file), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_rejects_a_broken_expression(tmp_path: Path) -> None:
    """The parse check above is not vacuous."""
    rule_file = tmp_path / "broken.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "x:y", "expr": "sum by (le (rate(a[5m]))"}]}]}))
    assert _promtool("check", "rules", str(rule_file), cwd=tmp_path).returncode != 0


# --- alert rules: what promtool cannot tell ---------------------------------------------------

def _github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings (outside code blocks)."""
    anchors, fenced = set(), False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"^#{1,6}\s+(.*)$", line)):
            slug = re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_every_alert_is_documented_with_severity_summary_and_runbook() -> None:
    anchors = _github_anchors(OPERATIONS.read_text())
    assert "alerts" in anchors
    names = [rule["alert"] for rule in _alert_rules()]
    assert len(names) == len(set(names))
    for rule in _alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("page", "ticket"), name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/operations.md", name
        assert anchor == name.lower(), f"{name}: its runbook is its own heading"
        assert anchor in anchors, f"{name}: docs/operations.md has no heading #{anchor}"


def test_the_alerts_the_issue_asks_for_exist() -> None:
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    stuck = rules["WorkSessionsStuck"]
    assert "worksession_sessions_stuck" in stuck["expr"] and "by (reason)" in stuck["expr"]
    assert stuck["expr"].lstrip().startswith("max"), "a refreshed gauge: max, never sum"
    assert stuck["for"] == "5m"
    assert 'status=~"5.."' in rules["WorkSessionAPIErrors"]["expr"]
    assert "0.05" in rules["WorkSessionAPIErrors"]["expr"]
    assert "temporal_workflow_task_execution_failed" in rules["WorkflowTaskFailures"]["expr"]
    assert "temporal_num_pollers" in rules["NoWorkerPolling"]["expr"]
    assert rules["NoWorkerPolling"]["for"] == "2m"


def test_every_alert_has_unit_tests_that_fire_and_that_stay_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for group in _yaml(ALERT_TESTS)["tests"]:
        for case in group["alert_rule_test"]:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert names <= fired, f"never shown firing: {sorted(names - fired)}"
    assert names <= quiet, f"never shown staying quiet: {sorted(names - quiet)}"
    assert _yaml(ALERT_TESTS)["rule_files"] == [ALERTS.name]


def _table(markdown: str, header_start: str) -> dict[str, list[str]]:
    """The rows of the first table whose header starts with `header_start`, by first cell."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_stuck_alert_advice_is_the_same_as_ops_stuck() -> None:
    """The WorkSessionsStuck runbook tells, per reason, the fix the `ops stuck` table tells,
    for exactly the kinds the diagnosis has."""
    text = OPERATIONS.read_text()
    ops_table = _table(text, "| kind |")
    alerts_section = text[text.index("### WorkSessionsStuck"):]
    alert_table = _table(alerts_section, "| `reason` |")
    assert set(ops_table) == set(alert_table) == set(STUCK_KINDS)
    for kind in STUCK_KINDS:
        assert alert_table[kind][-1] == ops_table[kind][-1], kind


# --- Grafana: the dashboard schema ------------------------------------------------------------

PANEL_TYPES = ["timeseries", "stat", "gauge", "bargauge", "table", "row", "text", "heatmap",
               "histogram", "piechart", "barchart", "state-timeline", "status-history",
               "alertlist"]


def dashboard_schema(datasource_uid: str) -> dict[str, Any]:
    """What Grafana needs to load a provisioned dashboard and draw every panel from the
    provisioned Prometheus data source."""
    datasource = {
        "type": "object", "required": ["type", "uid"],
        "properties": {"type": {"const": "prometheus"}, "uid": {"const": datasource_uid}},
    }
    target = {
        "type": "object", "required": ["refId", "expr", "datasource"],
        "properties": {
            "refId": {"type": "string", "pattern": "^[A-Z]$"},
            "expr": {"type": "string", "minLength": 1},
            "legendFormat": {"type": "string"},
            "datasource": datasource,
        },
    }
    grid = {
        "type": "object", "required": ["x", "y", "w", "h"], "additionalProperties": False,
        "properties": {
            "x": {"type": "integer", "minimum": 0, "maximum": 23},
            "y": {"type": "integer", "minimum": 0},
            "w": {"type": "integer", "minimum": 1, "maximum": 24},
            "h": {"type": "integer", "minimum": 1},
        },
    }
    panel = {
        "type": "object", "required": ["id", "type", "title", "gridPos"],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "type": {"enum": PANEL_TYPES},
            "title": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "gridPos": grid,
            "datasource": datasource,
            "targets": {"type": "array", "items": target},
            "fieldConfig": {
                "type": "object", "required": ["defaults", "overrides"],
                "properties": {
                    "defaults": {"type": "object",
                                 "properties": {"unit": {"type": "string", "minLength": 1}}},
                    "overrides": {"type": "array"},
                },
            },
            "options": {"type": "object"},
        },
        "if": {"properties": {"type": {"const": "row"}}},
        "then": {"required": ["collapsed", "panels"],
                 "properties": {"collapsed": {"type": "boolean"},
                                "panels": {"type": "array", "items": {"$ref": "#/$defs/panel"}}}},
        "else": {"required": ["datasource", "targets", "description", "fieldConfig"],
                 "properties": {"targets": {"minItems": 1},
                                "description": {"minLength": 20}}},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {"panel": panel},
        "type": "object",
        "required": ["uid", "title", "schemaVersion", "panels", "time"],
        "properties": {
            "id": {"type": "null"},  # a provisioned dashboard gets its id from Grafana
            "uid": {"type": "string", "pattern": "^[a-zA-Z0-9_-]{1,40}$"},
            "title": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "schemaVersion": {"type": "integer", "minimum": 36},
            "panels": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/panel"}},
            "time": {"type": "object", "required": ["from", "to"],
                     "properties": {"from": {"type": "string"}, "to": {"type": "string"}}},
            "refresh": {"type": "string"},
            "editable": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "templating": {"type": "object", "properties": {"list": {"type": "array"}}},
            "annotations": {"type": "object", "properties": {"list": {"type": "array"}}},
        },
    }


def _schema_errors(dashboard: dict[str, Any]) -> list[str]:
    validator = jsonschema_rs.validator_for(dashboard_schema(_datasource_uid()))
    return [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(dashboard)]


def test_dashboard_matches_the_schema() -> None:
    assert _schema_errors(_dashboard()) == []


@pytest.mark.parametrize("break_it", [
    lambda d: d.pop("uid"),
    lambda d: d.update(schemaVersion="39"),
    lambda d: d["panels"][1]["targets"][0].pop("expr"),
    lambda d: d["panels"][1]["targets"][0]["datasource"].update(uid="not-provisioned"),
    lambda d: d["panels"][1].pop("description"),
    lambda d: d["panels"][1]["gridPos"].update(w=25),
    lambda d: d["panels"][1].update(type="graph-old"),
], ids=["no uid", "schemaVersion a string", "target without expr", "unknown datasource",
        "panel without description", "wider than the grid", "unknown panel type"])
def test_the_schema_rejects_a_broken_dashboard(break_it: Any) -> None:
    dashboard = _dashboard()
    assert dashboard["panels"][1]["type"] != "row"
    break_it(dashboard)
    assert _schema_errors(dashboard)


def test_dashboard_panels_have_unique_ids_and_do_not_overlap() -> None:
    panels = _dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), ids
    taken: dict[tuple[int, int], str] = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = p["title"]
        refs = [t["refId"] for t in p.get("targets", [])]
        assert len(refs) == len(set(refs)), p["title"]


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    exprs = " ".join(_dashboard_exprs().values())
    checks_route = 'route="/api/v1/sessions/{session_id}/checks"'
    for quantile in ("0.5", "0.95", "0.99"):
        assert (f"histogram_quantile({quantile}, sum by (le) "
                f"(rate(worksession_http_request_duration_seconds_bucket{{{checks_route}"
                in exprs), quantile
        assert (f"histogram_quantile({quantile}, sum by (le) "
                f"(rate(temporal_workflow_task_execution_latency_bucket") in exprs, quantile
    assert "sum by (result) (rate(worksession_checks_total" in exprs
    assert "max by (reason) (worksession_sessions_stuck)" in exprs
    assert "max(worksession_sessions_needing_attention)" in exprs
    for counter in ("started", "completed", "cancelled"):
        assert f"worksession_sessions_{counter}_total" in exprs
    assert "sum(worksession_sessions_stuck" not in exprs.replace(" ", "")
