"""The worker's page, timed in the browser (headless Debian chromium, as the browser tests),
for two versions of web/ side by side: a git revision's ("before") and this checkout's
("after"), each served by its own `worksession dev`, measured alternately.

- first load: navigation start to the step card in the page (a new browser profile)
- check: a measurement typed, tap on "Record check" to the card showing the next step,
  and to the service's answer being in (the check has left the outbox)
- reload: the same, the page opened again (service worker installed, what it keeps kept)
- outage reload (--outage-reps): the page reopened while the API process is stopped
  (SIGSTOP: connections accepted, nothing answered, the console's files included), to the
  step card (or whatever the page shows after --outage-limit seconds)

    python -m benchmarks.console_timing --before 41639c7 --reps 5 --outage-reps 1

Medians in ms. The machine's other load shows in the figures, and the two stacks differ
(an A/A run, `--before HEAD`, showed the second-started one 125 ms slower on the first load):
compare columns of one run, and again with --swap. Results: benchmarks/results/console-timing-*.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
from playwright.sync_api import Browser, sync_playwright

from faults.harness import DevProcess
from worksession.tokens import load_or_create_dev_secret, mint

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--no-first-run"]
PHONE = {"width": 360, "height": 780}

# Times in the page (performance.now(): ms since its navigation started).
PROBE = """(() => {
  const p = window.__probe = {
    card: null, tap: null, moved: null, delivered: null, sent: null, answered: null,
    api: null, lastRead: null };
  const count = () => document.querySelector('.step-card .step-count')?.textContent ?? null;
  new MutationObserver(() => {
    const now = performance.now();
    const shown = count();
    if (shown !== null && p.card === null) p.card = now;
    if (p.tap !== null && p.moved === null && shown !== p.tapped) p.moved = now;
  }).observe(document, { childList: true, subtree: true, characterData: true });
  document.addEventListener('click', (e) => {
    if (e.target.closest && e.target.closest('.step-card button[type=submit]')) {
      p.tap = performance.now();
      p.tapped = count();
    }
  }, true);
  const fetched = window.fetch;
  window.fetch = function (url, init) {
    const check = p.tap !== null && p.sent === null && String(url).endsWith('/checks');
    if (check) p.sent = performance.now();
    const read = p.card === null && String(url).startsWith('/api/v1/');
    if (read && p.api === null) p.api = performance.now();
    const answer = fetched.call(this, url, init);
    if (read) answer.then(() => { if (p.card === null) p.lastRead = performance.now(); }, () => {});
    if (check) answer.then(() => { p.answered = performance.now(); }, () => {});
    return answer;
  };
  const set = Storage.prototype.setItem;
  Storage.prototype.setItem = function (key, value) {
    set.call(this, key, value);
    if (p.tap !== null && p.delivered === null && key.startsWith('worksession.outbox.')
        && value === '[]') p.delivered = performance.now();
  };
})();"""


class Variant:
    def __init__(self, name: str, web: Path, root: Path) -> None:
        self.name, self.web = name, web
        root.mkdir(parents=True)
        self.dev = DevProcess(root)
        self.times: dict[str, list[float]] = {}
        self.notes: list[str] = []

    def start(self) -> None:
        os.environ["WORKSESSION_WEB_DIR"] = str(self.web)  # inherited by dev's API process
        self.dev.start()
        self.secret = load_or_create_dev_secret(self.dev.data_dir)
        sup = self.auth("supervisor")
        sop = self.call(sup, "POST", "/sops", {"title": "Timing", "tasks": [
            {"title": "Isolate", "steps": [
                {"title": f"Step {i + 1}", "check": {"kind": "measurement", "prompt": "Volts",
                                                     "unit": "V", "min": 0, "max": 1}}
                for i in range(3)]}]})
        self.sop = self.call(sup, "POST", f"/sops/{sop['id']}/confirm")

    def auth(self, role: str) -> str:
        return mint(self.secret, role, uuid4())

    def call(self, token: str, method: str, path: str, body: Any = None) -> Any:
        r = httpx.request(method, f"{self.dev.api}/api/v1{path}", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        return r.json() if r.content else None

    def add(self, what: str, ms: float | None) -> None:
        if ms is not None:
            self.times.setdefault(what, []).append(ms)


def probe(page: Any, key: str) -> float | None:
    return page.evaluate(f"() => window.__probe.{key}")


def until(page: Any, condition: str, within: float = 30.0) -> None:
    """Polled from here: the console's CSP refuses the eval of Playwright's own polling."""
    deadline = time.monotonic() + within
    while not page.evaluate(f"() => {condition}"):
        if time.monotonic() > deadline:
            raise TimeoutError(condition)
        time.sleep(0.01)


def one_rep(v: Variant, browser: Browser, outage: bool, outage_limit: float) -> None:
    worker = v.auth("worker")
    v.call(worker, "POST", "/sessions", {"sop_id": v.sop["id"]})
    context = browser.new_context(viewport=PHONE, locale="en-GB", timezone_id="UTC")
    context.set_default_timeout(30_000)
    context.add_init_script(PROBE)
    page = context.new_page()
    try:
        page.goto(f"{v.dev.api}/app/#token={worker}")
        until(page, "window.__probe.card !== null")
        v.add("first load", probe(page, "card"))
        v.add("first load: to 1st API read", probe(page, "api"))
        last, card = probe(page, "lastRead"), probe(page, "card")
        if last is not None and card is not None:
            v.add("first load: last read to card", card - last)

        # a measurement: sent at once by every version (a confirm step's tap now waits 5 s
        # for an Undo before it is sent, which is not the page's speed)
        page.locator(".step-card input[name=value]").fill("0.3")
        page.locator(".step-card").get_by_role("button", name="Record check").click()
        until(page, "window.__probe.moved !== null && window.__probe.delivered !== null")
        tap, moved, delivered = (probe(page, k) for k in ("tap", "moved", "delivered"))
        assert tap is not None and moved is not None and delivered is not None
        v.add("check: tap to card", moved - tap)
        v.add("check: tap to answer in", max(moved, delivered) - tap)
        sent, answered = probe(page, "sent"), probe(page, "answered")
        if sent is not None and answered is not None:
            v.add("check: tap to POST sent", sent - tap)
            v.add("check: POST round trip", answered - sent)

        until(page, "!!navigator.serviceWorker.controller")
        page.reload()
        until(page, "window.__probe.card !== null")
        v.add("reload", probe(page, "card"))

        if outage:
            pids = v.dev.children()["api"]
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                began = time.monotonic()
                page.reload(wait_until="commit")
                try:
                    page.locator(".step-card .step-title").wait_for(
                        state="visible", timeout=outage_limit * 1000)
                    v.add("outage reload", (time.monotonic() - began) * 1000)
                except Exception:  # noqa: BLE001 - what the page shows instead is the figure
                    shown = page.locator("main").inner_text(timeout=2000)[:120]
                    v.notes.append(f"outage reload: no step card in {outage_limit:.0f} s; "
                                   f"the page shows {json.dumps(shown)}")
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
    finally:
        context.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="41639c7", help="git revision of web/ to compare")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--outage-reps", type=int, default=0)
    ap.add_argument("--outage-limit", type=float, default=45.0)
    ap.add_argument("--swap", action="store_true",
                    help="start the after stack first (the two stacks differ: an A/A run, "
                         "--before HEAD, shows by how much)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="console-timing-"))
    before_web = root / "before"
    before_web.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before, "web"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before_web)], input=archive, check=True)
    variants = [Variant(f"before ({args.before})", before_web / "web", root / "before-dev"),
                Variant("after (this checkout)", REPO / "web", root / "after-dev")]
    try:
        for v in variants[::-1] if args.swap else variants:
            v.start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            for rep in range(max(args.reps, args.outage_reps)):
                for v in variants if rep % 2 == 0 else variants[::-1]:
                    one_rep(v, browser, rep < args.outage_reps, args.outage_limit)
            browser.close()
    finally:
        for v in variants:
            v.dev.stop()
    whats = list(dict.fromkeys(w for v in variants for w in v.times))
    print(f"{'median ms (n)':28s}" + "".join(f"{v.name:>26s}" for v in variants))
    for what in whats:
        cells = []
        for v in variants:
            xs = v.times.get(what, [])
            cells.append(f"{statistics.median(xs):.0f} ({len(xs)})" if xs else "-")
        print(f"{what:28s}" + "".join(f"{c:>26s}" for c in cells))
    for v in variants:
        for note in v.notes:
            print(f"{v.name}: {note}")


if __name__ == "__main__":
    main()
