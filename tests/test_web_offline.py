"""The worker's page carries on with what it kept when the network or the service is gone
(#25, item 2), in headless Chromium against `worksession dev` (the harness, fixtures and
helpers of tests/test_web_console.py).

- Reopened with no network, it lands on the running step from its kept copy (not on a
  service worker's copy of a read made before the start), a check made then moves the card
  on as the service will, and the check is delivered once when the network returns, across
  reloads.
- With the API process stopped (it accepts connections and never answers), a reload shows
  the running step and "the service is not answering" within seconds, and the check made
  meanwhile is delivered once it answers again.
- When the service has the session elsewhere than the phone had it (here paused from another
  device while the phone was offline), the worker is told, and the service's state is shown.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.test_web_console import (  # noqa: F401  (fixtures: stack, supervisor, browser)
    DOCS,
    Stack,
    browser,
    outbox,
    stack,
    started_on_a_phone,
    supervisor,
    tap_passed,
)

OUTAGE_BOUND_S = 8.0  # reload with the API silent -> the step and the plain message shown


def under_service_worker(page: Page) -> None:
    """The page is controlled by the console's service worker (it claims the page once
    active): what it keeps is what a reopened page gets."""
    # (evaluated once, awaiting: Playwright's polling evals, which the console's CSP refuses)
    assert page.evaluate("""() => navigator.serviceWorker.ready.then(() =>
        !!navigator.serviceWorker.controller || new Promise(resolve => navigator.serviceWorker
            .addEventListener('controllerchange', () => resolve(true), { once: true })))""")


def network(page: Page, up: bool) -> None:
    """The phone's network off or on (Chromium's emulation). Not airtight: now and then a
    check POST that the page saw fail (net::ERR_INTERNET_DISCONNECTED, the check kept in its
    outbox) had reached the service, which recorded it (its log: the change written, no
    access line, the client gone), with a route aborting the API's requests too. What the
    service has while the phone is "offline" is therefore not asserted: that case is a check
    sent whose answer was lost, sent again and recorded once (its check_id), as asserted."""
    page.context.set_offline(not up)  # on: the `online` event, the page sends at once


def record_passed(card: Locator) -> None:
    tap_passed(card)


def record_value(card: Locator, typed: str) -> None:
    card.get_by_label("Voltage at terminal A (V)").fill(typed)
    card.get_by_role("button", name="Record check").click()


def kept(page: Page) -> dict[str, Any]:
    """What the page keeps of the worker's session (web/js/keep.js)."""
    [copy] = page.evaluate("""() => Object.keys(localStorage)
        .filter(k => k.startsWith('worksession.keep.'))
        .map(k => JSON.parse(localStorage.getItem(k)))""")
    return copy


def check_posts(page: Page) -> list[str]:
    """The check_id of every check the page sends from now on, in order."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(json.loads(r.post_data)["check_id"])
            if r.method == "POST" and r.url.endswith("/checks") else None)
    return sent


@contextmanager
def api_silent(dev: Stack) -> Iterator[None]:
    """The API process stopped (SIGSTOP): the kernel still accepts its connections, nothing
    answers, neither the API nor the console's files it serves. Continued on the way out."""
    pids = dev.children()["api"]
    assert pids, "no API process under worksession dev"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_reopened_offline_the_page_carries_on_the_running_session(
        stack: Stack, supervisor: str, browser: Browser) -> None:  # noqa: F811
    title = "Stop the press"
    worker, page, console, card = started_on_a_phone(
        stack, supervisor, browser, f"Reopened offline {uuid.uuid4().hex[:4]}")
    under_service_worker(page)
    pending, offline = page.locator("#pending"), page.locator("#offline")
    expect(card.get_by_role("heading", name=title)).to_be_visible()
    record_passed(card)  # online
    expect(card).to_contain_text("Step 2 of 3")
    expect(pending).to_be_hidden()
    [first] = stack.call(worker, "GET", "/sessions/current")["checks"]

    # the basement: reopened with no network, on the step it was at
    network(page, up=False)
    page.reload()
    expect(card.get_by_role("heading", name="Measure residual voltage")).to_be_visible()
    expect(card).to_contain_text("Step 2 of 3")
    expect(page.get_by_role("heading", name="Start a session")).to_have_count(0)
    expect(offline).to_contain_text("No connection: this is what this device last saw")

    # a check made offline moves the card on, as the service will
    record_value(card, "0,3")
    expect(card).to_contain_text("Step 3 of 3")
    expect(card.get_by_role("heading", name="Apply your padlock")).to_be_visible()
    expect(card).to_contain_text("saved on this phone")
    expect(page.get_by_role("progressbar")).to_have_attribute("aria-label", "2 of 3 steps done")
    expect(pending).to_contain_text("1 check waiting to be sent")
    [waiting] = outbox(page)
    assert waiting["body"]["value"] == 0.3
    page.screenshot(path=str(DOCS / "screenshot-worker-offline.png"))

    # reopened again before the network returns: the same card, the same check waiting
    page.reload()
    expect(card.get_by_role("heading", name="Apply your padlock")).to_be_visible()
    expect(pending).to_contain_text("1 check waiting to be sent")
    assert [w["body"]["check_id"] for w in outbox(page)] == [waiting["body"]["check_id"]]

    sent = check_posts(page)
    network(page, up=True)  # sent now, once
    expect(pending).to_be_hidden(timeout=15_000)
    expect(offline).to_be_hidden()
    session = stack.call(worker, "GET", "/sessions/current")
    assert [c["id"] for c in session["checks"]] == [first["id"], waiting["body"]["check_id"]]
    assert [(c["result"], c["value"]) for c in session["checks"]] == [
        ("passed", None), ("passed", 0.3)]
    assert sent == [waiting["body"]["check_id"]]
    # the page shows (and keeps) the service's answer, nothing of its own any more
    expect(card).to_contain_text("Step 3 of 3")
    copy = kept(page)
    assert copy["session"]["current_step_id"] == session["current_step_id"]
    assert copy["session"]["checks"] == session["checks"]
    assert outbox(page) == []
    console.assert_clean("net::ERR_INTERNET_DISCONNECTED", "net::ERR_FAILED")


def test_during_an_api_outage_the_page_reopens_on_its_step_within_seconds(
        stack: Stack, supervisor: str, browser: Browser) -> None:  # noqa: F811
    worker, page, console, card = started_on_a_phone(
        stack, supervisor, browser, f"Outage {uuid.uuid4().hex[:4]}")
    under_service_worker(page)
    pending, offline = page.locator("#pending"), page.locator("#offline")
    record_passed(card)
    expect(card).to_contain_text("Step 2 of 3")
    expect(pending).to_be_hidden()
    [first] = stack.call(worker, "GET", "/sessions/current")["checks"]

    with api_silent(stack):
        began = time.monotonic()
        page.reload(wait_until="commit")
        step = card.get_by_role("heading", name="Measure residual voltage")
        expect(step).to_be_visible(timeout=OUTAGE_BOUND_S * 1000)
        expect(offline).to_contain_text("The service is not answering",
                                        timeout=OUTAGE_BOUND_S * 1000)
        took = time.monotonic() - began
        assert took < OUTAGE_BOUND_S, f"{took:.1f} s to show the step and say so"
        expect(offline).to_contain_text("this is what this device last saw")

        record_value(card, "0.3")
        expect(card.get_by_role("heading", name="Apply your padlock")).to_be_visible()
        expect(pending).to_contain_text("1 check waiting to be sent")
        [waiting] = outbox(page)
        page.screenshot(path=str(DOCS / "screenshot-worker-outage.png"))

    # the API answers again: the check is delivered (once), the page says nothing more
    expect(pending).to_be_hidden(timeout=45_000)
    expect(offline).to_be_hidden(timeout=15_000)
    session = stack.call(worker, "GET", "/sessions/current")
    assert [c["id"] for c in session["checks"]] == [first["id"], waiting["body"]["check_id"]]
    assert session["current_step"]["title"] == "Apply your padlock"
    expect(card).to_contain_text("Step 3 of 3")
    console.assert_clean("net::ERR_FAILED", "net::ERR_INTERNET_DISCONNECTED", "net::ERR_")


@pytest.mark.parametrize("reopened", [False, True], ids=["page-open", "page-reopened"])
def test_the_worker_is_told_when_the_service_had_the_session_elsewhere(
        stack: Stack, supervisor: str, browser: Browser, reopened: bool) -> None:  # noqa: F811
    worker, page, console, card = started_on_a_phone(
        stack, supervisor, browser, f"Elsewhere {uuid.uuid4().hex[:4]}")
    under_service_worker(page)
    pending = page.locator("#pending")
    session_id = stack.call(worker, "GET", "/sessions/current")["id"]

    network(page, up=False)
    # meanwhile, on another device, the worker pauses the session; the phone cannot know
    stack.call(worker, "POST", f"/sessions/{session_id}/pause")
    record_passed(card)
    expect(card).to_contain_text("Step 2 of 3")  # the phone moved on
    expect(pending).to_contain_text("1 check waiting to be sent")
    if reopened:
        page.reload()
        expect(card).to_contain_text("Step 2 of 3")

    network(page, up=True)
    told = page.get_by_role("alert").filter(has_text="your phone had moved on")
    expect(told).to_contain_text(
        "The service has this session paused at step 1 (Stop the press); your phone had moved "
        "on to step 2 (Measure residual voltage).", timeout=15_000)
    expect(told).to_contain_text("Your check on step 1 (Stop the press) was not recorded.")
    # the service's state wins
    expect(card).to_contain_text("Step 1 of 3")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    expect(pending).to_be_hidden()
    session = stack.call(worker, "GET", f"/sessions/{session_id}")
    assert session["status"] == "paused" and session["checks"] == []
    assert kept(page)["session"]["status"] == "paused"
    console.assert_clean("net::ERR_INTERNET_DISCONNECTED", "net::ERR_FAILED", "status of 409")
