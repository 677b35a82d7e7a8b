"""Evidence files in the web console (contract v1.2, "Evidence files"; issue #26), in headless
Chromium against `worksession dev` (tests/test_web_console.py's harness and fixtures).

- On a 360 px phone the worker takes a photo for a step that requires one, sees its
  thumbnail, records the check offline, reloads offline (the photo and the check still
  waiting on the phone: the bytes in IndexedDB, the check in the outbox) and comes back
  online: the file is uploaded once and the check arrives once, with it. The supervisor sees
  the thumbnail on the session's timeline and opens the whole photo.
- A step that requires a file refuses to send a check without one, in a sentence; a file the
  service refuses (415: a text file named .jpg) is shown as a refusal, and no check is sent.
- A step that requires a file on failure: Failed without one is refused in a sentence, a
  file over the limit (413) too, and a PDF goes with the check; the supervisor saves it.

With WORKSESSION_SCREENSHOTS=1 it rewrites docs/screenshot-worker-photo.png and
docs/screenshot-supervisor-thumbnail.png.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
import struct
import uuid
import zlib
from typing import Any

from playwright.sync_api import Browser, Locator, Page, expect

from tests import test_web_console as web
from tests.evidence_files import jpeg, pdf
from tests.test_web_console import (
    DESK,
    DOCS,
    UNDO_WAIT,
    Stack,
    new_worker,
    open_page,
    outbox,
    sign_in,
    tap_passed,
)
from tests.test_web_offline import network, under_service_worker

# the module-scoped fixtures of the console's tests: one `worksession dev` for this module
stack = web.stack
supervisor = web.supervisor
browser = web.browser

PHONE = {"width": 360, "height": 740}


def png(width: int = 24, height: int = 16) -> bytes:
    """A small real PNG of one random colour (so each test's file has its own sha256)."""
    colour = bytes(random.randrange(256) for _ in range(3))
    raw = b"".join(b"\x00" + colour * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def photo_sop(title: str) -> dict[str, Any]:
    return {"title": title, "description": "Lockout with photos", "tasks": [
        {"title": "Lock out", "steps": [
            {"title": "Photograph the padlock", "instructions": "Padlock and tag in view",
             "check": {"kind": "confirm", "prompt": "Padlock and tag in place",
                       "evidence": "required"}},
            {"title": "Check the guard", "check": {
                "kind": "confirm", "prompt": "Guard closed", "evidence": "required_on_fail"}},
            {"title": "Sign the tag", "check": {
                "kind": "confirm", "prompt": "Tag signed", "evidence": "none"}}]}]}


def started(stack: Stack, supervisor: str, browser: Browser,
            ) -> tuple[str, dict[str, Any], Page, Any, Locator]:
    title = f"Photo {uuid.uuid4().hex[:6]}"
    sop = stack.call(supervisor, "POST", "/sops", photo_sop(title))
    sop = stack.call(supervisor, "POST", f"/sops/{sop['id']}/confirm")
    worker = new_worker(stack)
    page, console = open_page(browser, PHONE)
    sign_in(page, stack.console_link(worker))
    page.get_by_role("button", name=f"Start {title}").click()
    card = page.locator(".step-card")
    expect(card).to_contain_text("Step 1 of 3")
    return worker, sop, page, console, card


def take_photo(page: Page, card: Locator, name: str, data: bytes,
               mime: str = "image/png") -> None:
    """The worker taps "Take a photo"; the phone's camera gives this file."""
    with page.expect_file_chooser() as chooser:
        card.get_by_role("button", name="Take a photo").click()
    chooser.value.set_files(files=[{"name": name, "mimeType": mime, "buffer": data}])


def kept_files(page: Page) -> list[list[Any]]:
    """The [check_id, file_id, bytes] of every file in the page's IndexedDB (files.js)."""
    return page.evaluate("""() => new Promise((resolve, reject) => {
        const open = indexedDB.open('worksession-evidence', 1);
        open.onsuccess = () => {
          const get = open.result.transaction('files').objectStore('files').getAll();
          get.onsuccess = () => { resolve(get.result.map((r) => [r.check_id, r.file_id,
            r.blob.size])); open.result.close(); };
          get.onerror = () => reject(get.error);
        };
        open.onerror = () => reject(open.error);
    })""")


def gone_from_indexeddb(page: Page) -> bool:
    """The page's IndexedDB holds no file within a few seconds (it removes them after the
    check's answer; polled from here: Playwright's polling evaluate is refused by the CSP)."""
    for _ in range(40):
        if not kept_files(page):
            return True
        page.wait_for_timeout(250)
    return False


def loaded_width(page: Page, img: Locator) -> int:
    """The natural width of an image once it has loaded (0: it did not)."""
    return page.evaluate("""(img) => img.complete && img.naturalWidth ? img.naturalWidth
        : new Promise((resolve) => {
            img.addEventListener('load', () => resolve(img.naturalWidth), { once: true });
            img.addEventListener('error', () => resolve(0), { once: true });
        })""", img.element_handle())


def posts(page: Page, ending: str) -> list[str]:
    """The URL of every POST the page makes from now on whose path ends so."""
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url)
            if r.method == "POST" and r.url.split("?")[0].endswith(ending) else None)
    return sent


def uploads_in_store(stack: Stack, sha256: str) -> int | None:
    """Rows the service has for these bytes (None: not the SQLite database of `dev`)."""
    db = stack.data_dir / "worksession.db"
    if not db.exists():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return c.execute("SELECT count(*) FROM evidence WHERE sha256 = ?", (sha256,)).fetchone()[0]


def test_a_photo_taken_offline_arrives_once_with_its_check_and_the_supervisor_sees_it(
        stack: Stack, supervisor: str, browser: Browser) -> None:  # noqa: F811
    worker, sop, page, console, card = started(stack, supervisor, browser)
    under_service_worker(page)
    pending = page.locator("#pending")
    data = png()
    sha = hashlib.sha256(data).hexdigest()
    expect(card).to_contain_text("Photo or file: required for this step")

    take_photo(page, card, "padlock.png", data)
    thumb = card.locator("img.thumb")
    expect(thumb).to_be_visible()
    expect(thumb).to_have_attribute("alt", "Photo to send: padlock.png")
    assert loaded_width(page, thumb) == 24
    expect(card).to_contain_text("padlock.png")
    page.screenshot(path=str(DOCS / "screenshot-worker-photo.png"))

    # the basement: the check is recorded with no network
    network(page, up=False)
    card.get_by_role("button", name="Passed").click()
    expect(card.locator(".undo")).to_be_visible()
    expect(card.locator(".undo")).to_be_hidden(timeout=UNDO_WAIT)
    expect(card).to_contain_text("Step 2 of 3")
    expect(pending).to_contain_text("1 check waiting to be sent")
    [waiting] = outbox(page)
    check_id = waiting["body"]["check_id"]
    [file] = waiting["files"]
    assert (file["name"], file["type"], file["bytes"]) == ("padlock.png", "image/png", len(data))
    assert kept_files(page) == [[check_id, file["id"], len(data)]]

    # reopened before the network returns: the check and its photo still waiting
    page.reload()
    expect(card).to_contain_text("Step 2 of 3")
    expect(pending).to_contain_text("1 check waiting to be sent")
    assert [w["body"]["check_id"] for w in outbox(page)] == [check_id]
    assert kept_files(page) == [[check_id, file["id"], len(data)]]

    uploads, checks = posts(page, "/evidence"), posts(page, "/checks")
    network(page, up=True)  # the file, then the check: once each
    expect(pending).to_be_hidden(timeout=20_000)
    session = stack.call(worker, "GET", "/sessions/current")
    [check] = session["checks"]
    assert check["id"] == check_id and check["result"] == "passed"
    [evidence] = check["evidence"]
    assert (evidence["sha256"], evidence["content_type"], evidence["bytes"],
            evidence["filename"]) == (sha, "image/png", len(data), "padlock.png")
    assert len(uploads) == 1 and "filename=padlock.png" in uploads[0]
    assert len(checks) == 1
    assert uploads_in_store(stack, sha) in (1, None)
    assert outbox(page) == []
    assert gone_from_indexeddb(page)  # the photo leaves the phone once the check is in
    console.assert_clean("net::ERR_INTERNET_DISCONNECTED", "net::ERR_FAILED")

    # the supervisor, on a desktop, sees the thumbnail on the timeline and opens it
    desk, desk_console = open_page(browser, DESK)
    sign_in(desk, stack.link("supervisor"))
    desk.get_by_label("SOP", exact=True).select_option(f"sop:{sop['id']}")
    row = desk.locator("table.sessions tbody tr")
    expect(row).to_have_count(1)
    row.get_by_role("button", name=f"Open {sop['title']}").click()
    timeline = desk.locator(".timeline")
    shown = timeline.get_by_role("img", name="Photo: padlock.png")
    expect(shown).to_be_visible()
    expect(timeline).to_contain_text(f"padlock.png · {1 if len(data) < 1536 else 2} KB")
    assert loaded_width(desk, shown) == 24  # the bytes, fetched with the token
    shown.scroll_into_view_if_needed()
    desk.screenshot(path=str(DOCS / "screenshot-supervisor-thumbnail.png"))
    timeline.get_by_role("link", name="Photo: padlock.png").click()
    viewer = desk.get_by_role("dialog", name="padlock.png")
    expect(viewer).to_be_visible()
    whole = viewer.get_by_role("img", name="Photo: padlock.png")
    expect(whole).to_be_visible()
    viewer.get_by_role("button", name="Close").click()
    expect(viewer).to_have_count(0)
    # the page's photos are let go when another view opens (a day of reviews would keep
    # every one seen), and fetched again when they are shown again
    seen = shown.get_attribute("src")
    desk.get_by_role("button", name="All sessions").click()
    expect(row).to_have_count(1)
    assert desk.evaluate("""(url) => new Promise((done) => {
        const img = new Image();
        img.onload = () => done('kept');
        img.onerror = () => done('released');
        img.src = url;
    })""", seen) == "released"
    row.get_by_role("button", name=f"Open {sop['title']}").click()
    expect(shown).to_be_visible()
    assert loaded_width(desk, shown) == 24 and shown.get_attribute("src") != seen
    desk_console.assert_clean("net::ERR_FILE_NOT_FOUND")


def test_a_required_file_is_asked_for_and_a_refused_file_is_said(
        stack: Stack, supervisor: str, browser: Browser) -> None:  # noqa: F811
    worker, _, page, console, card = started(stack, supervisor, browser)
    checks = posts(page, "/checks")

    # no photo: nothing is sent, and the worker is told what to do
    card.get_by_role("button", name="Passed").click()
    expect(card.get_by_role("alert")).to_contain_text(
        "This step needs a photo or file as evidence. Take a photo (or choose a file), then "
        "record the check again. Nothing was sent.")
    expect(card.locator(".undo")).to_have_count(0)
    assert outbox(page) == [] and checks == []

    # a text file that calls itself a JPEG: the service refuses it (415), the check is not sent
    take_photo(page, card, "photo.jpg", b"not a photo at all\n", "image/jpeg")
    expect(card).to_contain_text("photo.jpg")
    card.get_by_role("button", name="Passed").click()
    expect(card.locator(".undo")).to_be_hidden(timeout=UNDO_WAIT)
    expect(card.get_by_role("alert")).to_contain_text(
        '"photo.jpg" is not a photo or PDF the service takes (JPEG, PNG, WebP, HEIC or PDF), '
        "so the check was not sent.", timeout=15_000)
    expect(card).to_contain_text("Step 1 of 3")
    assert checks == []
    assert stack.call(worker, "GET", "/sessions/current")["checks"] == []
    assert outbox(page) == []
    assert gone_from_indexeddb(page)
    console.assert_clean("status of 415")


def test_a_failed_check_needs_its_file_an_oversized_one_is_said_and_a_pdf_goes(
        stack: Stack, supervisor: str, browser: Browser) -> None:  # noqa: F811
    """`required_on_fail`: Passed needs nothing, Failed needs a file; a file over the
    service's limit (20 MiB in `dev`) is refused in a sentence and nothing is sent; a PDF
    chosen from the phone goes with the failed check, and the supervisor's timeline offers
    it to open."""
    worker, sop, page, console, card = started(stack, supervisor, browser)
    take_photo(page, card, "padlock.png", png())
    card.get_by_role("button", name="Passed").click()
    expect(card).to_contain_text("Step 2 of 3", timeout=UNDO_WAIT)
    expect(card).to_contain_text("Photo or file: required if the check fails")
    checks = posts(page, "/checks")
    expect(page.locator("#pending")).to_be_hidden(timeout=20_000)
    checks.clear()

    card.get_by_role("button", name="Failed").click()
    expect(card.get_by_role("alert")).to_contain_text(
        "A failed check on this step needs a photo or file of what is wrong. Take a photo "
        "(or choose a file), then tap Failed again. Nothing was sent.")
    assert checks == []

    # a photo over the limit: refused by the service with a 413 the page reads out
    take_photo(page, card, "huge.jpg", jpeg(20 * 1024 * 1024 + 1), "image/jpeg")
    card.get_by_role("button", name="Failed").click()
    expect(card.locator(".undo")).to_be_hidden(timeout=UNDO_WAIT)
    expect(card.get_by_role("alert")).to_contain_text(
        '"huge.jpg" is too large for the service, so the check was not sent. Take a smaller '
        "photo or choose a smaller file, then record the check again.", timeout=30_000)
    assert checks == []
    assert len(stack.call(worker, "GET", "/sessions/current")["checks"]) == 1

    # a PDF from the phone instead (the refused check took its file with it)
    expect(card.locator(".evidence-list")).to_have_count(0)
    document = pdf(3000)
    with page.expect_file_chooser() as chooser:
        card.get_by_role("button", name="Choose a file").click()
    chooser.value.set_files(files=[{"name": "guard.pdf", "mimeType": "application/pdf",
                                    "buffer": document}])
    expect(card.locator(".thumb-file")).to_have_text("PDF")
    card.get_by_role("button", name="Failed").click()
    expect(card.locator(".undo")).to_be_hidden(timeout=UNDO_WAIT)
    expect(page.locator("#pending")).to_be_hidden(timeout=20_000)
    session = stack.call(worker, "GET", "/sessions/current")
    failed = session["checks"][-1]
    assert failed["result"] == "failed" and len(session["checks"]) == 2
    [evidence] = failed["evidence"]
    assert (evidence["content_type"], evidence["filename"], evidence["sha256"]) == (
        "application/pdf", "guard.pdf", hashlib.sha256(document).hexdigest())
    assert len(checks) == 1
    console.assert_clean("status of 413")

    desk, desk_console = open_page(browser, DESK)
    sign_in(desk, stack.link("supervisor"))
    desk.get_by_label("SOP", exact=True).select_option(f"sop:{sop['id']}")
    desk.locator("table.sessions tbody tr").get_by_role(
        "button", name=f"Open {sop['title']}").click()
    opened = desk.locator(".timeline").get_by_role("link", name="Open guard.pdf (PDF)")
    expect(opened).to_be_visible()
    with desk.expect_download() as saved:
        opened.click()
    assert saved.value.suggested_filename == "guard.pdf"
    assert open(saved.value.path(), "rb").read() == document
    desk_console.assert_clean()


def test_a_photo_picked_in_one_tab_survives_the_phone_opening_another(
        stack: Stack, supervisor: str, browser: Browser) -> None:  # noqa: F811
    """Two tabs of the console on one phone share its IndexedDB: a tab that opens leaves
    alone the photo another tab has picked for a check it has not sent yet (it used to sweep
    it away as abandoned, and the check then asked for the photo again)."""
    worker, sop, page, console, card = started(stack, supervisor, browser)
    data = png()
    take_photo(page, card, "padlock.png", data)
    expect(card.locator("img.thumb")).to_be_visible()
    for _ in range(40):
        if kept := kept_files(page):
            break
        page.wait_for_timeout(250)
    [[check_id, file_id, size]] = kept
    assert size == len(data)

    other = page.context.new_page()  # the same phone, a second tab of the console
    other.goto(page.url)
    expect(other.locator(".step-card")).to_contain_text("Step 1 of 3")
    other.wait_for_timeout(2000)  # its outbox has started, and swept
    assert kept_files(page) == [[check_id, file_id, len(data)]]
    other.close()

    tap_passed(card)
    expect(card).to_contain_text("Step 2 of 3")
    expect(page.locator("#pending")).to_be_hidden(timeout=20_000)
    [check] = stack.call(worker, "GET", "/sessions/current")["checks"]
    [evidence] = check["evidence"]
    assert check["id"] == check_id
    assert evidence["sha256"] == hashlib.sha256(data).hexdigest()

    # what the sweep is for: a photo picked two days ago whose check never came (the page
    # was closed first) goes when the console opens; one picked an hour ago stays
    page.evaluate("""(owner) => new Promise((resolve, reject) => {
        const open = indexedDB.open('worksession-evidence', 1);
        open.onsuccess = () => {
          const tx = open.result.transaction('files', 'readwrite');
          const ago = (h) => new Date(Date.now() - h * 3600 * 1000).toISOString();
          for (const [id, hours] of [['abandoned', 48], ['recent', 1]]) {
            tx.objectStore('files').put({ check_id: id, file_id: 'f', owner, name: 'x.png',
              type: 'image/png', bytes: 1, blob: new Blob(['x']), kept_at: ago(hours) });
          }
          tx.oncomplete = () => { open.result.close(); resolve(); };
          tx.onerror = () => reject(tx.error);
        };
    })""", page.evaluate("JSON.parse(atob(localStorage.getItem('worksession.token')"
                         ".split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).sub"))
    page.reload()
    expect(card).to_contain_text("Step 2 of 3")
    for _ in range(40):
        if [k[0] for k in kept_files(page)] == ["recent"]:
            break
        page.wait_for_timeout(250)
    assert [k[0] for k in kept_files(page)] == ["recent"]
    console.assert_clean()
