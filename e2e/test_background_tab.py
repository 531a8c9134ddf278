"""A really hidden and frozen tab. Pages Playwright launches itself are always "visible", so this test
starts its own headless Chromium with a DevTools port and attaches with `connect_over_cdp`."""

import json
import subprocess
import urllib.request

import pytest
from playwright.sync_api import expect

from .harness import CHROMIUM, CHROMIUM_ARGS, end_process, free_port, pick_move, wait_until
from .pages import login_live, status, story, wait_for_line


def _devtools_ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=1) as response:
            return "webSocketDebuggerUrl" in json.loads(response.read())
    except OSError:
        return False


@pytest.fixture
def cdp_browser(playwright, tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={tmp_path / 'profile'}",
            *CHROMIUM_ARGS,
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _devtools_ready(port), 20, message="Chromium DevTools endpoint")
        browser = playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}", no_defaults=True)
        yield browser
        browser.close()
    finally:
        end_process(proc)


def heartbeat_timeouts(server):
    return server.log_tail(200_000).count("ws.heartbeat_timeout")


def test_hidden_then_frozen_tab_comes_back_live_with_fresh_data(cdp_browser, server, api):
    context = cdp_browser.contexts[0]
    page = context.new_page()
    console = []
    page.on("console", lambda msg: console.append(msg.text))
    login_live(page, server)

    # hide it the way a user does: another tab comes to the front
    browser_cdp = cdp_browser.new_browser_cdp_session()
    other = browser_cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    page.wait_for_function("document.visibilityState === 'hidden'", polling=100)
    wait_for_line(page, console, "[WebSocket] Tab hidden")

    # then freeze it (what Chromium does to background tabs): no timers, no frames
    page_cdp = context.new_cdp_session(page)
    before = heartbeat_timeouts(server)
    page_cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
    target, to = pick_move(api.stories("apollo"))
    api.move_story(target["id"], to)
    # the frozen page cannot answer pings: the server reaps its socket
    wait_until(lambda: heartbeat_timeouts(server) > before, 15, message="server heartbeat timeout")

    page_cdp.send("Page.setWebLifecycleState", {"state": "active"})
    browser_cdp.send("Target.closeTarget", {"targetId": other})
    page.bring_to_front()
    page.wait_for_function("document.visibilityState === 'visible'", polling=100)
    expect(status(page)).to_have_attribute("data-state", "live", timeout=15_000)
    expect(story(page, target["id"])).to_have_attribute("data-status", to)
    wait_for_line(page, console, "[WebSocket] Tab visible")
