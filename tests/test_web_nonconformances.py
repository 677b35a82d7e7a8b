"""Nonconformances and webhooks in the web console (contract v1.2, "Nonconformances" and
"Webhooks"; issue #28), in headless Chromium against `worksession dev`
(tests/test_web_console.py's harness and fixtures).

- A failed check on a `hold` step stops the worker's card in plain words ("Stopped: waiting
  for a supervisor to contain NC-…"), Passed and Failed disabled. A supervisor opens the NC
  from the Nonconformances list, contains it on its page, and the worker goes on: the next
  check is accepted. The supervisor then closes it with a disposition (a signature).
- An admin adds a webhook (the secret shown once) for a receiver the test runs, sees its
  deliveries arrive, redelivers one, and deletes the subscription.

With WORKSESSION_SCREENSHOTS=1 it rewrites docs/screenshot-nc-held.png,
docs/screenshot-nc-page.png and docs/screenshot-webhooks.png.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests import test_web_console as web
from tests.test_web_accessibility import axe, report
from tests.test_web_console import (
    DESK,
    DOCS,
    PHONE,
    UNDO_WAIT,
    Stack,
    new_worker,
    open_page,
    sign_in,
)

# the module-scoped fixtures of the console's tests: one `worksession dev` for this module
stack = web.stack
supervisor = web.supervisor
browser = web.browser

HOLD_REREAD = 25_000  # ms: the held card reads the session again every 10 s (worker.js)


def hold_sop(title: str) -> dict[str, Any]:
    def step(name: str, **check: Any) -> dict[str, Any]:
        return {"title": name, "check": {"kind": "confirm", "prompt": f"{name}: in order", **check}}
    return {"title": title, "tasks": [{"title": "Guards", "steps": [
        step("Light curtain stops the press", on_fail="hold", severity="critical"),
        step("Guard door interlock")]}]}


def test_a_held_step_stops_the_worker_until_a_supervisor_contains_its_nc(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    title = f"Guard check {uuid.uuid4().hex[:6]}"
    sop = stack.call(supervisor, "POST", "/sops", hold_sop(title))
    stack.call(supervisor, "POST", f"/sops/{sop['id']}/confirm")
    worker = new_worker(stack)
    phone, phone_console = open_page(browser, PHONE)
    sign_in(phone, stack.console_link(worker))
    phone.get_by_role("button", name=f"Start {title}").click()
    card = phone.locator(".step-card")
    expect(card).to_contain_text("Step 1 of 2")

    card.get_by_role("button", name="Failed").click()
    stopped = card.locator(".feedback")
    expect(stopped).to_contain_text(
        "Stopped: waiting for a supervisor to contain NC-", timeout=UNDO_WAIT)
    session = stack.call(worker, "GET", "/sessions?status=in_progress")["items"][0]
    [nc] = stack.call(supervisor, "GET", f"/nonconformances?session_id={session['id']}")["items"]
    assert nc["hold"] is True and nc["status"] == "open"
    expect(stopped).to_contain_text(f"contain {nc['number']}.")
    expect(card.get_by_role("button", name="Passed")).to_be_disabled()
    expect(card.get_by_role("button", name="Failed")).to_be_disabled()
    assert axe(phone) == [], report({"held card": axe(phone)})
    phone.screenshot(path=str(DOCS / "screenshot-nc-held.png"))

    # a fresh sign-in: closing is a signature, which wants one of the last 5 minutes
    desk, desk_console = open_page(browser, DESK)
    sign_in(desk, stack.console_link(stack.token("supervisor")))
    desk.get_by_role("navigation", name="Views").get_by_role(
        "button", name="Nonconformances").click()
    row = desk.locator("table.ncs tbody tr").filter(has_text=nc["number"])
    expect(row).to_contain_text("Open")
    expect(row).to_contain_text("Critical")
    expect(row).to_contain_text("Light curtain stops the press")
    expect(desk.locator("table.ncs tbody tr").first).to_contain_text("Open")  # open ones first
    row.get_by_role("button", name=f"Open {nc['number']}").click()
    expect(desk.get_by_role("heading", level=1)).to_contain_text(nc["number"])
    expect(desk.locator(".timeline li")).to_contain_text("Opened")
    desk.get_by_role("button", name="Contain", exact=True).click()  # empty: said, nothing sent
    expect(desk.get_by_role("alert")).to_contain_text("Say what was done")
    desk.get_by_label("Containment").fill("Press locked out; parts since 10:00 quarantined")
    desk.get_by_role("button", name="Contain", exact=True).click()
    expect(desk.get_by_role("status")).to_contain_text("Contained: the worker can go on")
    expect(desk.locator(".timeline li")).to_have_count(2)
    expect(desk.locator(".timeline")).to_contain_text("Press locked out")

    # the worker goes on: the card is read again while held, and the next check is accepted
    expect(card.get_by_role("button", name="Passed")).to_be_enabled(timeout=HOLD_REREAD)
    expect(stopped).not_to_contain_text("Stopped")
    card.get_by_role("button", name="Passed").click()
    expect(card).to_contain_text("Step 2 of 2", timeout=UNDO_WAIT)

    # closing: a disposition, a corrective action, the closer's signature
    desk.get_by_role("button", name="Close and sign").click()
    expect(desk.get_by_role("alert")).to_contain_text("Choose a disposition")
    desk.get_by_label("Disposition").select_option("rework")
    desk.get_by_label("Corrective action").fill("Light curtain realigned; daily test added")
    desk.get_by_label("Statement").fill("Checked on the press myself")
    desk.get_by_role("button", name="Close and sign").click()
    expect(desk.get_by_role("status")).to_contain_text("Closed and signed")
    expect(desk.locator(".meta")).to_contain_text("Closed")
    expect(desk.locator("dl.manifest")).to_contain_text("Approved")
    expect(desk.locator(".facts")).to_contain_text("Rework")
    assert stack.call(supervisor, "GET", f"/nonconformances/{nc['id']}")["status"] == "closed"
    assert axe(desk) == [], report({"nc page": axe(desk)})
    desk.screenshot(path=str(DOCS / "screenshot-nc-page.png"), full_page=True)
    phone_console.assert_clean()
    desk_console.assert_clean()


class Receiver(BaseHTTPRequestHandler):
    got: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Receiver.got.append({"id": self.headers.get("webhook-id"), "body": json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks"
    finally:
        server.shutdown()


def test_an_admin_adds_a_webhook_sees_its_deliveries_and_redelivers_one(
        stack: Stack, supervisor: str, browser: Browser, receiver: str) -> None:
    page, console = open_page(browser, DESK)
    sign_in(page, stack.console_link(stack.token("admin")))
    page.get_by_role("navigation", name="Views").get_by_role("button", name="Webhooks").click()
    expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
    page.get_by_label("Address").fill(receiver)
    page.get_by_label("Description (optional)").fill("Quality system")
    page.get_by_role("button", name="Add subscription").click()
    expect(page.get_by_role("alert")).to_contain_text("Choose at least one event")
    page.get_by_label("session.started").check()
    page.get_by_role("button", name="Add subscription").click()
    secret = page.get_by_role("textbox", name="Secret")
    expect(page.locator(".secret-card")).to_contain_text("shown only this once")
    assert secret.input_value().startswith("whsec_")

    sop = web.confirmed_sop(stack, supervisor, f"Hooked {uuid.uuid4().hex[:6]}")
    stack.call(new_worker(stack), "POST", "/sessions", {"sop_id": sop["id"]})
    card = page.locator("section.webhook").filter(has_text=receiver)
    rows = card.locator("table.deliveries tbody tr")
    for _ in range(20):  # delivered within seconds; the page reads them on Refresh
        card.get_by_role("button", name="Refresh deliveries").click()
        if rows.count() and "Delivered" in rows.first.inner_text():
            break
        page.wait_for_timeout(1000)
    expect(rows.first).to_contain_text("session.started")
    expect(rows.first).to_contain_text("Delivered")
    first_id = Receiver.got[-1]["id"]
    assert Receiver.got[-1]["body"]["type"] == "session.started"

    rows.first.get_by_role("button", name="Redeliver").click()
    expect(card.get_by_role("status")).to_contain_text("sent again")
    for _ in range(20):
        if sum(1 for g in Receiver.got if g["id"] == first_id) >= 2:
            break
        page.wait_for_timeout(500)
    assert sum(1 for g in Receiver.got if g["id"] == first_id) >= 2  # the same webhook-id
    assert axe(page) == [], report({"webhooks": axe(page)})
    page.screenshot(path=str(DOCS / "screenshot-webhooks.png"), full_page=True)

    card.get_by_role("button", name="Delete").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status").first).to_contain_text("Deleted")
    expect(page.locator("section.webhook").filter(has_text=receiver)).to_have_count(0)
    console.assert_clean()
