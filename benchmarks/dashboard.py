"""The Grafana dashboard's panels, rendered from a real scrape without Grafana.

    .venv/bin/python -m benchmarks.dashboard [--minutes 3] [--out docs/dashboard.png]

Grafana is neither a Debian package nor on PyPI (the PyPI and npm projects named `grafana`
are empty placeholders), and this machine reaches nothing but package registries, so the
dashboard is drawn here from the same data Grafana would read:

1. `worksession dev` on free loopback ports (API, worker and Temporal dev server, each
   serving Prometheus metrics; the dev server prints its random metrics port in
   `temporal.log`).
2. Debian's Prometheus (`/usr/bin/prometheus`, package `prometheus`) with
   `deploy/prometheus/prometheus.yml`'s jobs and `alerts.yml`'s rules, the targets rewritten
   to the stack's ports and scraped every 2 s.
3. Field traffic through the API: devices walking sessions of a 10-step SOP, some checks
   failed (a step failed three times in a row needs attention until it passes), a few
   sessions cancelled, a stale check now and then (409), and one short burst of supervisor
   reads that the API sheds.
4. Every target of every panel of `deploy/grafana/dashboards/worksession.json` evaluated with
   Prometheus's `/api/v1/query_range` over the run (Grafana's `$__rate_interval` and friends
   replaced), drawn with matplotlib on the dashboard's 24-column grid; the results, the
   targets' health and the alerts at the end saved as JSON under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "worksession.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RESULTS = Path(__file__).parent / "results"
PROMETHEUS = "/usr/bin/prometheus"
SCRAPE_INTERVAL_S = 2
EVALUATION_INTERVAL_S = 5
SOP_STEPS = 10

# Grafana's built-in variables the dashboard's queries may use. Grafana computes
# $__rate_interval as max($__interval + scrape interval, 4 x scrape interval); here it is
# one fixed window (default 30 s: fifteen scrapes, as smooth as Grafana's 60 s over 15 s
# scrapes is to the eye over a few minutes).
GRAFANA_VARIABLE = re.compile(r"\$(?:__(rate_interval|interval_ms|interval|range_s|range_ms|range)"
                              r"|\{__(rate_interval|interval_ms|interval|range_s|range_ms|range)\})")

# Why a panel may have nothing to draw after a run without faults, said on the panel itself
# only when it is in fact empty (or zero throughout).
EMPTY_BECAUSE = {
    "Workflow task failures/s": "no workflow task failed: the SDK exports this counter only "
                                "once it counts one",
    "Activity failures/s": "no activity failed: the SDK exports this counter only once it "
                           "counts one",
    "Stuck sessions by reason": "no session was stuck, for any reason",
    "Shed answers/s": "nothing was shed",
    "Requests in flight": "no request was inside at any scrape (a request is inside for tens "
                          "of milliseconds; the gauge is read every 2 s)",
}


# --- the dashboard's queries ------------------------------------------------------------------

def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside a collapsed row included, in the dashboard's order."""
    out = []
    for p in dashboard["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def substitute(expr: str, rate_interval_s: int, interval_s: int, range_s: int) -> str:
    """The PromQL Grafana would send: its built-in interval variables replaced."""
    values = {"rate_interval": f"{rate_interval_s}s", "interval": f"{interval_s}s",
              "interval_ms": str(interval_s * 1000), "range": f"{range_s}s",
              "range_s": str(range_s), "range_ms": str(range_s * 1000)}
    return GRAFANA_VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def legend(fmt: str | None, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: `{{label}}` replaced by the series' label (empty if it has
    none); without a format, the series as Prometheus writes it."""
    if not fmt:
        name = labels.get("__name__", "")
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return f"{name}{{{inner}}}" if inner or not name else name
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def _get(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def query_range(prom: str, expr: str, start: float, end: float, step: int) -> list[dict]:
    q = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                "step": f"{step}s"})
    body = _get(f"{prom}/api/v1/query_range?{q}")
    if body.get("status") != "success":
        raise RuntimeError(f"query failed: {expr}: {body}")
    return body["data"]["result"]


def evaluate(prom: str, dashboard: dict[str, Any], start: float, end: float, step: int,
             rate_interval_s: int) -> dict[str, Any]:
    """Every target of every panel over [start, end]: {panel id: {title, type, targets: [
    {refId, expr, series: [{legend, labels, values: [[t, v], ...]}]}]}}."""
    out: dict[str, Any] = {}
    for p in panels(dashboard):
        if p["type"] == "row":
            continue
        targets = []
        for t in p.get("targets", []):
            expr = substitute(t["expr"], rate_interval_s, step, int(end - start))
            series = [{"legend": legend(t.get("legendFormat"), s["metric"]),
                       "labels": s["metric"],
                       "values": [[float(ts), _num(v)] for ts, v in s["values"]]}
                      for s in query_range(prom, expr, start, end, step)]
            targets.append({"refId": t["refId"], "expr": expr, "series": series})
        out[str(p["id"])] = {"title": p["title"], "type": p["type"], "targets": targets}
    return out


def _num(v: str) -> float | None:
    x = float(v)
    return None if math.isnan(x) or math.isinf(x) else x


# --- layout and drawing -----------------------------------------------------------------------

COLUMNS = 24
COLUMN_IN = 0.78      # inches per grid column (Grafana: about 80 px on a 1920 px screen)
ROW_IN = 0.30         # inches per grid row (Grafana: 30 px, plus margins)
HEADER_IN = 1.15
FOOTER_IN = 0.85


def layout(dashboard: dict[str, Any]) -> tuple[tuple[float, float],
                                                list[tuple[dict[str, Any], tuple]]]:
    """The figure size in inches and, for every panel, its rectangle (left, bottom, width,
    height) in figure fractions, from its gridPos on Grafana's 24-column grid."""
    ps = panels(dashboard)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in ps)
    width = COLUMNS * COLUMN_IN
    height = HEADER_IN + rows * ROW_IN + FOOTER_IN
    out = []
    for p in ps:
        g = p["gridPos"]
        if not (0 <= g["x"] and g["w"] > 0 and g["x"] + g["w"] <= COLUMNS and g["h"] > 0):
            raise ValueError(f"panel {p['id']} ({p['title']}) lies off the grid: {g}")
        left = g["x"] * COLUMN_IN / width
        top = (HEADER_IN + g["y"] * ROW_IN) / height
        out.append((p, (left, 1 - top - g["h"] * ROW_IN / height, g["w"] * COLUMN_IN / width,
                        g["h"] * ROW_IN / height)))
    return (width, height), out


# Axis label and factor per Grafana unit (values in seconds are drawn in milliseconds).
UNITS = {"ops": ("per second", 1), "reqps": ("requests/s", 1), "opm": ("per minute", 1),
         "s": ("ms", 1000), "ms": ("ms", 1), "short": ("", 1)}
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff",
           "#fade2a"]
NAMED = {"passed": "#73bf69", "failed": "#f2495c", "2xx": "#73bf69", "4xx": "#ff9830",
         "5xx": "#f2495c", "started": "#5794f2", "completed": "#73bf69",
         "cancelled": "#ff9830", "shed": "#f2495c", "all 503": "#b877d9"}
PANEL_BG, BORDER, TEXT, MUTED = "#ffffff", "#d8d9da", "#1f2328", "#6e7781"


def _series(panel_result: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for t in panel_result["targets"] for s in t["series"]]


def _values(s: dict[str, Any]) -> list[float]:
    return [v for _, v in s["values"] if v is not None]


def _all_zero(panel_result: dict[str, Any]) -> bool:
    return all(v == 0 for s in _series(panel_result) for v in _values(s))


def _threshold_color(fc: dict[str, Any], value: float) -> str:
    for m in fc.get("mappings", []):
        hit = m.get("options", {}).get(_fmt_plain(value))
        if m.get("type") == "value" and hit and hit.get("color"):
            return _grafana_color(hit["color"])
    color = "green"
    for step in fc.get("thresholds", {}).get("steps", []):
        if step["value"] is None or value >= step["value"]:
            color = step["color"]
    return _grafana_color(color)


def _grafana_color(name: str) -> str:
    return {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830",
            "yellow": "#fade2a", "blue": "#5794f2"}.get(name, name)


def _fmt_plain(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _stat_text(fc: dict[str, Any], value: float | None) -> str:
    if value is None:
        return "No data"
    for m in fc.get("mappings", []):
        hit = m.get("options", {}).get(_fmt_plain(value))
        if m.get("type") == "value" and hit and hit.get("text"):
            return hit["text"]
    decimals = fc.get("decimals")
    return f"{value:.{decimals}f}" if decimals is not None else f"{value:.3g}"


def render(dashboard: dict[str, Any], results: dict[str, Any], path: Path,
           time_range: tuple[float, float], subtitle: str, footer: str) -> None:
    """The dashboard as a PNG: `results` as `evaluate` returns them, over `time_range`
    (epoch seconds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    (w, h), placed = layout(dashboard)
    fig = plt.figure(figsize=(w, h), dpi=80, facecolor="#f4f5f5")
    fig.text(0.01, 1 - 0.32 / h, dashboard["title"], fontsize=20, weight="bold", color=TEXT,
             va="center")
    fig.text(0.01, 1 - 0.62 / h, subtitle, fontsize=11, color=MUTED, va="top",
             linespacing=1.5)
    fig.text(0.01, 0.45 / h, "\n".join(textwrap.fill(line, 175, subsequent_indent="  ")
                                       for line in footer.splitlines()),
             fontsize=10.5, color=TEXT, va="center", family="monospace")
    pad = 0.06  # inches between panels
    for p, (left, bottom, width, height) in placed:
        px, py = pad / w, pad / h
        rect = (left + px, bottom + py, width - 2 * px, height - 2 * py)
        if p["type"] == "row":
            fig.text(rect[0], rect[1] + rect[3] / 2, p["title"], fontsize=15, weight="bold",
                     color=TEXT, va="center")
            fig.add_artist(plt.Line2D([rect[0], rect[0] + rect[2]], [rect[1], rect[1]],
                                      color=BORDER, linewidth=1))
            continue
        result = results.get(str(p["id"]), {"targets": []})
        frame = fig.add_axes(rect)
        frame.set_facecolor(PANEL_BG)
        frame.set_xticks([])
        frame.set_yticks([])
        for side in frame.spines.values():
            side.set_color(BORDER)
        frame.set_zorder(0)
        title_in = 0.32
        frame.text(0.012, 1 - (title_in / 2) / (rect[3] * h), p["title"], fontsize=12,
                   weight="bold", color=TEXT, va="center", transform=frame.transAxes)
        inner = (rect[0] + 0.55 / w, rect[1] + 0.62 / h, rect[2] - 0.75 / w,
                 rect[3] - (title_in + 0.75) / h)
        fc = p.get("fieldConfig", {}).get("defaults", {})
        series = _series(result)
        empty_note = EMPTY_BECAUSE.get(p["title"])
        if p["type"] in ("stat", "gauge"):
            _stat(fig, frame, inner, p, fc, series, h)
            continue
        names = [s["legend"] or "(no legend)" for s in series]
        longest = max((len(n) for n in names), default=1)
        ncol = max(1, min(len(names), int(rect[2] * w * 13.5) // (longest + 5)))
        legend_rows = math.ceil(len(names) / ncol) if names else 1
        extra = (legend_rows - 1) * 0.19 / h
        inner = (inner[0], inner[1] + extra, inner[2], inner[3] - extra)
        ax = fig.add_axes(inner)
        ax.set_zorder(1)
        label, factor = UNITS.get(fc.get("unit", "short"), (fc.get("unit", ""), 1))
        for i, s in enumerate(series):
            xs = [datetime.fromtimestamp(t, UTC) for t, _ in s["values"]]
            ys = [float("nan") if v is None else v * factor for _, v in s["values"]]
            ax.plot(xs, ys, linewidth=1.6,
                    color=NAMED.get(s["legend"], PALETTE[i % len(PALETTE)]),
                    label=s["legend"] or "(no legend)")
        ax.set_ylabel(label, fontsize=9, color=MUTED)
        ax.tick_params(labelsize=8.5, colors=MUTED)
        ax.grid(True, color="#eeeeee")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
        ax.xaxis.set_major_locator(  # a tick a minute, every 30 s on short ranges
            mdates.SecondLocator(bysecond=[0, 30]) if time_range[1] - time_range[0] <= 150
            else mdates.MinuteLocator())
        if series:
            top = max((v * factor for s in series for v in _values(s)), default=0)
            ax.set_ylim(bottom=0, top=top * 1.15 if top > 0 else 1)
            ax.legend(fontsize=8.5, loc="upper left", ncol=ncol, frameon=False,
                      bbox_to_anchor=(0, -0.16 * 2.2 / (inner[3] * h)), borderaxespad=0,
                      handlelength=1.5, columnspacing=1.2)
        if not series or _all_zero(result):
            ax.set_yticks([0] if series else [])
            if not series:
                ax.set_ylabel("")
            what = "No data" if not series else "0 throughout"
            why = f": {empty_note}" if empty_note else ""
            ax.text(0.5, 0.55, textwrap.fill(f"{what}{why}", int(inner[2] * w * 11)),
                    transform=ax.transAxes, ha="center", va="center", fontsize=10.5,
                    color=MUTED, bbox={"facecolor": "#f7f7f7", "edgecolor": BORDER,
                                       "boxstyle": "round"})
        else:
            bucket = _lowest_bucket(series)
            if bucket is not None:
                ax.text(0.99, 0.06, textwrap.fill(
                    f"every observation in the histogram's lowest bucket (≤ {bucket * factor:g} "
                    f"{label}): histogram_quantile puts pN at N % of it", 60),
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=9, color=MUTED,
                    bbox={"facecolor": "#f7f7f7", "edgecolor": BORDER, "boxstyle": "round"})
        ax.set_xlim(datetime.fromtimestamp(time_range[0], UTC),
                    datetime.fromtimestamp(time_range[1], UTC))
    fig.savefig(path, facecolor=fig.get_facecolor())
    plt.close(fig)


def _lowest_bucket(series: list[dict[str, Any]]) -> float | None:
    """B when every series is a quantile `pN` whose value is always N % of the same B: what
    histogram_quantile gives when every observation fell into the first bucket (le=B), a
    flat line that says only "under B"."""
    bounds = set()
    for s in series:
        m = re.fullmatch(r"p(\d+(?:\.\d+)?)", s["legend"])
        vals = _values(s)
        if not m or not vals:
            return None
        q = float(m.group(1)) / 100
        bounds |= {round(v / q, 6) for v in vals}
    return bounds.pop() if len(bounds) == 1 else None


def _stat(fig: Any, frame: Any, inner: tuple, panel: dict[str, Any], fc: dict[str, Any],
          series: list[dict[str, Any]], h: float) -> None:
    """Grafana's stat panel: each series reduced to its last value (`lastNotNull`), shown
    big, coloured by the value mappings and thresholds; with `graphMode: area`, the series
    drawn faintly behind it."""
    opts = panel.get("options", {})
    if not series:
        fig.text(inner[0] + inner[2] / 2, inner[1] + inner[3] / 2, "No data", ha="center",
                 va="center", fontsize=16, color=MUTED)
        return
    n = len(series)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    for i, s in enumerate(series):
        vals = _values(s)
        last = vals[-1] if vals else None
        r, c = divmod(i, cols)
        cw, ch = inner[2] / cols, inner[3] / rows
        cell = (inner[0] + c * cw + 0.003, inner[1] + (rows - 1 - r) * ch + 0.003,
                cw - 0.006, ch - 0.006)
        color = _threshold_color(fc, last) if last is not None else MUTED
        ax = fig.add_axes(cell)
        ax.set_xticks([])
        ax.set_yticks([])
        background = opts.get("colorMode") == "background"
        ax.set_facecolor(color if background else PANEL_BG)
        for side in ax.spines.values():
            side.set_visible(background)
            side.set_color("white")
        if opts.get("graphMode") == "area" and vals:
            ax.fill_between(range(len(vals)), vals, color=color, alpha=0.18, linewidth=0)
            ax.plot(range(len(vals)), vals, color=color, alpha=0.6, linewidth=1.2)
            ax.set_ylim(0, max(max(vals), 1) * 1.6)
            ax.set_xlim(0, max(len(vals) - 1, 1))
        text_color = "white" if background else color
        big = 30 if rows == 1 else 20
        ax.text(0.5, 0.55 if n > 1 else 0.5, _stat_text(fc, last), transform=ax.transAxes,
                ha="center", va="center", fontsize=big, weight="bold", color=text_color)
        if n > 1 or opts.get("textMode") == "value_and_name":
            chars = max(8, int(cell[2] * fig.get_figwidth() * 12))
            ax.text(0.5, 0.16, textwrap.fill(s["legend"], chars),
                    transform=ax.transAxes, ha="center", va="center", fontsize=8.5,
                    color=text_color)
        if vals and opts.get("graphMode") == "area":
            ax.text(0.98, 0.92, f"max {_fmt_plain(max(vals))} in the run",
                    transform=ax.transAxes, ha="right", va="top", fontsize=8.5, color=MUTED)


# --- Prometheus -------------------------------------------------------------------------------

def prometheus_config(targets: dict[str, str], rule_file: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with each job's targets replaced (every job must be
    given one), scraped every SCRAPE_INTERVAL_S, the rules read from `rule_file`."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = f"{SCRAPE_INTERVAL_S}s"
    config["global"]["evaluation_interval"] = f"{EVALUATION_INTERVAL_S}s"
    config["rule_files"] = [rule_file]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    if jobs != set(targets):
        raise ValueError(f"the jobs are {sorted(jobs)}, targets given for {sorted(targets)}")
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


class Prometheus:
    """Debian's Prometheus server on a free loopback port, its data in `workdir`."""

    def __init__(self, workdir: Path, targets: dict[str, str], port: int) -> None:
        self.workdir, self.port = workdir, port
        self.url = f"http://127.0.0.1:{port}"
        shutil.copy(ALERTS, workdir / "alerts.yml")
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(prometheus_config(targets, "alerts.yml")))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.config}",
             f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n"
                                   f"{self.log.read_text()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            time.sleep(0.2)
        raise RuntimeError(f"prometheus was not ready in 30 s:\n{self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def api(self, path: str) -> Any:
        return _get(f"{self.url}/api/v1/{path}")["data"]


def temporal_metrics_target(data_dir: Path) -> str:
    """The dev server's metrics address: `temporal server start-dev` picks a free port when
    not given one and prints it in its banner (`Temporal Metrics: http://localhost:N/metrics`),
    which `worksession dev` writes to temporal.log (appended: the last banner counts)."""
    found = re.findall(r"Temporal Metrics:\s+http://([^/\s]+)/metrics",
                       (data_dir / "temporal.log").read_text(errors="replace"))
    if not found:
        raise RuntimeError("the Temporal dev server did not print its metrics address")
    host, port = found[-1].rsplit(":", 1)
    with socket.socket() as s:  # the dev server listens on the stack's --ip, 127.0.0.1
        s.settimeout(1)
        if s.connect_ex(("127.0.0.1", int(port))) == 0:
            return f"127.0.0.1:{port}"
    return f"{host}:{port}"


# --- field traffic ----------------------------------------------------------------------------

@dataclass
class Tally:
    sessions: dict[str, int] = field(default_factory=lambda: {
        "started": 0, "completed": 0, "cancelled": 0, "escalated": 0})
    checks: dict[str, int] = field(default_factory=lambda: {"passed": 0, "failed": 0})
    answers: dict[str, int] = field(default_factory=dict)
    burst: dict[str, int] = field(default_factory=dict)

    def answer(self, status: int | str) -> None:
        self.answers[str(status)] = self.answers.get(str(status), 0) + 1


class Traffic:
    """Devices walking whole sessions at a field worker's pace: a check every `think`
    seconds or so. Per session: 15 % cancelled part-way; 20 % with a troubled step, failed
    three times in a row (the session needs attention) and passed only after a supervisor's
    look (`hold` seconds); otherwise a check fails now and then (8 %) and is done again; 5 %
    of devices send a stale check for a step already passed (409)."""

    def __init__(self, http: Any, secret: bytes, sop_id: str, think: float, hold: float,
                 seed: int = 17) -> None:
        from benchmarks.load import bearer
        self.http, self.secret, self.sop_id = http, secret, sop_id
        self.think, self.hold = think, hold
        self.rng = random.Random(seed)
        self.tally = Tally()
        self.supervisor = bearer(secret, "supervisor")

    async def _pause(self, seconds: float) -> None:
        await asyncio.sleep(seconds * self.rng.uniform(0.6, 1.4))

    async def _post(self, url: str, headers: dict[str, str], body: dict[str, Any]) -> Any:
        from benchmarks.load import _send
        stats = _NullStats()
        r = await _send(stats, url, time.perf_counter(),  # shed: sent again after Retry-After
                        lambda: self.http.post(url, headers=headers, json=body))
        for _ in stats.shed[url]:
            self.tally.answer("503 shed, sent again")
        self.tally.answer(r.status_code if r is not None else stats.last)
        return r

    async def device(self, until: float) -> None:
        from benchmarks.load import bearer
        headers = bearer(self.secret, "worker")
        while time.monotonic() < until:
            r = await self._post("/api/v1/sessions", headers, {"sop_id": self.sop_id})
            if r is None or r.status_code != 201:
                headers = bearer(self.secret, "worker")  # carry on as a fresh device
                await self._pause(self.think)
                continue
            self.tally.sessions["started"] += 1
            await self._session(r.json(), headers, until)

    async def _session(self, s: dict[str, Any], headers: dict[str, str], until: float) -> None:
        from benchmarks.load import check_body
        rng = self.rng
        cancel_at = rng.randrange(2, SOP_STEPS - 1) if rng.random() < 0.15 else None
        troubled = rng.randrange(1, SOP_STEPS) if rng.random() < 0.20 else None
        done = 0
        previous: dict[str, Any] | None = None
        while s["status"] == "in_progress":
            await self._pause(self.think)
            if cancel_at is not None and done >= cancel_at:
                r = await self._post(f"/api/v1/sessions/{s['id']}/cancel", headers,
                                     {"reason": "wrong equipment on site"})
                if r is not None and r.status_code == 200:
                    self.tally.sessions["cancelled"] += 1
                return
            if previous is not None and rng.random() < 0.05:
                # a device that did not see its last answer sends that step's check again
                await self._post(f"/api/v1/sessions/{s['id']}/checks", headers,
                                 check_body(previous))
            step = s["current_step"]
            fail = rng.random() < 0.08
            if done == troubled:
                fail = True
                if s["needs_attention"]:  # escalated: a supervisor looks, then it passes
                    self.tally.sessions["escalated"] += 1
                    await asyncio.sleep(self.hold)
                    troubled, fail = None, False
            r = await self._post(f"/api/v1/sessions/{s['id']}/checks", headers,
                                 check_body(step, fail=fail))
            if r is None or r.status_code != 200:
                return  # the device gives up on this session; it stays open (as in the field)
            self.tally.checks["failed" if fail else "passed"] += 1
            if not fail:
                done += 1
                previous = step
            s = r.json()
        if s["status"] == "completed":
            self.tally.sessions["completed"] += 1

    async def burst(self, n: int) -> None:
        """`n` supervisor listings at once, not resent: more than WORKSESSION_MAX_IN_FLIGHT
        (12) at a time, the rest shed with 503 /problems/overloaded."""
        async def one() -> str:
            try:
                r = await self.http.get("/api/v1/sessions?limit=50", headers=self.supervisor)
                return str(r.status_code)
            except Exception as e:  # a transport error counts under its name
                return type(e).__name__
        for status in await asyncio.gather(*(one() for _ in range(n))):
            self.tally.burst[status] = self.tally.burst.get(status, 0) + 1


class _NullStats:
    """What `benchmarks.load._send` records, reduced to the last failure's name."""

    def __init__(self) -> None:
        self.last = "none"
        self.shed: defaultdict[str, list[float]] = defaultdict(list)

    def add(self, endpoint: str, ms: float, status: int | str) -> None:
        self.last = str(status)


async def drive(api: str, data_dir: Path, minutes: float, devices: int, think: float,
                hold: float, burst: int) -> dict[str, Any]:
    from benchmarks.load import Clients, bearer, benchmark_sop
    from worksession.tokens import load_or_create_dev_secret

    secret = load_or_create_dev_secret(data_dir)
    async with Clients(api, connections=200) as http:
        sop = await benchmark_sop(http, bearer(secret, "supervisor"), "Dashboard SOP", SOP_STEPS)
        traffic = Traffic(http, secret, sop["id"], think, hold)
        until = time.monotonic() + minutes * 60
        tasks = [asyncio.create_task(traffic.device(until)) for _ in range(devices)]
        if burst:
            await asyncio.sleep(minutes * 60 * 0.55)
            for _ in range(3):
                await traffic.burst(burst)
                await asyncio.sleep(1)
        await asyncio.gather(*tasks)
    return {"sessions": traffic.tally.sessions, "checks": traffic.tally.checks,
            "answers": traffic.tally.answers, "burst_answers": traffic.tally.burst}


# --- the run ----------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    from faults.harness import DevProcess, free_port

    dashboard = json.loads(DASHBOARD.read_text())
    out: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(), "settings": {
        "minutes": args.minutes, "devices": args.devices, "think_s": args.think,
        "hold_s": args.hold, "burst": args.burst, "sop_steps": SOP_STEPS,
        "scrape_interval_s": SCRAPE_INTERVAL_S, "evaluation_interval_s": EVALUATION_INTERVAL_S,
        "step_s": args.step, "rate_interval_s": args.rate_interval}}
    with tempfile.TemporaryDirectory(prefix="ws-dashboard-", ignore_cleanup_errors=True) as tmp:
        root = Path(tmp)
        stack = DevProcess(root)
        try:
            stack.start()
            targets = {
                "worksession-api": f"127.0.0.1:{stack.ports['metrics']}",
                "worksession-worker": f"127.0.0.1:{stack.ports['worker_metrics']}",
                "temporal": temporal_metrics_target(stack.data_dir),
                "prometheus": "",  # itself, once its port is chosen
            }
            prom_dir = root / "prometheus"
            prom_dir.mkdir()
            port = free_port()
            targets["prometheus"] = f"127.0.0.1:{port}"
            out["targets_configured"] = targets
            print(f"stack up (API {stack.api}); Prometheus on :{port} scraping {targets}",
                  flush=True)
            with Prometheus(prom_dir, targets, port) as prom:
                time.sleep(3 * SCRAPE_INTERVAL_S)
                start = time.time()
                out["traffic"] = asyncio.run(drive(
                    stack.api, stack.data_dir, args.minutes, args.devices, args.think,
                    args.hold, args.burst))
                print(f"traffic: {json.dumps(out['traffic'])}", flush=True)
                time.sleep(3 * SCRAPE_INTERVAL_S)
                end = time.time()
                start -= 15  # a little of the idle stack before the traffic
                out["range"] = {"start": datetime.fromtimestamp(start, UTC).isoformat(),
                                "end": datetime.fromtimestamp(end, UTC).isoformat()}
                out["panels"] = evaluate(prom.url, dashboard, start, end, args.step,
                                         args.rate_interval)
                out["targets"] = [{"job": t["labels"].get("job"), "url": t["scrapeUrl"],
                                   "health": t["health"], "last_error": t["lastError"]}
                                  for t in prom.api("targets")["activeTargets"]]
                # The counters' totals at the end, beside what the driver counted itself
                out["counters_at_end"] = {e: _instant(prom, e) for e in END_COUNTERS}
                out["alerts"] = prom.api("alerts")["alerts"]
                out["rules"] = [{"alert": r["name"], "state": r["state"]}
                                for g in prom.api("rules")["groups"] for r in g["rules"]]
                out["worker_failure_counters_exported"] = _exported(
                    f"http://127.0.0.1:{stack.ports['worker_metrics']}/metrics",
                    ["temporal_workflow_task_execution_failed",
                     "temporal_activity_execution_failed"])
        finally:
            stack.stop()
    return out


END_COUNTERS = [
    "sum by (result) (worksession_checks_total)",
    "sum(worksession_sessions_started_total)",
    "sum(worksession_sessions_completed_total)",
    "sum(worksession_sessions_cancelled_total)",
    "sum by (status) (worksession_http_requests_total)",
    "sum(worksession_http_requests_shed_total)",
]


def _instant(prom: Prometheus, expr: str) -> dict[str, float]:
    q = urllib.parse.urlencode({"query": expr})
    return {legend(None, r["metric"]) or "total": float(r["value"][1])
            for r in prom.api(f"query?{q}")["result"]}


def _exported(url: str, names: list[str]) -> dict[str, bool]:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    return {n: re.search(rf"^{n}(_total)?[{{ ]", text, re.M) is not None for n in names}


def _footer(out: dict[str, Any]) -> str:
    firing = [a for a in out["alerts"] if a["state"] == "firing"]
    pending = [a for a in out["alerts"] if a["state"] == "pending"]
    def names(xs: list[dict[str, Any]]) -> str:
        return ", ".join(sorted({f"{a['labels']['alertname']}"
                                 + (f" ({a['labels']['reason']})" if "reason" in a["labels"]
                                    else "") for a in xs})) or "none"
    t = out["traffic"]
    return (f"Alerts at the end (Prometheus, rules of deploy/prometheus/alerts.yml): "
            f"firing: {names(firing)}; pending: {names(pending)}; "
            f"{sum(r['state'] == 'inactive' for r in out['rules'])} of {len(out['rules'])} "
            f"inactive.\n"
            f"Traffic: {out['settings']['devices']} devices; sessions {_kv(t['sessions'])}; "
            f"checks {_kv(t['checks'])}; answers {_kv(t['answers'])}; "
            f"burst of supervisor reads {_kv(t['burst_answers'])}.")


def _kv(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def draw(out: dict[str, Any], png: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    st = out["settings"]
    start = datetime.fromisoformat(out["range"]["start"])
    end = datetime.fromisoformat(out["range"]["end"])
    subtitle = (f"Rendered from a real scrape, not by Grafana: `worksession dev` under "
                f"{st['minutes']:g} min of field traffic, scraped every "
                f"{st['scrape_interval_s']} s by Debian's Prometheus "
                f"(benchmarks/dashboard.py).\nEach panel's PromQL from "
                f"{DASHBOARD.relative_to(ROOT)}, evaluated by Prometheus's query_range "
                f"over {start:%Y-%m-%d %H:%M:%S}–{end:%H:%M:%S} UTC, step {st['step_s']} s, "
                f"$__rate_interval = {st['rate_interval_s']}s.")
    png.parent.mkdir(parents=True, exist_ok=True)
    render(dashboard, out["panels"], png, (start.timestamp(), end.timestamp()), subtitle,
           _footer(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3, help="of traffic (default 3)")
    ap.add_argument("--devices", type=int, default=6)
    ap.add_argument("--think", type=float, default=2.0,
                    help="seconds between a device's checks, on average (default 2)")
    ap.add_argument("--hold", type=float, default=40.0,
                    help="seconds a session needing attention waits for a supervisor")
    ap.add_argument("--burst", type=int, default=150,
                    help="supervisor reads sent at once, three times, half-way (0: none)")
    ap.add_argument("--step", type=int, default=5, help="query_range step in seconds")
    ap.add_argument("--rate-interval", type=int, default=30,
                    help="seconds that $__rate_interval stands for (default 30)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    ap.add_argument("--json", type=Path, default=None,
                    help="default benchmarks/results/dashboard-<date>.json")
    ap.add_argument("--redraw", type=Path, metavar="JSON",
                    help="only draw the PNG again from a run's saved results")
    args = ap.parse_args()
    if not args.redraw and not Path(PROMETHEUS).exists():
        raise SystemExit(f"{PROMETHEUS} is missing: `make promtool` installs Debian's "
                         "prometheus package")
    if args.redraw:  # the saved results of a run drawn again: no stack, no Prometheus
        out = json.loads(args.redraw.read_text())
        draw(out, args.out)
        print(f"redrawn: {args.out}")
        return
    out = run(args)
    path = args.json or RESULTS / f"dashboard-{datetime.now(UTC):%Y-%m-%d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    draw(out, args.out)
    print(_footer(out))
    print(f"targets: {[(t['job'], t['health']) for t in out['targets']]}")
    print(f"results: {args.out}, {path}")


if __name__ == "__main__":
    main()
