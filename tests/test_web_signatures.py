"""Console sign-in through a real OpenID Connect provider, and electronic signatures in the
console (CONTRACT.md v1.2, "Sign-in to the web console" and "Electronic signatures").

The provider is the certified `oidc-provider` package from npm (tests/oidc_provider/, installed
by `make oidc-provider` from its lock file), run by this test on http://127.0.0.1: a public
client with PKCE, its own login form, RS256 keys, JWT access tokens for the API's audience
carrying `auth_time`. The API is `worksession dev` (tests/test_web_console.py's Stack) with
that provider configured and WORKSESSION_SIGNATURE_MAX_AGE of 3 s. Real Chromium.

A worker signs in through the provider's login form, works a session and signs "I performed
this"; a supervisor signs in, waits past the signature's 3 s, approves with a statement, is
sent through the provider's login form again (max_age=0), comes back, and the approval is
recorded once with their name, its manifest on the timeline. With WORKSESSION_SCREENSHOTS=1
the pictures go to docs/."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from faults.harness import free_port
from tests import test_web_console as web
from tests.test_web_accessibility import axe, report
from tests.test_web_console import DESK, DOCS, PHONE, Stack, open_page, tap_passed

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # pragma: no cover - the `browser` fixture reports it
    pass

browser = web.browser

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
CLIENT_ID = "worksession-console"
AUDIENCE = "https://worksession.test/api"
PROVIDER_NAME = "Plant SSO"
SIGNATURE_MAX_AGE = 3  # seconds: a sign-in older than this cannot sign
ACCESS_TTL = 40  # seconds: the provider's access tokens, renewed halfway by the console
ACCOUNTS = {"kim": {"name": "Kim Floor", "role": "worker"},
            "dana": {"name": "Dana Lead", "role": "supervisor"}}


class OidcProvider:
    """tests/oidc_provider/server.js as a process of its own, on a free loopback port."""

    def __init__(self, root: Path) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is missing: the sign-in test runs a real OpenID Connect provider "
                        "on Node.js (`apt-get install nodejs npm`)", pytrace=False)
        if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
            pytest.fail(f"{PROVIDER_DIR}/node_modules is missing: run `make oidc-provider` "
                        "(npm ci from the committed package-lock.json; `make test` does it)",
                        pytrace=False)
        self.node = node
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.log = root / "oidc-provider.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, redirect_uri: str) -> None:
        env = {**os.environ, "PORT": str(self.port), "CLIENT_ID": CLIENT_ID,
               "REDIRECT_URI": redirect_uri, "AUDIENCE": AUDIENCE,
               "ACCOUNTS": json.dumps(ACCOUNTS), "ACCESS_TTL": str(ACCESS_TTL)}
        self.proc = subprocess.Popen([self.node, "server.js"], cwd=PROVIDER_DIR, env=env,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if f"listening on {self.issuer}" in self.log.read_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"the OpenID Connect provider did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, OidcProvider]]:
    """`worksession dev` whose console signs in through the provider, and the provider."""
    root = tmp_path_factory.mktemp("web-signatures")
    provider = OidcProvider(root)
    settings = {"WORKSESSION_OIDC_ISSUER": provider.issuer,
                "WORKSESSION_OIDC_CLIENT_ID": CLIENT_ID,
                "WORKSESSION_OIDC_PROVIDER_NAME": PROVIDER_NAME,
                "WORKSESSION_JWT_AUDIENCE": AUDIENCE,
                "WORKSESSION_SIGNATURE_MAX_AGE": str(SIGNATURE_MAX_AGE)}
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    stack = Stack(root)
    try:
        stack.start()  # the API reads the provider's keys at the first token, not before
        provider.start(f"{stack.api}/app/")
        yield stack, provider
    finally:
        stack.stop()
        provider.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def two_step_sop(stack: Stack, supervisor: str, title: str) -> dict[str, Any]:
    step = {"instructions": "As the card says", "check": {"kind": "confirm", "prompt": "Done"}}
    sop = stack.call(supervisor, "POST", "/sops", {"title": title, "tasks": [{
        "title": "Isolate", "steps": [{**step, "title": "Stop the press"},
                                      {**step, "title": "Apply your padlock"}]}]})
    return stack.call(supervisor, "POST", f"/sops/{sop['id']}/confirm")


def on_this_machine(browser: Browser, viewport: dict[str, int]) -> tuple[Page, web.Console]:
    """A page whose requests stay on this machine: the provider's own login page asks for a
    web font from the internet, answered here with nothing."""
    page, console = open_page(browser, viewport)
    page.context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"),
                       lambda route: route.fulfill(status=200, content_type="text/css", body=""))
    return page, console


def provider_login(page: Page, login: str, screenshot: str | None = None) -> None:
    """The provider's own login form (oidc-provider's), filled as a person would."""
    expect(page.locator("input[name=login]")).to_be_visible()
    assert page.url.startswith("http://127.0.0.1:") and "/app/" not in page.url
    page.locator("input[name=login]").fill(login)
    page.locator("input[name=password]").fill("correct horse battery staple")
    if screenshot:
        page.screenshot(path=str(DOCS / screenshot))
    page.get_by_role("button", name="Sign-in").click()


def sign_in_through_provider(page: Page, stack: Stack, login: str,
                             screenshot: str | None = None) -> None:
    page.goto(f"{stack.api}/app/")
    button = page.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}")
    expect(button).to_be_visible()
    if screenshot:
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / screenshot))
        assert axe(page) == [], report({"sign-in with the provider": axe(page)})
    button.click()
    provider_login(page, login)
    expect(page.locator("#who")).to_contain_text(ACCOUNTS[login]["name"])
    assert "code=" not in page.url and "state=" not in page.url
    # the provider's tokens live for this tab only: nothing in localStorage
    assert page.evaluate("localStorage.getItem('worksession.token')") is None
    tokens = page.evaluate("JSON.parse(sessionStorage.getItem('worksession.oidc.tokens'))")
    assert tokens["access_token"] and tokens["refresh_token"]


def audit(stack: Stack, token: str, session_id: str) -> list[dict[str, Any]]:
    return stack.call(token, "GET", f"/audit?session_id={session_id}&limit=100")["items"]


def test_a_worker_and_a_supervisor_sign_in_through_the_provider_and_sign_with_a_fresh_login(
        signing: tuple[Stack, OidcProvider], browser: Browser) -> None:
    stack, provider = signing
    boss = stack.token("supervisor")  # for setting up and reading back through the API
    title = f"Lockout {uuid.uuid4().hex[:6]}"
    two_step_sop(stack, boss, title)
    config = httpx.get(f"{stack.api}/app/config.json", timeout=10)
    assert config.json() == {"oidc": {"issuer": provider.issuer, "client_id": CLIENT_ID,
                                      "scope": "openid profile offline_access",
                                      "provider_name": PROVIDER_NAME}}
    assert f"connect-src 'self' {provider.issuer};" in config.headers["content-security-policy"]

    # -- the worker: the provider's login form, a session worked, "I performed this" ----------
    page, console = on_this_machine(browser, PHONE)
    sign_in_through_provider(page, stack, "kim", screenshot="screenshot-signin-provider.png")
    page.get_by_role("button", name=f"Start {title}").click()
    card = page.locator(".step-card")
    expect(card).to_contain_text("Step 1 of 2")
    tap_passed(card)
    expect(card).to_contain_text("Step 2 of 2")
    tap_passed(card)
    expect(page.get_by_role("heading", name="Session completed")).to_be_visible()
    page.get_by_role("button", name="I performed this").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Statement").fill("Padlock 117 on the main disconnect")
    assert axe(page) == [], report({"dialog: I performed this": axe(page)})
    dialog.get_by_role("button", name="Sign").click()
    # the worker's sign-in is older than 3 s: through the provider again, then signed
    provider_login(page, "kim")
    closed = page.locator(".closed-card")
    expect(closed.locator(".manifest")).to_contain_text("Kim Floor")
    expect(closed.locator(".manifest")).to_contain_text("Performed")
    expect(closed.locator(".manifest")).to_contain_text("“Padlock 117 on the main disconnect”")
    expect(page.get_by_role("button", name="I performed this")).to_have_count(0)
    closed.scroll_into_view_if_needed()
    page.screenshot(path=str(DOCS / "screenshot-worker-signed.png"))
    # the one refusal: the signature's first attempt, 401 reauthentication-required
    assert sum("status of 401" in e for e in console.errors) == 1, console.errors
    console.assert_clean("status of 401")

    [summary] = [s for s in stack.call(boss, "GET", "/sessions?status=completed&limit=100")[
        "items"] if s["sop"]["title"] == title]
    session = stack.call(boss, "GET", f"/sessions/{summary['id']}")
    assert session["worker_name"] == "Kim Floor"
    assert [(g["meaning"], g["signer_name"]) for g in session["signatures"]] == [
        ("performed", "Kim Floor")]

    # -- the supervisor: signed in, waits past the signature's 3 s, approves ------------------
    page, console = on_this_machine(browser, DESK)
    sign_in_through_provider(page, stack, "dana")
    expect(page.get_by_role("heading", name="Work sessions")).to_be_visible()
    page.get_by_label("SOP", exact=True).select_option(f"sop:{session['sop']['id']}")
    row = page.locator("table.sessions tbody tr")
    expect(row).to_have_count(1)
    row.get_by_role("button", name=f"Open {title}").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(title)
    page.wait_for_timeout((SIGNATURE_MAX_AGE + 1) * 1000)
    page.get_by_role("button", name="Approve and lock").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Statement").fill("Record checked against the tag log")
    dialog.get_by_role("button", name="Approve and lock").click()
    # sent through the provider with max_age=0: its login form again, whatever it remembers
    expect(page.locator("input[name=login]")).to_be_visible()
    assert "max_age=0" in page.url or "/interaction/" in page.url
    provider_login(page, "dana", screenshot="screenshot-signin-again.png")
    # back: the approval is finished without asking again
    expect(page.get_by_role("status").filter(has_text="Approved: the session is now locked")
           ).to_be_visible()
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.locator(".badges")).to_contain_text("Locked")
    timeline = page.locator(".timeline")
    approved = timeline.locator("li", has_text="Signed: Approved by Dana Lead")
    expect(approved).to_have_count(1)
    expect(approved.locator(".manifest")).to_contain_text("Dana Lead (supervisor)")
    expect(approved.locator(".manifest")).to_contain_text("UTC")  # the time, with its zone
    expect(approved.locator(".manifest")).to_contain_text("“Record checked against the tag log”")
    expect(timeline.locator("li", has_text="Signed: Performed by Kim Floor")).to_have_count(1)
    assert axe(page) == [], report({"session with signatures": axe(page)})
    approved.scroll_into_view_if_needed()
    page.screenshot(path=str(DOCS / "screenshot-signature-manifest.png"), full_page=True)

    # recorded once, with the supervisor's name, bound to the record
    session = stack.call(boss, "GET", f"/sessions/{session['id']}")
    assert session["locked"] is True
    approvals = [g for g in session["signatures"] if g["meaning"] == "approved"]
    assert len(approvals) == 1, session["signatures"]
    [g] = approvals
    assert (g["signer_name"], g["signer_role"], g["statement"]) == (
        "Dana Lead", "supervisor", "Record checked against the tag log")
    assert session["approved_by"] == g["signer_id"]
    entries = audit(stack, boss, session["id"])
    signed = [e for e in entries if e["action"] == "signed" and e["outcome"] == "accepted"]
    assert [e["detail"]["meaning"] for e in signed] == ["performed", "approved"]
    assert signed[1]["detail"]["manifest"].startswith("Dana Lead, ")
    assert [e["outcome"] for e in entries if e["action"] == "session_approve"] == ["accepted"]

    # sign-out ends the provider's session too (its end_session_endpoint), back at sign-in
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Yes, sign me out").click()
    expect(page.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('worksession.oidc.tokens')") is None
    page.get_by_role("button", name=f"Sign in with {PROVIDER_NAME}").click()
    expect(page.locator("input[name=login]")).to_be_visible()  # no session left there
    assert sum("status of 401" in e for e in console.errors) == 1, console.errors
    console.assert_clean("status of 401")


def test_a_supervisor_verifies_a_step_and_a_stale_sign_in_link_is_told_to_sign_in_again(
        signing: tuple[Stack, OidcProvider], browser: Browser) -> None:
    """Signed in by a `worksession dev` link (no trip to the provider possible): an old
    sign-in gets a plain sentence and nothing is recorded; a fresh link verifies the step."""
    stack, _ = signing
    boss = stack.token("supervisor")
    sop = stack.call(boss, "POST", "/sops", {"title": f"Verify {uuid.uuid4().hex[:6]}", "tasks": [
        {"title": "Isolate", "steps": [{"title": "Apply your padlock", "check": {
            "kind": "confirm", "prompt": "Padlock on", "verify": True}}]}]})
    stack.call(boss, "POST", f"/sops/{sop['id']}/confirm")
    worker = stack.token("worker", uuid.uuid4())
    s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
    # the worker passes the step on their phone: it waits there, as the service has it
    phone, phone_console = open_page(browser, PHONE)
    phone.goto(stack.console_link(worker))
    card = phone.locator(".step-card")
    expect(card).to_contain_text("Apply your padlock")
    tap_passed(card)
    expect(card).to_contain_text("This step needs a second person to verify it")
    expect(card.get_by_role("button", name="Passed")).to_be_disabled()
    phone.reload()
    expect(card).to_contain_text("This step needs a second person to verify it")
    expect(phone.locator(".disagreements")).to_be_empty()
    phone_console.assert_clean()
    s = stack.call(worker, "GET", f"/sessions/{s['id']}")
    assert s["awaiting_verification"]["step_id"] == s["current_step_id"]

    page, console = open_page(browser, DESK)
    page.goto(stack.console_link(stack.token("supervisor")))
    expect(page.get_by_role("heading", name="Work sessions")).to_be_visible()
    rows = page.locator("table.sessions tbody tr", has_text="Awaiting verification")
    rows.get_by_role("button", name=f"Open {sop['title']}").first.click()
    box = page.locator(".verify-box")
    expect(box).to_contain_text("Waiting for verification: Isolate › Apply your padlock")
    assert axe(page) == [], report({"session awaiting verification": axe(page)})
    page.wait_for_timeout((SIGNATURE_MAX_AGE + 1) * 1000)
    box.get_by_role("button", name="Verify").click()
    page.get_by_role("dialog").get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_contain_text(
        f"Signing needs a sign-in from the last {SIGNATURE_MAX_AGE} seconds")
    expect(page.get_by_role("alert")).to_contain_text("fresh sign-in link")
    assert stack.call(boss, "GET", f"/sessions/{s['id']}")["signatures"] == []

    page.goto(stack.console_link(stack.token("supervisor")))  # a fresh link
    page.locator("table.sessions tbody tr", has_text="Awaiting verification").get_by_role(
        "button", name=f"Open {sop['title']}").first.click()
    page.locator(".verify-box").get_by_role("button", name="Verify").click()
    page.get_by_role("dialog").get_by_label("Statement").fill("Saw the padlock applied")
    assert axe(page) == [], report({"dialog: verify": axe(page)})
    page.get_by_role("dialog").get_by_role("button", name="Verify").click()
    expect(page.get_by_role("status").filter(has_text="Verified")).to_be_visible()
    expect(page.locator(".timeline")).to_contain_text("Signed: Verified by")
    expect(page.locator(".timeline .manifest")).to_contain_text("Apply your padlock")
    s = stack.call(boss, "GET", f"/sessions/{s['id']}")
    assert s["status"] == "completed" and s["awaiting_verification"] is None
    assert [(g["meaning"], g["statement"]) for g in s["signatures"]] == [
        ("verified", "Saw the padlock applied")]
    console.assert_clean("status of 401")


def claims_of(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_the_access_token_is_renewed_before_it_expires_and_keeps_the_sign_in_time(
        signing: tuple[Stack, OidcProvider], browser: Browser) -> None:
    """The provider's tokens live 40 s here: the console renews them with the refresh token,
    without leaving the page; the renewed token is no new sign-in (same `auth_time`), so it
    cannot make a signature fresh."""
    stack, _ = signing
    page, console = on_this_machine(browser, DESK)
    sign_in_through_provider(page, stack, "dana")
    tokens = "JSON.parse(sessionStorage.getItem('worksession.oidc.tokens'))"
    first = page.evaluate(tokens)
    page.wait_for_function(f"(before) => {tokens}.access_token !== before",
                           arg=first["access_token"], timeout=ACCESS_TTL * 1000)
    renewed = page.evaluate(tokens)
    before, after = claims_of(first["access_token"]), claims_of(renewed["access_token"])
    assert after["auth_time"] == before["auth_time"] and after["exp"] > before["exp"]
    assert after["aud"] == AUDIENCE
    r = httpx.get(f"{stack.api}/api/v1/me", timeout=10,
                  headers={"Authorization": f"Bearer {renewed['access_token']}"})
    assert r.status_code == 200 and r.json()["name"] == "Dana Lead", r.text
    page.get_by_role("navigation", name="Views").get_by_role("button", name="SOPs").click()
    expect(page.get_by_role("heading", name="SOPs")).to_be_visible()
    expect(page.locator("#who")).to_contain_text("Dana Lead")
    console.assert_clean()
