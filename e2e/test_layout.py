"""The page at five screen sizes, as a signed-in user sees it with live data (issue 15's "Layout").

For each size: no page-level horizontal scrolling; the header's parts never overlap or leave the screen;
no story card narrower than 220 px; column headers never clipped; titles broken only between words; the
board scrolls sideways in its own box (snapping) when five columns do not fit, and at desktop widths all
five fit; on touch screens every control is at least 44 x 44 px; on a phone the projects are a compact
picker and the board starts on the first screen. Each size runs in the light or dark scheme (alternating)
and with or without reduced motion, and axe-core finds nothing serious in that state. The connection
details panel, opened from the badge, fits the screen below the header.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .a11y import serious_violations
from .layout import board_problems, header_problems, page_scroll_problems, touch_problems
from .pages import login_live, status

# (width, height, touch, scheme, reduced motion)
VIEWPORTS = [
    (360, 740, True, "dark", "reduce"),
    (390, 844, True, "light", "no-preference"),
    (768, 1024, True, "dark", "no-preference"),
    (1280, 800, False, "light", "reduce"),
    (1440, 900, False, "dark", "no-preference"),
]
DARK_BACKGROUND = "rgb(11, 16, 32)"
LIGHT_BACKGROUND = "rgb(244, 246, 251)"


@pytest.mark.parametrize(("width", "height", "touch", "scheme", "motion"), VIEWPORTS, ids=[f"{v[0]}x{v[1]}" for v in VIEWPORTS])
def test_the_page_fits_the_screen(browser, server, width, height, touch, scheme, motion):
    context = browser.new_context(
        viewport={"width": width, "height": height},
        has_touch=touch,
        is_mobile=touch and width < 600,
        color_scheme=scheme,
        reduced_motion=motion,
    )
    try:
        page = context.new_page()
        login_live(page, server)
        expect(page.get_by_test_id("escalation").first).to_be_visible()
        page.evaluate("document.fonts.ready.then(() => true)")  # measured with the final fonts

        problems = page_scroll_problems(page, width) + header_problems(page) + board_problems(page)
        if touch:
            problems += touch_problems(page)
        assert problems == [], "\n".join(problems)

        board = page.get_by_test_id("board")
        phone = width < 640
        expect(page.get_by_test_id("project-select")).to_be_visible() if phone else expect(
            page.get_by_test_id("project-card").first
        ).to_be_visible()
        if phone:
            expect(page.get_by_test_id("project-card").first).to_be_hidden()
            assert board.bounding_box()["y"] < height / 2, "the board is pushed off the first screen"
        if width >= 1280:  # a desktop shows all five columns without scrolling
            assert board.evaluate("b => b.scrollWidth <= b.clientWidth")
        else:  # narrower screens scroll the board sideways, one column at a time on a phone
            assert board.evaluate("b => b.scrollWidth > b.clientWidth")

        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == (DARK_BACKGROUND if scheme == "dark" else LIGHT_BACKGROUND)
        dot = status(page).locator(".dot")
        animation = dot.evaluate("el => getComputedStyle(el).animationName")
        assert animation == ("none" if motion == "reduce" else "pulse")

        violations = serious_violations(page)
        assert violations == [], "\n".join(violations)

        # the connection details panel, opened from the badge, fits the screen too and covers no header part
        status(page).click()
        panel = page.get_by_test_id("connection-details")
        expect(panel).to_be_visible()
        box, header = panel.bounding_box(), page.locator("header.topbar").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= width and box["y"] + box["height"] <= height, box
        assert box["y"] >= header["y"] + header["height"], (box, header)
        if touch:
            problems = touch_problems(page)
            assert problems == [], "\n".join(problems)
        page.keyboard.press("Escape")
        expect(panel).to_be_hidden()
    finally:
        context.close()
