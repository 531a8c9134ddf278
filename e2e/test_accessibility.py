"""Accessibility (issue 15): axe-core in every connection state, light and dark, and the whole page
used with the keyboard alone.

axe-core comes from `node_modules` (a devDependency, never served) and is injected by `e2e/a11y.py`.
The state walk runs twice: light on a 390 x 844 touch phone, dark on a 1280 x 800 desktop; in each state
the header is also checked for overlaps (the state labels and details are longest when degraded) and, on
the phone, every control for a 44 px touch size.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Locator, Page, expect

from .a11y import serious_violations
from .harness import wait_until
from .layout import header_problems, touch_problems
from .pages import STATUSES, escalation, open_dashboard, sign_in, status, story

WALKS = [("light", 390, 844, True), ("dark", 1280, 800, False)]
MAX_TABS = 120


@pytest.mark.server_env(DASHBOARD_RECONNECT_BASE_MS="1500", DASHBOARD_RECONNECT_MAX_MS="1500", DASHBOARD_RECONNECT_MAX_ATTEMPTS="2")
@pytest.mark.parametrize(("scheme", "width", "height", "touch"), WALKS, ids=[w[0] for w in WALKS])
def test_no_serious_violations_in_any_connection_state(browser, server, scheme, width, height, touch):
    context = browser.new_context(
        viewport={"width": width, "height": height}, has_touch=touch, is_mobile=touch, color_scheme=scheme
    )
    page = context.new_page()
    badge = status(page)

    def check(state: str) -> None:
        expect(badge).to_have_attribute("data-state", state)
        problems = serious_violations(page) + header_problems(page) + (touch_problems(page) if touch else [])
        assert problems == [], f"{scheme}, {state}:\n" + "\n".join(problems)

    try:
        open_dashboard(page, server.url)
        check("idle")  # the sign-in page
        sign_in(page)
        expect(page.get_by_test_id("story").first).to_be_visible()
        check("live")
        expect(badge).to_have_attribute("aria-live", "polite")  # announced; it is also the details panel's button
        expect(badge).to_have_attribute("aria-atomic", "true")

        context.set_offline(True)
        check("offline")
        context.set_offline(False)
        expect(badge).to_have_attribute("data-state", "live")

        server.kill()
        check("reconnecting")
        expect(page.get_by_test_id("retry-button")).to_be_visible()
        check("suspended")
        expect(page.locator("#banner-text")).to_have_attribute("role", "alert")  # the error banner is announced
        server.restart()
        page.get_by_test_id("retry-button").click()
        expect(badge).to_have_attribute("data-state", "live")
    finally:
        context.close()


# ---------------------------------------------------------------------------------------------- keyboard
def focused(locator: Locator) -> bool:
    return locator.evaluate("el => el === document.activeElement")


def tab_to(page: Page, locator: Locator) -> None:
    """Press Tab (or Shift+Tab when the control comes earlier in the page) until `locator` has the focus,
    then check that the focus ring is visible on it."""
    locator.wait_for(state="visible")
    backwards = locator.evaluate(
        "el => !!(document.activeElement && document.activeElement !== document.body"
        " && (el.compareDocumentPosition(document.activeElement) & Node.DOCUMENT_POSITION_FOLLOWING))"
    )
    for _ in range(MAX_TABS):
        if focused(locator):
            break
        page.keyboard.press("Shift+Tab" if backwards else "Tab")
    else:
        raise AssertionError(f"{locator} cannot be reached with the keyboard")
    ring = locator.evaluate(
        """el => { const s = getComputedStyle(el);
                   return {style: s.outlineStyle, width: parseFloat(s.outlineWidth), visible: el.matches(":focus-visible")}; }"""
    )
    assert ring["visible"] and ring["style"] != "none" and ring["width"] >= 2, (str(locator), ring)


@pytest.mark.server_env(DASHBOARD_SUSPENDED_RETRY_MS="600000")  # suspended until Retry is pressed
def test_the_whole_page_works_with_the_keyboard(page, server, api):
    open_dashboard(page, server.url)
    page.keyboard.press("Tab")
    skip = page.locator(".skip-link")
    assert focused(skip) and skip.bounding_box()["y"] >= 0, "the skip link shows when focused"

    form = page.get_by_test_id("login-form")
    tab_to(page, form.locator('input[name="username"]'))
    page.keyboard.type("alice")
    tab_to(page, form.locator('input[name="password"]'))
    page.keyboard.type("alice-demo")
    page.keyboard.press("Enter")
    expect(status(page)).to_have_attribute("data-state", "live")
    expect(page.locator("#main")).to_be_focused()  # after signing in, the focus is on the page content

    # move a story: its select, one status further with the arrow key; the focus stays on that story
    target = next(s for s in sorted(api.stories("apollo"), key=lambda s: s["id"]) if s["status"] != STATUSES[-1])
    to = STATUSES[STATUSES.index(target["status"]) + 1]  # the next option of its select
    select = page.locator(f'select[data-story-id="{target["id"]}"]')
    tab_to(page, select)
    page.keyboard.press("ArrowDown")
    expect(story(page, target["id"])).to_have_attribute("data-status", to)
    wait_until(lambda: {s["id"]: s["status"] for s in api.stories("apollo")}[target["id"]] == to, 10, message="move saved")
    expect(page.locator(f'select[data-story-id="{target["id"]}"]')).to_be_focused()

    # raise an escalation, then resolve it
    title_input = page.get_by_test_id("escalation-form").locator('input[name="title"]')
    tab_to(page, title_input)
    page.keyboard.type("Needs a human: keyboard check")
    page.keyboard.press("Enter")
    row = page.get_by_test_id("escalation").filter(has_text="Needs a human: keyboard check")
    expect(row.locator('[data-action="resolve-escalation"]')).to_be_visible()  # saved: no longer "sending…"
    raised_id = row.get_attribute("data-escalation-id")
    tab_to(page, escalation(page, raised_id).locator('[data-action="resolve-escalation"]'))
    page.keyboard.press("Enter")
    expect(escalation(page, raised_id)).to_have_attribute("data-status", "resolved")  # optimistic at first

    def saved_status() -> str:
        return {e["id"]: e["status"] for e in api.client.get("/api/projects/apollo/escalations").json()}[int(raised_id)]

    wait_until(lambda: saved_status() == "resolved", 10, message="resolve saved")

    # Retry after the server went away and came back
    server.kill()
    retry = page.get_by_test_id("retry-button")
    expect(status(page)).to_have_attribute("data-state", "suspended")
    server.restart()
    tab_to(page, retry)
    page.keyboard.press("Enter")
    expect(status(page)).to_have_attribute("data-state", "live")

    # sign out: back to the form, with the cursor in it
    tab_to(page, page.get_by_test_id("logout-button"))
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("login-form").locator('input[name="username"]')).to_be_focused()

