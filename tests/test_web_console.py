"""The web console at /app, in a real browser: headless Chromium (Debian's `chromium` package)
driven by Playwright, against `worksession dev` run as a subprocess on free ports with a
temporary data directory. Nothing here downloads a browser.

With WORKSESSION_SCREENSHOTS=1 it also rewrites docs/screenshot-worker-step.png and
docs/screenshot-supervisor-timeline.png (otherwise the screenshots go to a temp folder, so a
test run leaves the checkout as it was)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from faults.harness import DevProcess

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - reported by the `browser` fixture as a failure
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]

BIN = Path(sys.executable).parent
DOCS = Path(__file__).resolve().parent.parent / "docs" if os.environ.get(
    "WORKSESSION_SCREENSHOTS") else Path(tempfile.mkdtemp(prefix="ws-screens-"))
PHONE = {"width": 360, "height": 780}
DESK = {"width": 1280, "height": 900}
UI_WAIT = 20_000  # ms: a session call goes through a Temporal workflow update


class Stack(DevProcess):
    """`worksession dev` as a person runs it, plus an HTTP client for setting up data."""

    def link(self, role: str) -> str:
        """The sign-in link that the banner prints for the dev worker or supervisor."""
        m = re.search(rf"^\s+{role}:\s+(http://\S+/app/#token=\S+)$", self.banner, re.M)
        assert m, f"no {role} sign-in link in the banner:\n{self.banner}"
        return m.group(1)

    def token(self, role: str, sub: uuid.UUID | None = None) -> str:
        args = [str(BIN / "worksession"), "token", "--role", role, "--data-dir",
                str(self.data_dir)]
        if sub:
            args += ["--sub", str(sub)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.strip()

    def console_link(self, token: str) -> str:
        return f"{self.api}/app/#token={token}"

    def call(self, token: str, method: str, path: str, body: Any = None) -> Any:
        r = httpx.request(method, f"{self.api}/api/v1{path}", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {token}"})
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None


def three_step_sop(title: str) -> dict[str, Any]:
    return {"title": title, "description": "Isolate all energy sources before maintenance",
            "tasks": [
                {"title": "Isolate", "steps": [
                    {"title": "Stop the press", "instructions": "Press the red stop button",
                     "check": {"kind": "confirm", "prompt": "Press has stopped"}},
                    {"title": "Measure residual voltage",
                     "instructions": "Use the meter on terminal A; wait 30 s after the stop",
                     "check": {"kind": "measurement", "prompt": "Voltage at terminal A",
                               "unit": "V", "min": 0, "max": 0.5}}]},
                {"title": "Lock out", "steps": [
                    {"title": "Apply your padlock", "instructions": "Padlock and tag on the "
                     "main disconnect",
                     "check": {"kind": "confirm", "prompt": "Padlock and tag in place"}}]}]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("web-console"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def supervisor(stack: Stack) -> str:
    return stack.token("supervisor")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.fail("Playwright for Python is not installed: `pip install -e '.[test]'` "
                    "(or `make test`, which installs it)", pytrace=False)
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
                    "package (`apt-get install -y chromium`; `make test` installs it). "
                    "Playwright's own browser download is not used.", pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Console:
    """Everything the page reports as an error: console.error, uncaught exceptions, and the
    browser's own 'Failed to load resource' lines (allowed only where a test provokes them)."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def assert_clean(self, *allowed: str) -> None:
        unexpected = [e for e in self.errors if not any(a in e for a in allowed)]
        assert unexpected == [], unexpected


def open_page(browser: Browser, viewport: dict[str, int],
              locale: str = "en-GB") -> tuple[Page, Console]:
    context = browser.new_context(viewport=viewport, locale=locale, timezone_id="UTC")
    context.set_default_timeout(UI_WAIT)
    page = context.new_page()
    return page, Console(page)


def assert_phone_friendly(page: Page) -> None:
    """Nothing wider than the screen, and every form control has a name a reader announces."""
    assert page.evaluate("document.documentElement.scrollWidth") <= page.viewport_size["width"]
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(el => !el.labels?.length && !el.getAttribute('aria-label'))
        .map(el => el.outerHTML)""")
    assert unnamed == []


def sign_in(page: Page, link: str) -> None:
    page.goto(link)
    # the token left the address bar and lives in localStorage (an installed app opened
    # again with no network still has it)
    expect(page.locator("#who")).not_to_be_empty()
    assert "token=" not in page.url
    assert page.evaluate("localStorage.getItem('worksession.token')")


def new_worker(stack: Stack) -> str:
    return stack.token("worker", uuid.uuid4())


def confirmed_sop(stack: Stack, supervisor: str, title: str) -> dict[str, Any]:
    sop = stack.call(supervisor, "POST", "/sops", three_step_sop(title))
    return stack.call(supervisor, "POST", f"/sops/{sop['id']}/confirm")


def started_on_a_phone(stack: Stack, supervisor: str, browser: Browser, title: str,
                       locale: str = "en-GB") -> tuple[str, Page, Console, Any]:
    """A new worker on a phone, signed in, with a session of a new three-step SOP at step
    1: the worker's token, the page, its console and the step card."""
    confirmed_sop(stack, supervisor, title)
    worker = new_worker(stack)
    page, console = open_page(browser, PHONE, locale)
    sign_in(page, stack.console_link(worker))
    page.get_by_role("button", name=f"Start {title}").click()
    card = page.locator(".step-card")
    expect(card).to_contain_text("Step 1 of 3")
    return worker, page, console, card


UNDO_WAIT = 15_000  # ms: a tapped check is held UNDO_SECONDS (worker.js) for an Undo, then sent


def tap_passed(card: Any) -> None:
    """Pass the step card's confirm step: one tap on Passed; the check leaves the undo bar
    (and goes to the outbox, then the service) once its few seconds for an Undo are over."""
    card.get_by_role("button", name="Passed").click()
    expect(card.locator(".undo")).to_be_visible()
    expect(card.locator(".undo")).to_be_hidden(timeout=UNDO_WAIT)


def outbox(page: Page) -> list[dict[str, Any]]:
    return page.evaluate("""() => Object.keys(localStorage)
        .filter(k => k.startsWith('worksession.outbox.'))
        .flatMap(k => JSON.parse(localStorage.getItem(k)))""")


def test_console_is_served_at_app(stack: Stack) -> None:
    for path in ("/app", "/app/", "/app/index.html"):
        r = httpx.get(stack.api + path, timeout=10)
        assert r.status_code == 200 and "<title>Work Sessions</title>" in r.text, path
    js = httpx.get(f"{stack.api}/app/js/app.js", timeout=10)
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert f"{stack.api}/app/#token=" in stack.link("worker")


def test_worker_completes_a_three_step_sop_with_a_failed_then_passed_measurement(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    title = "Lockout/Tagout - Press 4"
    confirmed_sop(stack, supervisor, title)
    page, console = open_page(browser, PHONE)
    sign_in(page, stack.link("worker"))

    page.get_by_role("button", name=f"Start {title}").click()
    card = page.locator(".step-card")
    expect(card).to_contain_text("Step 1 of 3")
    expect(card.get_by_role("heading", name="Stop the press")).to_be_visible()
    expect(card).to_contain_text("Press the red stop button")
    card.get_by_label("Notes (optional)").fill("Red button pressed, flywheel stopped")
    tap_passed(card)

    expect(card).to_contain_text("Step 2 of 3")
    value = card.get_by_label("Voltage at terminal A (V)")
    expect(card).to_contain_text("Allowed range: 0 – 0.5 V")
    value.fill("0.9")
    card.get_by_role("button", name="Record check").click()
    expect(card.get_by_role("alert")).to_contain_text("Failed: 0.9 V is outside the allowed "
                                                      "range (0 – 0.5 V)")
    expect(card).to_contain_text("Step 2 of 3")
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-label", "1 of 3 steps done")
    assert_phone_friendly(page)
    DOCS.mkdir(exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # the card from its top, Record check stuck below
    page.screenshot(path=str(DOCS / "screenshot-worker-step.png"))

    card.get_by_label("Voltage at terminal A (V)").fill("0.3")
    card.get_by_role("button", name="Record check").click()
    expect(card).to_contain_text("Step 3 of 3")
    expect(card).to_contain_text("Task: Lock out")
    tap_passed(card)
    expect(page.get_by_role("heading", name="Session completed")).to_be_visible()
    history = page.locator(".history")
    expect(history.locator("li").first).to_contain_text(title)
    expect(history.locator("li").first).to_contain_text("Completed")

    worker_token = re.search(r"#token=(\S+)", stack.link("worker")).group(1)
    sessions = stack.call(worker_token, "GET", "/sessions?limit=1")["items"]
    session = stack.call(worker_token, "GET", f"/sessions/{sessions[0]['id']}")
    assert session["status"] == "completed" and session["sop"]["title"] == title
    assert [(c["result"], c["value"]) for c in session["checks"]] == [
        ("passed", None), ("failed", 0.9), ("passed", 0.3), ("passed", None)]
    assert session["checks"][0]["notes"] == "Red button pressed, flywheel stopped"
    console.assert_clean()


def test_a_second_start_is_refused_with_an_explanation(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    title = f"Guard check {uuid.uuid4().hex[:4]}"
    sop = confirmed_sop(stack, supervisor, title)
    worker = new_worker(stack)
    page, console = open_page(browser, PHONE)
    sign_in(page, stack.console_link(worker))
    start = page.get_by_role("button", name=f"Start {title}")
    expect(start).to_be_visible()

    # meanwhile the same worker starts a session on another device
    other = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
    start.click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("You already have a session in progress: continue it")
    alert.get_by_role("button", name="Continue it").click()
    card = page.locator(".step-card")
    expect(card).to_contain_text("Step 1 of 3")
    expect(page.get_by_role("heading", level=1)).to_contain_text(title)
    assert stack.call(worker, "GET", "/sessions")["total"] == 1
    assert stack.call(worker, "GET", "/sessions/current")["id"] == other["id"]
    console.assert_clean("status of 409")


def test_a_check_the_service_sheds_is_sent_again_and_the_worker_is_told_it_is_busy(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    """The service sheds load with 503 /problems/overloaded and Retry-After (its side is
    tests/test_front_door.py); here the first two sends of a check are answered so, as the
    service answers them, and the console waits, says so, and sends the same check again."""
    worker, page, console, card = started_on_a_phone(stack, supervisor, browser,
                                                     f"Busy service {uuid.uuid4().hex[:4]}")

    sent: list[str] = []

    def shed_twice(route: Any) -> None:
        sent.append(json.loads(route.request.post_data)["check_id"])
        if len(sent) > 2:
            route.continue_()
            return
        route.fulfill(status=503, headers={"Retry-After": "1"},
                      content_type="application/problem+json", body=json.dumps({
                          "type": "/problems/overloaded", "title": "Service overloaded",
                          "status": 503, "detail": "the service is at capacity"}))
    page.route("**/api/v1/sessions/*/checks", shed_twice)
    tap_passed(card)
    busy = page.locator("#busy")
    expect(busy).to_contain_text("The service is busy, retrying in")
    expect(card).to_contain_text("Step 2 of 3")
    expect(busy).to_be_hidden()
    assert len(sent) == 3 and len(set(sent)) == 1, sent
    session = stack.call(worker, "GET", "/sessions/current")
    assert [c["id"] for c in session["checks"]] == [sent[0]]
    console.assert_clean("status of 503")


def test_a_check_made_while_the_api_is_down_is_delivered_once_when_it_returns(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    worker, page, console, card = started_on_a_phone(stack, supervisor, browser,
                                                     f"Flaky network {uuid.uuid4().hex[:4]}")
    pending = page.locator("#pending")

    # 1. The API cannot be reached at all: the check waits on the phone, then goes by itself.
    page.route("**/api/v1/**", lambda route: route.abort())
    tap_passed(card)
    expect(pending).to_contain_text("1 check waiting to be sent")
    expect(card).to_contain_text("saved on this phone")
    # the card moves on as the service will decide (web/js/keep.js); the check still waits
    expect(card).to_contain_text("Step 2 of 3")
    [waiting] = outbox(page)
    assert waiting["body"]["result"] == "passed"
    first_id = waiting["body"]["check_id"]
    page.wait_for_timeout(1500)  # an attempt or two on the timer: still nothing gets through
    expect(pending).to_contain_text("1 check waiting to be sent")
    page.unroute_all(behavior="wait")
    expect(card).to_contain_text("Step 2 of 3", timeout=15_000)  # the retry timer sent it
    expect(pending).to_be_hidden()
    assert outbox(page) == []

    # 2. The check reaches the service but its answer is lost: it is sent again on the
    #    `online` event and recorded once (the API's check_id idempotency).
    sent: list[str] = []

    def answer_lost(route: Any) -> None:
        if route.request.method == "POST" and route.request.url.endswith("/checks"):
            route.fetch()  # delivered to the service...
        route.abort()  # ...but the page never hears back

    page.route("**/api/v1/**", answer_lost)
    page.on("request", lambda r: sent.append(json.loads(r.post_data)["check_id"])
            if r.method == "POST" and r.url.endswith("/checks") else None)
    card.get_by_label("Voltage at terminal A (V)").fill("0.2")
    card.get_by_role("button", name="Record check").click()
    expect(pending).to_contain_text("1 check waiting to be sent")
    [waiting] = outbox(page)
    second_id = waiting["body"]["check_id"]
    page.unroute_all(behavior="wait")
    page.context.set_offline(True)
    page.context.set_offline(False)  # the `online` event: send now
    expect(card).to_contain_text("Step 3 of 3", timeout=15_000)
    expect(pending).to_be_hidden()
    assert sent.count(second_id) >= 2  # sent, answer lost, sent again

    session = stack.call(worker, "GET", "/sessions/current")
    assert [c["id"] for c in session["checks"]] == [first_id, second_id]
    assert session["checks"][1]["value"] == 0.2
    console.assert_clean("net::ERR_FAILED", "net::ERR_INTERNET_DISCONNECTED")


def test_what_the_worker_is_typing_outlives_a_refresh_of_the_card(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    """The card is drawn again when a refresh finds the service not answering (here: the
    network comes back, the page reads the session again, and the service does not answer).
    It emptied the value and the note being typed, and took the focus away: a worker then
    tapped Record on an empty field (seen in CI, under load)."""
    worker, page, console, card = started_on_a_phone(stack, supervisor, browser,
                                                     f"Typing {uuid.uuid4().hex[:4]}")
    tap_passed(card)
    expect(card).to_contain_text("Step 2 of 3")
    value = card.get_by_label("Voltage at terminal A (V)")
    card.get_by_label("Notes (optional)").fill("meter no. 4")
    value.fill("0,2")
    page.route("**/api/v1/**", lambda route: route.abort())
    page.context.set_offline(True)
    page.context.set_offline(False)  # the `online` event: the page reads it all again
    expect(page.locator("#offline")).to_contain_text("The service is not answering")
    page.unroute_all(behavior="wait")
    expect(card.locator(".value-reading")).to_contain_text("Will record 0.2")
    expect(value).to_have_value("0,2")
    expect(value).to_be_focused()
    expect(card.get_by_label("Notes (optional)")).to_have_value("meter no. 4")
    page.keyboard.type("5")  # the caret where it was: at the end
    expect(value).to_have_value("0,25")
    card.get_by_role("button", name="Record check").click()
    expect(card).to_contain_text("Step 3 of 3", timeout=15_000)
    session = stack.call(worker, "GET", "/sessions/current")
    assert (session["checks"][1]["value"], session["checks"][1]["notes"]) == (0.25,
                                                                            "meter no. 4")
    console.assert_clean("net::ERR_INTERNET_DISCONNECTED", "net::ERR_FAILED")
    page.context.close()


def worker_session_with_history(stack: Stack, supervisor: str) -> tuple[dict[str, Any], str]:
    """A completed session with a failed measurement, done through the API."""
    sop = confirmed_sop(stack, supervisor, "Lockout/Tagout - Press 7")
    worker = new_worker(stack)
    s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
    for body in ({"result": "passed", "notes": "Red button pressed"},
                 {"value": 0.9, "notes": "Capacitor still charged: waited 2 more minutes"},
                 {"value": 0.2}, {"result": "passed", "notes": "Tag no. 117"}):
        s = stack.call(worker, "POST", f"/sessions/{s['id']}/checks",
                       {"step_id": s["current_step_id"], **body})
    assert s["status"] == "completed"
    return s, worker


def test_a_supervisor_approves_a_session_and_then_sees_it_locked(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    session, _ = worker_session_with_history(stack, supervisor)
    page, console = open_page(browser, DESK)
    # fresh: approving is a signature, which wants a recent sign-in (the banner's is hours old)
    fresh = stack.token("supervisor")  # the banner's link, with the Temporal UI's address
    sign_in(page, re.sub(r"token=[^&]+", f"token={fresh}", stack.link("supervisor")))
    expect(page.get_by_role("heading", name="Work sessions")).to_be_visible()
    page.get_by_label("Status").select_option("completed")
    page.get_by_label("SOP", exact=True).select_option(f"sop:{session['sop']['id']}")
    row = page.locator("table.sessions tbody tr")
    expect(row).to_have_count(1)
    row.get_by_role("button", name=f"Open {session['sop']['title']}").click()

    expect(page.get_by_role("heading", level=1)).to_contain_text(session["sop"]["title"])
    timeline = page.locator(".timeline")
    expect(timeline.locator("li")).to_have_count(6)  # started, 4 checks, completed
    expect(timeline).to_contain_text("Isolate › Measure residual voltage")
    expect(timeline).to_contain_text("0.9 V")
    expect(timeline).to_contain_text("Capacitor still charged")
    temporal = page.get_by_role("link", name=re.compile("Open in Temporal UI"))
    assert temporal.get_attribute("href") == (
        f"http://127.0.0.1:{stack.ports['ui']}/namespaces/default/workflows/"
        f"{session['workflow_id']}")

    page.get_by_role("button", name="Approve and lock").click()
    page.get_by_role("dialog").get_by_role("button", name="Approve and lock").click()
    expect(page.get_by_role("status").filter(has_text="Approved: the session is now locked")
           ).to_be_visible()
    expect(page.locator(".badges")).to_contain_text("Locked")
    expect(page.get_by_text("approved and locked: it can no longer be changed")).to_be_visible()
    expect(page.get_by_role("button", name="Approve and lock")).to_have_count(0)
    expect(page.get_by_role("button", name="Reopen")).to_have_count(0)
    expect(timeline).to_contain_text("Approved and locked")
    expect(page.locator("table.audit")).to_contain_text("approve")
    page.locator(".timeline").scroll_into_view_if_needed()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(DOCS / "screenshot-supervisor-timeline.png"), full_page=True)

    page.get_by_role("button", name="All sessions").click()
    expect(page.locator("table.sessions tbody tr").first).to_contain_text("Locked")
    assert stack.call(supervisor, "GET", f"/sessions/{session['id']}")["locked"] is True
    console.assert_clean()


def test_a_supervisor_builds_and_confirms_an_sop_in_the_editor(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    title = f"Replace hydraulic hose {uuid.uuid4().hex[:4]}"
    page, console = open_page(browser, DESK)
    sign_in(page, stack.console_link(supervisor))
    page.get_by_role("navigation", name="Views").get_by_role("button", name="SOPs").click()
    page.get_by_role("button", name="New SOP").click()

    page.get_by_label("SOP title").fill(title)
    page.get_by_label("Description").fill("Hose change on press 4")
    task1 = page.get_by_role("group", name="Task 1", exact=True)
    task1.get_by_label("Task title").fill("Depressurise")
    step = page.get_by_role("group", name="Step 1.1")
    step.get_by_label("Step title").fill("Open the relief valve")
    step.get_by_label("Instructions").fill("Turn the red valve a full turn left")
    # saving with a step missing its check prompt names the field
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("alert")).to_contain_text("Step 1.1: what to check is required")
    expect(step.get_by_label("What to check")).to_have_attribute("aria-invalid", "true")
    step.get_by_label("What to check").fill("Relief valve open")

    task1.get_by_role("button", name="Add step to task 1").click()
    step = page.get_by_role("group", name="Step 1.2")
    step.get_by_label("Step title").fill("Read the pressure gauge")
    step.get_by_label("Check", exact=True).select_option("measurement")
    step.get_by_label("What to check").fill("Line pressure")
    step.get_by_label("Unit").fill("bar")
    step.get_by_label("Minimum").fill("0")
    step.get_by_label("Maximum").fill("0.2")
    step.get_by_label("Evidence").select_option("required_on_fail")

    page.get_by_role("button", name="Add task").click()
    task2 = page.get_by_role("group", name="Task 2", exact=True)
    task2.get_by_label("Task title").fill("Replace")
    step = page.get_by_role("group", name="Step 2.1")
    step.get_by_label("Step title").fill("Fit the new hose")
    step.get_by_label("What to check").fill("Hose fitted and torqued")
    # a leaking hose must be seen to: the session stops until a supervisor contains it
    step.get_by_label("When the check fails").select_option("hold")
    step.get_by_label("Severity of its nonconformance").select_option("critical")

    assert_phone_friendly(page)
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("status").filter(has_text="Saved as a draft")).to_be_visible()
    [draft] = [s for s in stack.call(supervisor, "GET", "/sops?status=draft&limit=100")["items"]
               if s["title"] == title]
    assert [(s["check"]["on_fail"], s["check"]["severity"])
            for t in draft["tasks"] for s in t["steps"]] == [
        ("retry", "major"), ("retry", "major"), ("hold", "critical")]

    page.get_by_role("button", name="Confirm SOP").click()
    page.get_by_role("dialog").get_by_role("button", name="Confirm SOP").click()
    expect(page.get_by_role("status").filter(has_text="Done: workers can now start")
           ).to_be_visible()
    expect(page.get_by_role("heading", level=1)).to_contain_text(title)
    expect(page.locator(".sop-outline")).to_contain_text("Measure: Line pressure "
                                                         "(allowed 0 – 0.2 bar)")

    sop = stack.call(supervisor, "GET", f"/sops/{draft['id']}")
    assert sop["status"] == "confirmed" and sop["description"] == "Hose change on press 4"
    assert [[s["title"] for s in t["steps"]] for t in sop["tasks"]] == [
        ["Open the relief valve", "Read the pressure gauge"], ["Fit the new hose"]]
    assert sop["tasks"][0]["steps"][0]["instructions"] == "Turn the red valve a full turn left"
    check = sop["tasks"][0]["steps"][1]["check"]
    assert {k: check[k] for k in ("kind", "prompt", "unit", "min", "max")} == {
        "kind": "measurement", "prompt": "Line pressure", "unit": "bar", "min": 0, "max": 0.2}
    assert check["evidence"] == "required_on_fail"
    assert sop["tasks"][0]["steps"][0]["check"]["evidence"] == "optional"
    assert sop["tasks"][1]["steps"][0]["check"]["kind"] == "confirm"
    console.assert_clean()


def sessions_of(stack: Stack, sop: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """`n` completed sessions of `sop`, each by a new worker, oldest first."""
    done = []
    for _ in range(n):
        worker = new_worker(stack)
        s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
        done.append(stack.call(worker, "POST", f"/sessions/{s['id']}/complete"))
    return done


def needing_attention(stack: Stack, sop: dict[str, Any]) -> dict[str, Any]:
    """A session whose first step failed three times in a row (`worksession dev` escalates
    after three)."""
    worker = new_worker(stack)
    s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
    for _ in range(3):
        s = stack.call(worker, "POST", f"/sessions/{s['id']}/checks",
                       {"step_id": s["current_step_id"], "result": "failed"})
    assert s["needs_attention"] is True
    return s


def test_needs_attention_finds_a_session_beyond_the_first_page_and_the_list_keeps_up(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    sop = confirmed_sop(stack, supervisor, f"Attention {uuid.uuid4().hex[:6]}")
    stuck = needing_attention(stack, sop)  # the oldest: not on the first page
    sessions_of(stack, sop, 22)
    page, console = open_page(browser, DESK)
    sign_in(page, stack.link("supervisor"))
    page.get_by_label("SOP", exact=True).select_option(f"family:{sop['family_id']}")
    rows = page.locator("table.sessions tbody tr")
    expect(rows).to_have_count(20)
    expect(page.locator(".pager")).to_contain_text("1–20 of 23")
    expect(rows.filter(has_text="Needs attention")).to_have_count(0)

    page.get_by_label("Needs attention only").check()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Needs attention")
    expect(page.locator(".pager")).to_contain_text("1–1 of 1")
    assert f"sop_family_id={sop['family_id']}" in page.url and "needs_attention=true" in page.url

    page.reload()  # the address carries the filters: a bookmark or a link shows the same
    expect(page.get_by_label("Needs attention only")).to_be_checked()
    expect(rows).to_have_count(1)
    rows.first.get_by_role("button").click()
    expect(page.locator("dl.facts")).to_contain_text(stuck["id"])
    expect(page.locator("table.step-times")).to_contain_text("current step")
    page.get_by_role("button", name="All sessions").click()
    expect(rows).to_have_count(1)

    needing_attention(stack, sop)  # a second one, while the supervisor watches
    expect(rows).to_have_count(2, timeout=15_000)  # the list refreshes itself
    expect(page.get_by_label("Needs attention only")).to_be_checked()
    console.assert_clean()


def test_sop_statistics_chart_shows_each_steps_time_and_first_try_rate(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    title = f"Statistics {uuid.uuid4().hex[:6]}"
    sop = confirmed_sop(stack, supervisor, title)
    for first_voltage in (0.9, 0.2, 0.1):  # the measurement fails first once in three
        worker = new_worker(stack)
        s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
        voltages = [first_voltage, 0.2]
        while s["status"] == "in_progress":
            step = s["current_step"]
            body = {"value": voltages.pop(0)} if step["check"]["kind"] == "measurement" \
                else {"result": "passed"}
            s = stack.call(worker, "POST", f"/sessions/{s['id']}/checks",
                           {"step_id": step["id"], **body})
        assert s["status"] == "completed"
    stats = stack.call(supervisor, "GET", f"/sops/{sop['id']}/stats")
    assert [x["first_try_pass_rate"] for x in stats["steps"]] == [1.0, 0.6667, 1.0]

    page, console = open_page(browser, PHONE)
    sign_in(page, stack.link("supervisor"))
    page.get_by_role("button", name="SOPs").click()
    page.get_by_role("button", name=f"Statistics of {title} v1").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Statistics: {title}")
    expect(page.locator("dl.facts")).to_contain_text("Completed3")
    rate = page.locator("svg.chart-rate")
    expect(rate).to_have_attribute("role", "img")
    bars = rate.locator("rect.bar-rate")
    expect(bars).to_have_count(3)
    widths = [float(bars.nth(i).get_attribute("width") or 0) for i in range(3)]
    assert widths[0] == widths[2] > 0 and abs(widths[1] / widths[0] - 0.6667) < 0.001
    time_rows = page.locator("svg.chart-time g.chart-row")
    expect(time_rows).to_have_count(3)
    for i, step in enumerate(stats["steps"]):
        row = time_rows.nth(i)
        assert row.get_attribute("data-step") == step["step_id"]
        assert float(row.locator("rect.bar-median").get_attribute("data-value") or -1) == \
            step["median_seconds"]
        assert float(row.locator("rect.bar-p90").get_attribute("data-value") or -1) == \
            step["p90_seconds"]
    # the text alternative: what a screen reader reads, and the same figures as a table
    assert "Step 2, Measure residual voltage: 67 %" in (rate.locator("desc").text_content() or "")
    page.get_by_text("The same figures as a table").click()
    expect(page.locator("details.stats-table tbody tr").nth(1)).to_contain_text("67 %")
    assert_phone_friendly(page)
    page.screenshot(path=str(DOCS / "screenshot-sop-statistics.png"), full_page=True)
    console.assert_clean()


def test_the_workers_page_opens_with_no_network_and_delivers_its_check_once(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    manifest = httpx.get(f"{stack.api}/app/manifest.webmanifest", timeout=10)
    assert manifest.headers["content-type"].startswith("application/manifest+json")
    assert manifest.json()["start_url"] == "/app/" and manifest.json()["display"] == "standalone"

    worker, page, console, card = started_on_a_phone(stack, supervisor, browser,
                                                     f"Basement {uuid.uuid4().hex[:4]}")
    assert page.evaluate("navigator.serviceWorker.ready.then(r => !!r.active)")
    page.reload()  # now under the service worker: what the page reads is kept
    expect(card).to_contain_text("Step 1 of 3")
    assert page.evaluate("!!navigator.serviceWorker.controller")

    page.context.set_offline(True)
    page.reload()  # opened again in the basement
    expect(card).to_contain_text("Step 1 of 3")
    expect(card).to_contain_text("Stop the press")
    offline = page.locator("#offline")
    expect(offline).to_contain_text("No connection: this is what this device last saw")
    tap_passed(card)
    pending = page.locator("#pending")
    expect(pending).to_contain_text("1 check waiting to be sent")
    expect(pending).to_contain_text("kept on this device since")
    expect(pending).to_contain_text("when the connection returns")
    assert_phone_friendly(page)
    [waiting] = outbox(page)

    page.context.set_offline(False)  # the `online` event: sent now, once
    expect(card).to_contain_text("Step 2 of 3", timeout=15_000)
    expect(pending).to_be_hidden()
    expect(offline).to_be_hidden()
    session = stack.call(worker, "GET", "/sessions/current")
    assert [c["id"] for c in session["checks"]] == [waiting["body"]["check_id"]]
    console.assert_clean("net::ERR_INTERNET_DISCONNECTED", "net::ERR_FAILED")


def test_sign_out_forgets_what_the_device_kept_of_the_worker(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    worker, page, console, card = started_on_a_phone(stack, supervisor, browser,
                                                     f"Shared phone {uuid.uuid4().hex[:4]}")
    page.evaluate("navigator.serviceWorker.ready")
    page.reload()
    expect(card).to_contain_text("Step 1 of 3")
    kept = "Object.keys(localStorage).filter(k => k.startsWith('worksession.keep.'))"
    assert page.evaluate(kept)  # the worker's session, kept by the page (web/js/keep.js)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate(kept) == []
    # and the service worker keeps no answer of the API, for anyone
    assert not any(k.startswith("worksession-api-") for k in page.evaluate("caches.keys()"))
    assert page.evaluate("localStorage.getItem('worksession.token')") is None
    console.assert_clean()


@pytest.mark.parametrize("locale", ["en-GB", "de-DE"])
def test_a_measurement_is_recorded_as_typed_with_a_decimal_comma_or_point(
        stack: Stack, supervisor: str, browser: Browser, locale: str) -> None:
    """`0,3` is 0.3 V, not 3 V (a number field read the comma as nothing), in a locale that
    writes a decimal point and in one that writes a comma; what cannot be read one way only
    is refused with a sentence and nothing is sent."""
    for typed in ("0,3", "0.3 V"):
        worker, page, console, card = started_on_a_phone(
            stack, supervisor, browser, f"Decimal {locale} {typed} {uuid.uuid4().hex[:6]}",
            locale)
        tap_passed(card)
        value = card.get_by_label("Voltage at terminal A (V)")
        expect(card).to_contain_text("Step 2 of 3")
        for unreadable in ("1.234,5", "0.3 bar"):
            value.fill(unreadable)
            card.get_by_role("button", name="Record check").click()
            expect(card.get_by_role("alert")).to_contain_text(f'"{unreadable.split()[-1]}')
            expect(card).to_contain_text("Step 2 of 3")
        value.fill(typed)
        expect(card.locator(".value-reading")).to_have_text("Will record 0.3 V")
        card.get_by_role("button", name="Record check").click()
        expect(card).to_contain_text("Step 3 of 3")
        session = stack.call(worker, "GET", "/sessions/current")
        assert [c["value"] for c in session["checks"]] == [None, 0.3]
        assert [c["result"] for c in session["checks"]] == ["passed", "passed"]
        console.assert_clean()
        page.context.close()
