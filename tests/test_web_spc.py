"""The console's control chart (CONTRACT.md v1.2, "Statistical process control"): reached
from the SOP's statistics page, it draws the values, the mean, the control and spec limits,
and marks the value that breaks a rule with the rule's number, Cp/Cpk beside it, on a
360 px phone. Real Chromium against `worksession dev` (tests/test_web_console.py's
fixtures)."""

from __future__ import annotations

import uuid

from playwright.sync_api import Browser, expect

from tests import test_web_console as web
from tests.test_web_console import (
    DOCS,
    PHONE,
    Stack,
    assert_phone_friendly,
    new_worker,
    open_page,
    sign_in,
)

# the module-scoped fixtures of the console's tests: one `worksession dev` for this module
stack = web.stack
supervisor = web.supervisor
browser = web.browser

VALUES = [99.2, 100.4, 98.9, 100.8, 99.6, 100.1, 99.0, 100.6, 99.8, 100.3, 99.4, 100.0]


def test_the_control_chart_shows_the_limits_and_marks_the_point_that_breaks_a_rule(
        stack: Stack, supervisor: str, browser: Browser) -> None:
    title = f"Bath {uuid.uuid4().hex[:6]}"
    sop = stack.call(supervisor, "POST", "/sops", {"title": title, "tasks": [
        {"title": "Sample", "steps": [{"title": "Concentration", "check": {
            "kind": "measurement", "prompt": "Concentration", "unit": "g/l",
            "min": 90, "max": 110}}]}]})
    sop = stack.call(supervisor, "POST", f"/sops/{sop['id']}/confirm")
    step = sop["tasks"][0]["steps"][0]["id"]
    worker = new_worker(stack)
    for value in [*VALUES, 107.5]:  # the last: in spec, beyond 3 sigma
        s = stack.call(worker, "POST", "/sessions", {"sop_id": sop["id"]})
        s = stack.call(worker, "POST", f"/sessions/{s['id']}/checks",
                       {"step_id": step, "value": value})
        assert s["status"] == "completed"
    assert s["needs_attention"] is True
    chart = stack.call(supervisor, "GET", f"/sops/{sop['id']}/steps/{step}/spc")
    assert chart["points"][-1]["rules"] == [1] and chart["ucl"] < 107.5

    page, console = open_page(browser, PHONE)
    sign_in(page, stack.link("supervisor"))
    page.get_by_role("button", name="SOPs").click()
    page.get_by_role("button", name=f"Statistics of {title} v1").click()
    page.get_by_role("button", name="Control chart: 1. Concentration").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Control chart: Concentration")
    svg = page.locator("svg.spc-chart")
    expect(svg).to_have_attribute("role", "img")
    for line, value in (("ucl", chart["ucl"]), ("lcl", chart["lcl"]), ("mean", chart["mean"]),
                        ("usl", 110), ("lsl", 90)):
        drawn = svg.locator(f"g.spc-line[data-line={line}]")
        expect(drawn).to_have_count(1)
        assert abs(float(drawn.get_attribute("data-value") or 0) - value) < 1e-9
        expect(drawn.locator("text")).to_contain_text(line.upper() if line != "mean" else "Mean")
    expect(svg.locator("g.spc-point")).to_have_count(13)
    out = svg.locator("g.spc-out")
    expect(out).to_have_count(1)
    assert out.get_attribute("data-value") == "107.5" and out.get_attribute("data-rules") == "1"
    expect(out.locator("text")).to_have_text("1")
    facts = page.locator("dl.spc-facts")
    expect(facts).to_contain_text("Cpk")
    expect(facts).to_contain_text(f"Cp{round(chart['cp'], 2)}"[:5])
    assert "breaks rule 1" in (svg.locator("desc").text_content() or "")
    # on a 360 px phone: the chart's text is 14 px, nothing wider than the screen
    size = page.evaluate("""() => { const t = document.querySelector('.spc-line-label');
        return t.getBoundingClientRect().height; }""")
    assert size >= 12
    assert_phone_friendly(page)
    page.screenshot(path=str(DOCS / "screenshot-spc-chart.png"), full_page=True)
    page.get_by_role("button", name="Statistics").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"Statistics: {title}")
    console.assert_clean()
