"""The connection details panel behind the status badge: mouse and keyboard, and what it shows."""

import re

import pytest
from playwright.sync_api import expect

from .pages import BOOT_TIMEOUT_MS, login_live, status


def value(page, key):
    return page.get_by_test_id("details-" + key)


@pytest.mark.parametrize(("query", "runtime"), [("", "MicroPython"), ("?runtime=pyodide", "Pyodide")], ids=["micropython", "pyodide"])
def test_click_opens_the_details_and_escape_closes_them(page, server, query, runtime):
    login_live(page, server, query=query, boot_ms=BOOT_TIMEOUT_MS * (2 if query else 1))
    panel = page.get_by_test_id("connection-details")
    expect(panel).to_be_hidden()
    status(page).click()
    expect(panel).to_be_visible()
    expect(status(page)).to_have_attribute("aria-expanded", "true")
    expect(value(page, "state")).to_have_text("Live")
    expect(value(page, "runtime")).to_have_text(runtime)
    expect(value(page, "client-id")).to_have_text(re.compile(r"^c-[0-9a-f]+$"))
    # the client's own ping goes out with every server heartbeat (1 s here) and its pong gives the round trip
    expect(value(page, "rtt")).to_have_text(re.compile(r"^\d+ ms$"))
    expect(value(page, "reconnects")).to_have_text("0")
    expect(value(page, "resumes")).to_have_text("0 recovered, 0 refetched")
    expect(value(page, "freshness")).to_have_text("Live")
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(status(page)).to_have_attribute("aria-expanded", "false")
    expect(status(page)).to_be_focused()


def test_keyboard_only_opens_and_closes_the_details_and_events_are_counted(page, server, api):
    login_live(page, server)
    badge = status(page)
    for _ in range(20):  # Tab until the badge has the focus: it is reachable without a mouse
        page.keyboard.press("Tab")
        if badge.evaluate("el => el === document.activeElement"):
            break
    expect(badge).to_be_focused()
    page.keyboard.press("Enter")
    panel = page.get_by_test_id("connection-details")
    expect(panel).to_be_visible()
    expect(panel).to_be_focused()
    expect(value(page, "events")).to_have_text("0")
    story = sorted(api.stories("apollo"), key=lambda s: s["id"])[0]
    api.move_story(story["id"], "done" if story["status"] != "done" else "todo")
    expect(value(page, "events")).not_to_have_text("0")  # the move and the project's new counts
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(badge).to_be_focused()
    page.keyboard.press(" ")
    expect(panel).to_be_visible()
    page.get_by_role("button", name="Close connection details").click()
    expect(panel).to_be_hidden()
