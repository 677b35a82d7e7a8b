"""The web console in gloved hands and for assistive technology, in headless Chromium against
`worksession dev` (the fixtures and helpers of tests/test_web_console.py):

- axe-core finds no violation, of any impact, on any view a worker, a supervisor or an admin
  can reach, on a phone (360 x 740) and a desktop (1280 x 800);
- on a phone every control a worker touches is at least 48 x 48 px and 8 px or more from its
  neighbours, text is 16 px (small print 14 px, never less), and the step's action stays on
  the screen;
- a confirm step passes with one tap (and an Undo takes it back before it is sent); ending a
  session early and signing out with checks waiting ask first; the SOP editor and the sign-in
  page say what is true once.

axe-core is the copy that the `axe-playwright-python` package bundles (a test extra); a file
named by WORKSESSION_AXE_JS is used instead when set."""

from __future__ import annotations

import importlib.resources
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import test_web_console as web
from tests.test_web_console import (
    Stack,
    confirmed_sop,
    new_worker,
    open_page,
    outbox,
    sign_in,
    started_on_a_phone,
    tap_passed,
    worker_session_with_history,
)

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # pragma: no cover - the `browser` fixture reports it
    pass

# the module-scoped fixtures of the console's tests: one `worksession dev` for this module
stack = web.stack
supervisor = web.supervisor
browser = web.browser

PHONE = {"width": 360, "height": 740}
DESK = {"width": 1280, "height": 800}
UNDO_WAIT = web.UNDO_WAIT
# what a page may log when a test cuts the network on purpose
NETWORK_CUT = ("net::ERR_FAILED", "net::ERR_INTERNET_DISCONNECTED")


def axe_source() -> str:
    path = os.environ.get("WORKSESSION_AXE_JS")
    if path:
        return Path(path).read_text()
    try:
        return (importlib.resources.files("axe_playwright_python") / "axe.min.js").read_text()
    except ModuleNotFoundError:
        pytest.fail("axe-core is missing: install the test extras (`pip install -e '.[test]'`, "
                    "which brings axe-playwright-python and its axe.min.js), or point "
                    "WORKSESSION_AXE_JS at an axe.min.js", pytrace=False)


_AXE: list[str] = []


def axe(page: Page) -> list[str]:
    """axe-core's violations on the page as it is now, one line each, whatever their
    impact. The script is evaluated by the test, so the console's Content-Security-Policy
    (no inline script) stays as it is."""
    if not _AXE:
        _AXE.append(axe_source())
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(_AXE[0])
    if not page.locator("dialog[open]").count():
        # the view as a person arriving at it sees it: from the top (at other places a control
        # half under a bar that sticks, say Save draft's, reads as a small target)
        page.evaluate("window.scrollTo(0, 0)")
    return page.evaluate("""async () => {
        // axe's default rules, its experimental ones (label-content-name-mismatch is one)
        // and WCAG 2.2's target-size; not the AAA ones (the console's colours are AA)
        const more = [...axe.getRules(['experimental']).map((r) => r.ruleId), 'target-size'];
        const rules = Object.fromEntries(more.map((id) => [id, { enabled: true }]));
        const result = await axe.run(document, { resultTypes: ['violations'], rules });
        return result.violations.map((v) => `${v.id} (${v.impact}): ${v.help}: `
            + v.nodes.slice(0, 4).map((n) => n.target.join(' ')).join(' | '));
    }""")


# Every control a finger can reach, measured as the screen shows it: the page is scrolled
# from top to bottom; at each place the controls wholly on the screen and not under a bar
# that sticks (the pending checks, the step's action bar) are compared. In a modal dialog,
# the dialog's controls only.
TAP_TARGETS_JS = """() => {
  const MIN = 48, GAP = 8, EPS = 0.01;
  const SEL = 'button, a[href], input:not([type="hidden"]), select, textarea, summary, '
    + '[role="button"], [tabindex]:not([tabindex="-1"])';
  const dialog = document.querySelector('dialog[open]');
  const targets = [...(dialog || document.body).querySelectorAll(SEL)]
    .filter((el) => dialog || !el.closest('dialog'));
  const sticky = dialog ? [] : [...document.querySelectorAll('body *')]
    .filter((el) => ['sticky', 'fixed'].includes(getComputedStyle(el).position));
  const name = (el) => `${el.tagName.toLowerCase()} "${(el.getAttribute('aria-label')
    || el.textContent || el.getAttribute('name') || '').trim().replace(/\\s+/g, ' ')
    .slice(0, 40)}"`;
  const overlap = (a, b) => a.left < b.right && b.left < a.right
    && a.top < b.bottom && b.top < a.bottom;
  const problems = new Set();
  const shown = new Set();
  const whole = new Set();
  const end = Math.max(0, document.documentElement.scrollHeight - innerHeight);
  const places = [];
  for (let y = 0; y < end; y += innerHeight / 3) places.push(y);
  places.push(end);
  for (const y of dialog ? [window.scrollY] : places) {
    if (!dialog) window.scrollTo(0, y);
    const bars = sticky.map((el) => ({ el, r: el.getBoundingClientRect() }))
      .filter(({ r }) => r.width > 0 && r.height > 0);
    const seen = [];
    for (const el of targets) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 || r.height === 0 || getComputedStyle(el).visibility === 'hidden') continue;
      if (r.right <= 0 || r.left >= innerWidth) continue; // off the screen (the skip link)
      shown.add(el);
      if (r.top < 0 || r.bottom > innerHeight || r.left < 0 || r.right > innerWidth) continue;
      if (bars.some((b) => !b.el.contains(el) && overlap(b.r, r))) continue;
      whole.add(el);
      seen.push({ el, r });
    }
    for (const { el, r } of seen) {
      if (r.width < MIN - EPS || r.height < MIN - EPS) {
        problems.add(`${name(el)} is ${Math.round(r.width)} x ${Math.round(r.height)} px`);
      }
    }
    for (let i = 0; i < seen.length; i += 1) {
      for (let j = i + 1; j < seen.length; j += 1) {
        const a = seen[i].r, b = seen[j].r;
        const gap = Math.hypot(Math.max(0, b.left - a.right, a.left - b.right),
          Math.max(0, b.top - a.bottom, a.top - b.bottom));
        if (gap < GAP - EPS) {
          problems.add(`${name(seen[i].el)} and ${name(seen[j].el)} are `
            + `${gap.toFixed(1)} px apart`);
        }
      }
    }
  }
  for (const el of shown) {
    if (!whole.has(el)) problems.add(`${name(el)} is never wholly on the screen`);
  }
  if (!dialog) window.scrollTo(0, 0);
  return [...problems];
}"""

# The size of every piece of text on the screen (SVG text as drawn, after its scaling):
# nothing under 14 px; under 16 px only the small print (labels above a title, badges,
# "Started ..." lines, hints, who is signed in); form fields 16 px.
FONT_SIZES_JS = """() => {
  const SMALL_PRINT = '.eyebrow, .badge, .meta, .progress, .history-meta, .who, .hint';
  const dialog = document.querySelector('dialog[open]');
  const under14 = new Set(), under16 = new Set();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const size = (el) => parseFloat(getComputedStyle(el).fontSize)
    * (el instanceof SVGElement ? el.getScreenCTM().a : 1);
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    return r.width > 1 && r.height > 1 // a screen reader's text is 1 px
      && el.checkVisibility({ visibilityProperty: true }) && (!dialog || dialog.contains(el));
  };
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const text = n.textContent.trim();
    const el = n.parentElement;
    if (!text || !visible(el)) continue;
    const px = size(el);
    const what = `"${text.slice(0, 40)}" ${px.toFixed(1)} px`;
    if (px < 14 - 0.01) under14.add(what);
    else if (px < 16 - 0.01 && !el.closest(SMALL_PRINT)) under16.add(what);
  }
  for (const el of document.querySelectorAll('input, select, textarea')) {
    if (visible(el) && size(el) < 16 - 0.01) {
      under16.add(`${el.name || el.id} field ${size(el)} px`);
    }
  }
  return { body: size(document.body), under14: [...under14], under16: [...under16] };
}"""


def report(found: dict[str, list[str]]) -> str:
    """What was found, view by view, a line each."""
    return "\n".join(f"{view}:\n  " + "\n  ".join(items) for view, items in found.items())


def tap_target_problems(page: Page) -> list[str]:
    return page.evaluate(TAP_TARGETS_JS)


def wholly_on_screen(page: Page, locator: Any) -> bool:
    """The control is inside the viewport and nothing covers its middle (a tap lands on it)."""
    return locator.evaluate("""(el) => {
        const r = el.getBoundingClientRect();
        const hit = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth
            && (hit === el || el.contains(hit));
    }""")


def check(stack: Stack, token: str, session: dict[str, Any], **body: Any) -> dict[str, Any]:
    return stack.call(token, "POST", f"/sessions/{session['id']}/checks",
                      {"step_id": session["current_step_id"], **body})


# ---- the walks: every view, as a person gets there ------------------------------------------

def worker_views(stack: Stack, supervisor: str, browser: Browser,
                 viewport: dict[str, int]) -> Iterator[tuple[str, Page]]:
    """A worker's page in each state it can be in: (name, page) at each."""
    title = f"Walk {uuid.uuid4().hex[:6]}"
    confirmed_sop(stack, supervisor, title)
    worker = new_worker(stack)
    page, console = open_page(browser, viewport)
    try:
        page.goto(f"{stack.api}/app/")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        yield "sign-in", page
        page.goto(f"{stack.api}/app/#token=not-a-token")
        expect(page.get_by_role("alert")).to_contain_text("damaged")
        yield "sign-in, a damaged link", page

        page.context.route("**/api/v1/sops?*", lambda route: route.abort())
        page.goto(stack.console_link(worker))
        expect(page.get_by_role("button", name="Try again")).to_be_visible()
        yield "home, not loaded", page
        page.context.unroute("**/api/v1/sops?*")
        page.get_by_role("button", name="Try again").click()
        expect(page.get_by_role("button", name=f"Start {title}")).to_be_visible()
        expect(page.locator(".history")).to_have_count(0)
        yield "home", page

        page.get_by_role("button", name=f"Start {title}").click()
        card = page.locator(".step-card")
        expect(card).to_contain_text("Step 1 of 3")
        yield "step: confirm", page
        card.get_by_role("button", name="Passed").click()
        expect(card.locator(".undo")).to_contain_text("Recorded: Passed")
        yield "step: recorded, Undo", page
        expect(card).to_contain_text("Step 2 of 3", timeout=UNDO_WAIT)

        value = card.get_by_label("Voltage at terminal A (V)")
        for typed in ("0.9", "0.8", "0.7"):
            value.fill(typed)
            card.get_by_role("button", name="Record check").click()
            expect(card.get_by_role("alert")).to_contain_text(f"Failed: {typed} V")
        expect(page.get_by_text("This step failed several times")).to_be_visible()
        card.locator(".attempts summary").click()
        yield "step: measurement failed three times", page

        page.get_by_role("button", name="Complete session now").click()
        yield "dialog: complete the session now", page
        page.get_by_role("dialog").get_by_role("button", name="Back").click()
        page.get_by_role("button", name="Cancel session").click()
        yield "dialog: cancel the session", page
        page.get_by_role("dialog").get_by_role("button", name="Back").click()
        page.get_by_role("button", name="Pause").click()
        expect(card.get_by_role("button", name="Resume")).to_be_visible()
        yield "step: paused", page
        card.get_by_role("button", name="Resume").click()
        expect(card.get_by_role("button", name="Record check")).to_be_enabled()

        page.evaluate("navigator.serviceWorker.ready")
        page.reload()
        expect(card).to_contain_text("Step 2 of 3")
        page.context.set_offline(True)
        page.reload()
        expect(page.locator("#offline")).to_contain_text("No connection")
        expect(card).to_contain_text("Step 2 of 3")
        yield "offline: what the phone last saw", page
        card.get_by_label("Voltage at terminal A (V)").fill("0.3")
        card.get_by_role("button", name="Record check").click()
        expect(page.locator("#pending")).to_contain_text("1 check waiting to be sent")
        yield "offline: a check waiting", page
        page.get_by_role("button", name="Sign out").click()
        yield "dialog: sign out with a check waiting", page
        page.get_by_role("dialog").get_by_role("button", name="Stay signed in").click()
        page.context.set_offline(False)
        expect(card).to_contain_text("Step 3 of 3", timeout=15_000)

        tap_passed(card)
        expect(page.get_by_role("heading", name="Session completed")).to_be_visible()
        expect(page.locator(".history li")).to_have_count(1)
        yield "session completed", page

        sop = confirmed_sop(stack, supervisor, f"{title} b")
        for _ in range(10):
            s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
            stack.call(worker, "POST", f"/sessions/{s['id']}/complete")
        page.reload()
        expect(page.locator(".pager")).to_contain_text("1–10 of 11")
        yield "home, history with pages", page
        page.locator(".pager").get_by_role("button", name="Next").click()
        expect(page.locator(".pager")).to_contain_text("11–11 of 11")
        yield "home, history page 2", page
        console.assert_clean(*NETWORK_CUT)
    finally:
        page.context.close()


def held_nc(stack: Stack, supervisor: str) -> dict[str, Any]:
    """An open NC holding a worker's session (a failed check on a `hold` step), through the API."""
    title = f"Guards {uuid.uuid4().hex[:6]}"
    sop = stack.call(supervisor, "POST", "/sops", {"title": title, "tasks": [
        {"title": "Guards", "steps": [{"title": "Light curtain", "check": {
            "kind": "confirm", "prompt": "Stops the press", "on_fail": "hold"}}]}]})
    stack.call(supervisor, "POST", f"/sops/{sop['id']}/confirm")
    worker = new_worker(stack)
    s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
    stack.call(worker, "POST", f"/sessions/{s['id']}/checks",
               {"step_id": s["current_step_id"], "result": "failed"})
    [nc] = stack.call(supervisor, "GET", f"/nonconformances?session_id={s['id']}")["items"]
    return nc


def supervisor_views(stack: Stack, supervisor: str, browser: Browser,
                     viewport: dict[str, int], role: str = "supervisor"
                     ) -> Iterator[tuple[str, Page]]:
    """A supervisor's (or an admin's) views: (name, page) at each."""
    session, _ = worker_session_with_history(stack, supervisor)
    sop = session["sop"]
    token = stack.token(role)  # fresh: approving is a signature, which wants a recent sign-in
    page, console = open_page(browser, viewport)
    try:
        sign_in(page, stack.console_link(token))
        expect(page.locator("table.sessions tbody tr").first).to_be_visible()
        yield "sessions", page
        page.get_by_label("Worker", exact=True).fill("nobody has this name")
        page.get_by_label("Worker", exact=True).press("Enter")
        expect(page.get_by_text("No worker's name holds")).to_be_visible()
        yield "sessions, a worker nobody is called", page
        page.get_by_label("Worker", exact=True).fill("")
        page.get_by_label("Status").select_option("cancelled")
        page.get_by_label("SOP", exact=True).select_option(f"sop:{sop['id']}")
        expect(page.get_by_text("No session matches.")).to_be_visible()
        yield "sessions, none match", page
        page.context.route("**/api/v1/sessions?*", lambda route: route.abort())
        page.get_by_role("button", name="Refresh").click()
        expect(page.get_by_role("alert")).to_contain_text("Cannot reach the service")
        yield "sessions, not loaded", page
        page.context.unroute("**/api/v1/sessions?*")
        page.get_by_label("Status").select_option("completed")
        rows = page.locator("table.sessions tbody tr")
        expect(rows).to_have_count(1)
        rows.first.get_by_role("button").click()
        expect(page.locator(".timeline li")).to_have_count(6)
        expect(page.locator("table.audit tbody tr").first).to_be_visible()
        yield "session: timeline and audit log", page
        page.get_by_role("button", name="Approve and lock").click()
        yield "dialog: approve", page
        page.get_by_role("dialog").get_by_role("button", name="Back").click()
        page.get_by_role("button", name="Reopen").click()
        yield "dialog: reopen", page
        page.get_by_role("dialog").get_by_role("button", name="Back").click()
        page.get_by_role("button", name="Approve and lock").click()
        page.get_by_role("dialog").get_by_role("button", name="Approve and lock").click()
        expect(page.locator(".notice-locked")).to_be_visible()
        yield "session: approved and locked", page

        held = held_nc(stack, supervisor)
        page.get_by_role("navigation", name="Views").get_by_role(
            "button", name="Nonconformances").click()
        expect(page.locator("table.ncs tbody tr").first).to_be_visible()
        yield "nonconformances", page
        page.get_by_role("button", name=f"Open {held['number']}").click()
        expect(page.get_by_role("button", name="Contain", exact=True)).to_be_visible()
        yield "nonconformance: open, the contain form", page
        page.get_by_label("Containment").fill("Parts set aside")
        page.get_by_role("button", name="Contain", exact=True).click()
        expect(page.get_by_role("button", name="Close and sign")).to_be_visible()
        yield "nonconformance: contained, the close form", page
        if role == "admin":
            page.get_by_role("navigation", name="Views").get_by_role(
                "button", name="Webhooks").click()
            expect(page.get_by_role("heading", name="New subscription")).to_be_visible()
            yield "webhooks", page

        page.get_by_role("navigation", name="Views").get_by_role("button", name="SOPs").click()
        expect(page.get_by_role("heading", name="SOPs")).to_be_visible()
        expect(page.locator(".sop-card").first).to_be_visible()
        yield "SOPs", page
        page.get_by_role("button", name=f"Statistics of {sop['title']} v1").first.click()
        expect(page.locator("svg.chart-rate rect.bar-rate")).to_have_count(3)
        yield "SOP statistics", page
        page.get_by_text("The same figures as a table").click()
        yield "SOP statistics, as a table", page
        page.get_by_role("button", name=re.compile("^Control chart: ")).first.click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Control chart")
        expect(page.locator("dl.spc-facts")).to_be_visible()
        yield "SPC control chart", page
        page.get_by_text(re.compile("^Values that break a rule")).click()
        yield "SPC control chart, its table", page
        page.get_by_role("button", name="Statistics", exact=True).click()
        expect(page.locator("svg.chart-rate rect.bar-rate")).to_have_count(3)
        page.get_by_role("button", name="All SOPs").click()
        page.get_by_role("button", name=f"View {sop['title']}").first.click()
        expect(page.locator(".sop-outline")).to_be_visible()
        yield "SOP", page
        page.get_by_role("button", name="All SOPs").click()
        page.get_by_role("button", name="New SOP").click()
        expect(page.get_by_role("heading", name="New SOP")).to_be_visible()
        yield "SOP editor", page
        page.get_by_role("button", name="Save draft").click()
        expect(page.get_by_role("alert")).to_contain_text("is required")
        yield "SOP editor, fields missing", page
        page.get_by_role("button", name="Add task").click()
        page.get_by_role("group", name="Task 1", exact=True).get_by_role(
            "button", name="Add step to task 1").click()
        expect(page.get_by_role("button", name="Move up task 2")).to_be_visible()
        yield "SOP editor, two tasks", page
        page.get_by_role("button", name="All SOPs").click()
        expect(page.get_by_role("dialog")).to_contain_text("Leave without saving?")
        yield "dialog: leave without saving", page
        console.assert_clean(*NETWORK_CUT)
    finally:
        page.context.close()


WORKER_VIEWS = 16


@pytest.fixture(scope="module")
def worker_on_a_phone(stack: Stack, supervisor: str, browser: Browser) -> dict[str, Any]:
    """Each of the worker's views at 360 x 740: axe's findings, the controls too small or
    too close, and the text sizes."""
    seen = {}
    for view, page in worker_views(stack, supervisor, browser, PHONE):
        seen[view] = {"axe": axe(page), "targets": tap_target_problems(page),
                      "fonts": page.evaluate(FONT_SIZES_JS)}
    return seen


# ---- axe-core ------------------------------------------------------------------------------

def test_axe_finds_nothing_on_the_workers_views_on_a_phone(
        worker_on_a_phone: dict[str, Any]) -> None:
    assert len(worker_on_a_phone) == WORKER_VIEWS
    found = {view: seen["axe"] for view, seen in worker_on_a_phone.items() if seen["axe"]}
    assert found == {}, report(found)


def test_axe_finds_nothing_on_the_workers_views_on_a_desktop(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    found = {view: axe(page) for view, page in worker_views(stack, supervisor, browser, DESK)}
    assert len(found) == WORKER_VIEWS
    found = {view: v for view, v in found.items() if v}
    assert found == {}, report(found)


@pytest.mark.parametrize(("viewport", "role"), [(PHONE, "supervisor"), (DESK, "supervisor"),
                                                (DESK, "admin")],
                         ids=["phone-supervisor", "desktop-supervisor", "desktop-admin"])
def test_axe_finds_nothing_on_the_supervisors_and_admins_views(
        stack: Stack, supervisor: str, browser: Browser, viewport: dict[str, int],
        role: str) -> None:
    found = {view: axe(page)
             for view, page in supervisor_views(stack, supervisor, browser, viewport, role)}
    assert len(found) == 21 + (role == "admin")
    found = {view: v for view, v in found.items() if v}
    assert found == {}, report(found)


# ---- gloved hands and phone screens ----------------------------------------------------------

def test_every_control_on_the_workers_views_takes_a_gloved_finger(
        worker_on_a_phone: dict[str, Any]) -> None:
    """48 x 48 px at least, and 8 px or more from the next control, on a 360 px phone."""
    assert len(worker_on_a_phone) == WORKER_VIEWS
    found = {view: seen["targets"] for view, seen in worker_on_a_phone.items()
             if seen["targets"]}
    assert found == {}, report(found)


def test_text_on_the_workers_views_is_16_px_and_never_under_14(
        worker_on_a_phone: dict[str, Any]) -> None:
    assert len(worker_on_a_phone) == WORKER_VIEWS
    assert all(seen["fonts"]["body"] >= 16 for seen in worker_on_a_phone.values())
    under14 = {view: seen["fonts"]["under14"] for view, seen in worker_on_a_phone.items()
               if seen["fonts"]["under14"]}
    assert under14 == {}, report(under14)
    under16 = {view: seen["fonts"]["under16"] for view, seen in worker_on_a_phone.items()
               if seen["fonts"]["under16"]}
    assert under16 == {}, report(under16)


def test_the_statistics_charts_figures_are_14_px_on_a_phone(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    title = f"Chart text {uuid.uuid4().hex[:6]}"
    sop = confirmed_sop(stack, supervisor, title)
    worker = new_worker(stack)
    s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
    for body in ({"result": "passed"}, {"value": 0.9}, {"value": 0.2}, {"result": "passed"}):
        s = check(stack, worker, s, **body)
    page, console = open_page(browser, PHONE)
    sign_in(page, stack.console_link(supervisor))
    page.get_by_role("button", name="SOPs").click()
    page.get_by_role("button", name=f"Statistics of {title} v1").click()
    values = page.locator("svg.chart-time text.chart-value")
    expect(values).to_have_count(3)
    expect(values.nth(1)).to_contain_text("median")
    fonts = page.evaluate(FONT_SIZES_JS)
    assert fonts["under14"] == []
    sizes = values.evaluate_all("els => els.map(el => el.getBoundingClientRect().height)")
    assert min(sizes) >= 14
    console.assert_clean()
    page.context.close()


@pytest.mark.parametrize("role", ["worker", "supervisor", "admin"])
def test_the_top_bar_on_a_phone_names_who_is_signed_in_and_keeps_the_views_on_one_row(
        stack: Stack, role: str, browser: Browser) -> None:
    """On a shared phone the name says whose sign-in it is: it is whole. The views (three,
    four for an admin) are one row that scrolls sideways, not three rows of the screen."""
    token = stack.token(role)
    page, console = open_page(browser, PHONE)
    sign_in(page, stack.console_link(token))
    who = page.locator("#who")
    expect(who).to_contain_text(role.capitalize())
    assert who.evaluate("el => el.scrollWidth <= el.clientWidth")  # not cut short
    expect(page.get_by_role("button", name="Sign out")).to_be_in_viewport()
    views = page.locator("#nav button")
    tops = views.evaluate_all("els => els.map((el) => el.getBoundingClientRect().top)")
    assert len(set(tops)) <= 1, tops
    bar = page.locator("header.topbar").evaluate("el => el.getBoundingClientRect().height")
    assert bar <= (100 if role == "worker" else 150), bar
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    if role == "admin":  # the last view is reached by scrolling the row
        page.get_by_role("button", name="Webhooks").click()
        expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    console.assert_clean()
    page.context.close()


def test_the_steps_action_stays_on_the_screen_on_a_measurement_with_a_warning(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    """360 x 740, a measurement step that failed three times (the supervisor has been told)
    and has just failed again: Record check is on the screen, not under anything, wherever
    the worker is on the card, and the field being typed in is not under it."""
    sop = confirmed_sop(stack, supervisor, f"Reach {uuid.uuid4().hex[:6]}")
    worker = new_worker(stack)
    s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
    s = check(stack, worker, s, result="passed")
    for value in (0.9, 0.8, 0.7):
        s = check(stack, worker, s, value=value)
    assert s["needs_attention"] is True
    page, console = open_page(browser, PHONE)
    sign_in(page, stack.console_link(worker))
    card = page.locator(".step-card")
    expect(page.get_by_text("This step failed several times")).to_be_visible()
    value = card.get_by_label("Voltage at terminal A (V)")
    value.fill("0.6")
    record = card.get_by_role("button", name="Record check")
    record.click()
    expect(card.get_by_role("alert")).to_contain_text("Failed: 0.6 V is outside the allowed range")
    card.locator(".attempts summary").click()  # the four failed attempts, listed

    page.evaluate("window.scrollTo(0, 0)")
    assert wholly_on_screen(page, record)
    page.evaluate("document.querySelector('.step-title').scrollIntoView({ block: 'start' })")
    assert wholly_on_screen(page, record)
    value.focus()
    assert wholly_on_screen(page, value)
    assert wholly_on_screen(page, record)
    value.fill("0.3")
    record.click()  # the same button, where the worker's thumb is
    expect(card).to_contain_text("Step 3 of 3")
    console.assert_clean()
    page.context.close()


def test_one_tap_passes_a_confirm_step_and_undo_takes_it_back_before_it_is_sent(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    worker, page, console, card = started_on_a_phone(stack, supervisor, browser,
                                                     f"One tap {uuid.uuid4().hex[:6]}")
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url)
            if r.method == "POST" and r.url.endswith("/checks") else None)

    card.get_by_role("button", name="Passed").click()
    bar = card.locator(".step-bar")
    expect(bar).to_contain_text("Recorded: Passed")
    expect(card.get_by_role("button", name="Passed")).to_have_count(0)  # no second tap
    bar.get_by_role("button", name="Undo").click()
    expect(card.get_by_role("status").filter(has_text="Undone")).to_contain_text(
        '"Passed" was not recorded')
    expect(card.get_by_role("button", name="Passed")).to_be_enabled()
    page.wait_for_timeout(7000)  # longer than the undo time: still nothing goes
    assert sent == [] and outbox(page) == []
    assert stack.call(worker, "GET", "/sessions/current")["checks"] == []
    expect(card).to_contain_text("Step 1 of 3")

    card.get_by_label("Notes (optional)").fill("Flywheel stopped")
    card.get_by_role("button", name="Passed").click()  # the one tap
    expect(card).to_contain_text("Step 2 of 3", timeout=UNDO_WAIT)
    expect(card.get_by_role("status").filter(has_text="Passed: Stop the press")).to_be_visible()
    checks = stack.call(worker, "GET", "/sessions/current")["checks"]
    assert [(c["result"], c["notes"]) for c in checks] == [("passed", "Flywheel stopped")]
    assert len(sent) == 1
    console.assert_clean()
    page.context.close()


def test_ending_a_session_early_is_set_apart_from_pause_and_asks_first(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    worker, page, console, card = started_on_a_phone(stack, supervisor, browser,
                                                     f"Set apart {uuid.uuid4().hex[:6]}")
    pause = page.get_by_role("button", name="Pause")
    complete = page.get_by_role("button", name="Complete session now")
    cancel = page.get_by_role("button", name="Cancel session")
    pause_box, complete_box, cancel_box = (b.bounding_box() for b in (pause, complete, cancel))
    assert pause_box and complete_box and cancel_box
    pause_bottom = pause_box["y"] + pause_box["height"]
    assert complete_box["y"] - pause_bottom >= 24 and cancel_box["y"] - pause_bottom >= 24
    danger = "rgb(180, 35, 24)"
    for button in (complete, cancel):
        assert button.evaluate("el => getComputedStyle(el).color") == danger
    assert pause.evaluate("el => getComputedStyle(el).color") != danger

    complete.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Complete the session now?")
    expect(dialog).to_contain_text("3 steps have not been checked")
    dialog.get_by_role("button", name="Back").click()
    cancel.click()
    expect(dialog).to_contain_text("Cancel this session?")
    dialog.get_by_role("button", name="Back").click()
    expect(dialog).to_have_count(0)
    assert stack.call(worker, "GET", "/sessions/current")["status"] == "in_progress"

    complete.click()
    dialog.get_by_role("button", name="Complete session now").click()
    expect(page.get_by_role("heading", name="Session completed")).to_be_visible()
    console.assert_clean()
    page.context.close()


def test_sign_out_with_checks_waiting_asks_first_and_keeps_them(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    worker, page, console, card = started_on_a_phone(stack, supervisor, browser,
                                                     f"Sign out {uuid.uuid4().hex[:6]}")
    page.route("**/api/v1/**", lambda route: route.abort())
    tap_passed(card)
    pending = page.locator("#pending")
    expect(pending).to_contain_text("1 check waiting to be sent")

    page.get_by_role("button", name="Sign out").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Sign out with 1 check not sent?")
    expect(dialog).to_contain_text("1 check is still waiting to be sent")
    expect(dialog).to_contain_text("sent when you sign in here again")
    dialog.get_by_role("button", name="Stay signed in").click()
    expect(dialog).to_have_count(0)
    expect(page.locator("#who")).not_to_be_empty()
    expect(pending).to_contain_text("1 check waiting to be sent")

    page.get_by_role("button", name="Sign out").click()
    dialog.get_by_role("button", name="Sign out anyway").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    [kept] = outbox(page)
    assert kept["body"]["result"] == "passed"

    page.unroute_all(behavior="wait")
    sign_in(page, stack.console_link(worker))  # back, with the network: it goes now
    expect(card).to_contain_text("Step 2 of 3", timeout=15_000)
    expect(page.locator(".disagreements")).to_be_empty()  # nothing to differ from
    expect(pending).to_be_hidden()
    checks = stack.call(worker, "GET", "/sessions/current")["checks"]
    assert [c["id"] for c in checks] == [kept["body"]["check_id"]]
    # (the card may still show step 1 here: the page's first load and the check's delivery
    # race at sign-in; the outbox's start-up is not this test's business)
    page.reload()
    expect(card).to_contain_text("Step 2 of 3")
    console.assert_clean(*NETWORK_CUT)
    page.context.close()


# ---- what the pages say -----------------------------------------------------------------------

def test_the_editors_problems_leave_the_screen_once_the_fields_are_put_right(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    page, console = open_page(browser, DESK)
    sign_in(page, stack.console_link(supervisor))
    page.get_by_role("button", name="SOPs").click()
    page.get_by_role("button", name="New SOP").click()
    page.get_by_role("button", name="Save draft").click()
    problems = page.get_by_role("alert")
    for said in ("The SOP title is required", "Task 1: the title is required",
                 "Step 1.1: the title is required", "Step 1.1: what to check is required"):
        expect(problems).to_contain_text(said)

    page.get_by_label("SOP title").fill(f"Put right {uuid.uuid4().hex[:6]}")
    expect(problems).not_to_contain_text("The SOP title is required")
    expect(problems).to_contain_text("Task 1: the title is required")
    expect(page.get_by_label("SOP title")).not_to_have_attribute("aria-invalid", "true")
    page.get_by_label("Task title").fill("Isolate")
    step = page.get_by_role("group", name="Step 1.1")
    step.get_by_label("Step title").fill("Stop the press")
    expect(problems).to_contain_text("Step 1.1: what to check is required")
    step.get_by_label("What to check").fill("Press has stopped")
    expect(problems).to_have_count(0)  # nothing left to say
    expect(page.locator("[aria-invalid]")).to_have_count(0)

    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("status").filter(has_text="Saved as a draft")).to_be_visible()
    console.assert_clean()
    page.context.close()


def test_a_confirmed_sop_says_confirmed_once(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    title = f"Once {uuid.uuid4().hex[:6]}"
    confirmed_sop(stack, supervisor, title)
    page, console = open_page(browser, PHONE)
    sign_in(page, stack.console_link(supervisor))
    page.get_by_role("button", name="SOPs").click()
    page.get_by_role("button", name=f"View {title}").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(title)
    said = page.locator("main").inner_text()
    assert len(re.findall(r"\bconfirmed\b", said, re.I)) == 1, said
    expect(page.locator(".meta")).to_contain_text(re.compile(r"Confirmed since \d"))
    console.assert_clean()
    page.context.close()


def test_the_sign_in_page_tells_a_worker_what_to_do(browser: Browser, stack: Stack) -> None:
    page, console = open_page(browser, PHONE)
    page.goto(f"{stack.api}/app/")
    main = page.locator("main")
    expect(main).to_contain_text("Open the sign-in link from your supervisor")
    expect(main).to_contain_text("company's sign-in page")
    expect(main).to_contain_text("Ask your supervisor for a new one")
    expect(page.get_by_text("worksession dev")).to_be_hidden()  # folded away for a worker
    page.get_by_text("For administrators").click()
    expect(page.get_by_text("worksession dev")).to_be_visible()
    console.assert_clean()
    page.context.close()
