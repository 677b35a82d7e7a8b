"""The supervisor's console names people (contract v1.2, "People") and tells a session's whole
story: names in the session list, the worker filter searching by name, a timeline with every
state change (pause, resume, escalation, completion) and who made it, date filters whose "to"
day is included everywhere, `/` leading to the console, and a token from the company's
identity provider (roles in `groups`) signing in to the page.

Real Chromium against `worksession dev` (tests/test_web_console.py's fixtures)."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests import test_web_console as web
from tests.test_oidc import AUDIENCE, ROLE_MAP, Provider
from tests.test_web_console import (
    BIN,
    DESK,
    DOCS,
    PHONE,
    Stack,
    confirmed_sop,
    open_page,
    sign_in,
)

# the module-scoped fixtures of the console's tests: one `worksession dev` for this module
stack = web.stack
supervisor = web.supervisor
browser = web.browser


def named_worker(stack: Stack, name: str) -> str:
    out = subprocess.run(
        [str(BIN / "worksession"), "token", "--role", "worker", "--sub", str(uuid.uuid4()),
         "--name", name, "--data-dir", str(stack.data_dir)],
        capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.strip()


def eventful_session(stack: Stack, supervisor: str, worker: str) -> dict[str, Any]:
    """Three failed checks on the first step (escalated: `worksession dev` escalates after
    three), a pause and a resume, a pass, then completed by hand before the last step."""
    sop = confirmed_sop(stack, supervisor, f"Story {uuid.uuid4().hex[:6]}")
    s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
    for _ in range(3):
        s = stack.call(worker, "POST", f"/sessions/{s['id']}/checks",
                       {"step_id": s["current_step_id"], "result": "failed"})
    assert s["needs_attention"] is True
    stack.call(worker, "POST", f"/sessions/{s['id']}/pause")
    stack.call(worker, "POST", f"/sessions/{s['id']}/resume")
    s = stack.call(worker, "POST", f"/sessions/{s['id']}/checks",
                   {"step_id": s["current_step_id"], "result": "passed"})
    s = stack.call(worker, "POST", f"/sessions/{s['id']}/complete")
    assert s["status"] == "completed"
    return s


def test_supervisor_finds_a_worker_by_name_and_reads_the_whole_story_with_names(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    tag = uuid.uuid4().hex[:6]
    name = f"Ana Ruiz {tag}"
    session = eventful_session(stack, supervisor, named_worker(stack, name))
    other = named_worker(stack, f"Ana Other {tag}")  # a second match for "Ana"
    stack.call(other, "POST", "/sessions", {  # her first request puts her in the directory
        "sop_id": confirmed_sop(stack, supervisor, f"Other {tag}")["id"]})

    page, console = open_page(browser, DESK)
    sign_in(page, stack.link("supervisor"))
    worker = page.get_by_label("Worker", exact=True)
    worker.fill(f"Ana {tag}")  # no name holds this text
    worker.press("Enter")
    expect(page.locator(".filters")).to_contain_text(f'No worker\'s name holds "Ana {tag}"')
    worker.fill(f"ruiz {tag}")  # part of the name, any case: exactly one worker
    worker.press("Enter")
    rows = page.locator("table.sessions tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(name)
    worker.fill("")  # everyone's sessions, by name, for the picture
    worker.press("Enter")
    expect(rows.nth(1)).to_be_visible()
    page.screenshot(path=str(DOCS / "screenshot-supervisor-list.png"))
    worker.fill(f"ruiz {tag}")
    worker.press("Enter")
    expect(rows).to_have_count(1)
    expect(worker).to_have_value(f"{name} ({session['worker_id'][:8]})")
    assert f"worker_id={session['worker_id']}" in page.url
    page.reload()  # the address keeps the worker; the field shows their name again
    expect(page.get_by_label("Worker", exact=True)).to_have_value(
        f"{name} ({session['worker_id'][:8]})")
    expect(rows).to_have_count(1)

    rows.first.get_by_role("button").click()
    expect(page.locator("dl.facts")).to_contain_text(name)
    events = page.locator(".timeline li .event-title")
    expect(events.first).to_contain_text(f"Session started by {name}")
    titles = events.all_inner_texts()
    story = [t for t in titles if "Isolate" not in t]  # the state changes, in order
    assert story == [f"Session started by {name}", "Escalated: needs attention by the service",
                     f"Paused by {name}", f"Resumed by {name}",
                     f"Completed before the last step by {name}"], titles
    assert sum(f"Stop the press, by {name}" in t for t in titles) == 4  # 3 failed, 1 passed
    expect(page.locator(".timeline")).to_contain_text(
        "3 failed checks in a row on Isolate › Stop the press")
    expect(page.locator("table.audit")).to_contain_text(f"worker {name}")
    console.assert_clean()


def test_a_to_date_includes_that_day_in_the_list_and_in_the_statistics(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    sop = confirmed_sop(stack, supervisor, f"Today {uuid.uuid4().hex[:6]}")
    worker = named_worker(stack, "Dana Today")
    s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
    stack.call(worker, "POST", f"/sessions/{s['id']}/complete")
    today = datetime.now(UTC).date().isoformat()  # the page runs in UTC (open_page)

    page, console = open_page(browser, DESK)
    sign_in(page, stack.link("supervisor"))
    page.get_by_label("SOP", exact=True).select_option(f"sop:{sop['id']}")
    page.get_by_label("Started to").fill(today)
    rows = page.locator("table.sessions tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("Dana Today")
    assert f"to={today}" in page.url

    page.get_by_role("button", name="SOPs").click()
    page.get_by_role("button", name=f"Statistics of {sop['title']} v1").click()
    expect(page.locator("dl.facts")).to_contain_text("Sessions started1")
    page.get_by_label("Started to").fill(today)
    page.get_by_label("Started to").dispatch_event("change")
    expect(page.locator("dl.facts")).to_contain_text("Sessions started1")
    console.assert_clean()


def test_the_root_address_leads_to_the_console(stack: Stack, browser: Browser) -> None:
    r = httpx.get(f"{stack.api}/", timeout=10)
    assert r.status_code in (302, 307, 308) and r.headers["location"].endswith("/app/")
    page, console = open_page(browser, PHONE)
    page.goto(f"{stack.api}/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.url.endswith("/app/")
    console.assert_clean()


@pytest.fixture(scope="module")
def provider_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Provider]]:
    """`worksession dev` whose API also takes a stand-in identity provider's tokens, roles in
    `groups` mapped through a role map (tests/test_oidc.py's provider)."""
    provider = Provider()
    settings = {"WORKSESSION_OIDC_ISSUER": provider.issuer, "WORKSESSION_JWT_AUDIENCE": AUDIENCE,
                "WORKSESSION_ROLE_CLAIM": "groups", "WORKSESSION_ROLE_MAP": json.dumps(ROLE_MAP)}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    s = Stack(tmp_path_factory.mktemp("web-provider"))
    try:
        s.start()
        yield s, provider
    finally:
        s.stop()
        provider.server.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_token_from_the_companys_provider_signs_in_with_the_role_the_api_gives_it(
        provider_stack: tuple[Stack, Provider], browser: Browser) -> None:
    """No `role` claim: the groups claim and the API's role map make this person a worker,
    and the page asks the API who they are instead of reading the token itself."""
    dev, provider = provider_stack
    token = provider.token(sub="auth0|kim-floor", groups=["floor-staff", "everyone"],
                           name="Kim Floor")
    page, console = open_page(browser, PHONE)
    page.goto(dev.console_link(token))
    expect(page.locator("#who")).to_contain_text("Kim Floor")
    expect(page.get_by_role("heading", name="Start a session")).to_be_visible()

    lead = provider.token(sub="auth0|lee-lead", groups=["shift-leads"],
                          preferred_username="lee.lead")
    page, console = open_page(browser, DESK)
    page.goto(dev.console_link(lead))
    expect(page.locator("#who")).to_contain_text("lee.lead")
    expect(page.get_by_role("heading", name="Work sessions")).to_be_visible()
    console.assert_clean()
