"""benchmarks/dashboard.py, the dashboard drawn without Grafana, on every panel of the real
dashboard JSON: its queries made sendable, its grid laid out, every panel type drawn. No
stack and no Prometheus (the script's real run is `python -m benchmarks.dashboard`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import dashboard as db


def _dashboard() -> dict:
    return json.loads(db.DASHBOARD.read_text())


def test_every_query_has_grafanas_variables_replaced() -> None:
    exprs = [t["expr"] for p in db.panels(_dashboard()) for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        sent = db.substitute(expr, 30, 5, 180)
        assert "$" not in sent, sent
    assert db.substitute("rate(x[$__rate_interval]) + y[${__range}] + $__interval_ms",
                         30, 5, 180) == "rate(x[30s]) + y[180s] + 5000"


def test_legend_format_takes_the_series_labels() -> None:
    assert db.legend("{{job}} {{ instance }}", {"job": "api", "instance": "h:1"}) == "api h:1"
    assert db.legend("p99", {}) == "p99"
    assert db.legend("{{missing}} x", {}) == "x"
    assert db.legend(None, {"__name__": "up", "job": "a"}) == 'up{job="a"}'


def test_every_panel_is_placed_on_the_grid_without_overlap() -> None:
    (w, h), placed = db.layout(_dashboard())
    assert len(placed) == len(db.panels(_dashboard()))
    boxes = []
    for panel, (left, bottom, width, height) in placed:
        assert 0 <= left and left + width <= 1 + 1e-9, panel["title"]
        assert 0 <= bottom and bottom + height <= 1 + 1e-9, panel["title"]
        boxes.append((panel["title"], left, bottom, left + width, bottom + height))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap = min(a[3], b[3]) - max(a[1], b[1]), min(a[4], b[4]) - max(a[2], b[2])
            assert not (overlap[0] > 1e-9 and overlap[1] > 1e-9), (a[0], b[0])


def test_prometheus_config_keeps_the_jobs_and_rewrites_only_targets() -> None:
    targets = {"worksession-api": "127.0.0.1:1", "worksession-worker": "127.0.0.1:2",
               "temporal": "127.0.0.1:3", "prometheus": "127.0.0.1:4"}
    config = db.prometheus_config(targets, "alerts.yml")
    assert {j["job_name"]: j["static_configs"][0]["targets"] for j in
            config["scrape_configs"]} == {k: [v] for k, v in targets.items()}
    assert config["rule_files"] == ["alerts.yml"]
    with pytest.raises(ValueError):
        db.prometheus_config({"worksession-api": "127.0.0.1:1"}, "alerts.yml")


def test_every_panel_type_is_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    dashboard = _dashboard()
    start = 1_800_000_000.0
    results: dict = {}
    for i, p in enumerate(db.panels(dashboard)):
        if p["type"] == "row":
            continue
        def series(ref: str, i: int = i) -> list[dict]:
            return [] if i % 5 == 0 else [  # some panels with no data, some with zeros
                {"legend": f"{ref} series", "labels": {},
                 "values": [[start + s, float(s % 7) if i % 3 else 0.0]
                            for s in range(0, 61, 5)]}]
        results[str(p["id"])] = {"title": p["title"], "type": p["type"],
                                 "targets": [{"refId": t["refId"], "expr": t["expr"],
                                              "series": series(t["refId"])}
                                             for t in p.get("targets", [])]}
    out = tmp_path / "dashboard.png"
    db.render(dashboard, results, out, (start, start + 60), "subtitle\nsecond line", "footer")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_quantile_stuck_in_the_lowest_bucket_is_recognised() -> None:
    def s(name: str, values: list[float]) -> dict:
        return {"legend": name, "values": [[i, v] for i, v in enumerate(values)]}
    assert db._lowest_bucket([s("p95", [95.0, 95.0]), s("p99", [99.0, 99.0])]) == 100
    assert db._lowest_bucket([s("p95", [95.0, 40.0]), s("p99", [99.0, 99.0])]) is None
    assert db._lowest_bucket([s("shed", [1.0])]) is None
