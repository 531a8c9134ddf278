"""Faults injected into the WebSocket itself through Playwright's in-page proxy (`route_web_socket`)."""

import re

from playwright.sync_api import expect

from .harness import pick_move
from .pages import events, login_live, status, story, wait_for_line

WS_PATTERN = re.compile(r".*/ws/status-updates")
QUIET_WINDOW_MS = 3000  # > 2 x the longest backoff (1000 ms): a reconnect loop would show up in it


class Proxy:
    """Forward every socket to the real server and keep a handle on each one."""

    def __init__(self):
        self.sockets = []

    def __call__(self, ws):
        ws.connect_to_server()
        self.sockets.append(ws)


def test_malformed_frame_does_not_disconnect_and_later_events_still_arrive(page, server, api, console_lines):
    proxy = Proxy()
    page.route_web_socket(WS_PATTERN, proxy)
    login_live(page, server)
    assert len(proxy.sockets) == 1

    socket = proxy.sockets[0]
    socket.send("{this is not json")
    socket.send('{"type": "event", "projectId": 42}')
    socket.send("[1, 2, 3]")
    expect(status(page)).to_have_attribute("data-state", "live")

    target, to = pick_move(api.stories("apollo"))
    api.move_story(target["id"], to)
    expect(story(page, target["id"])).to_have_attribute("data-status", to)
    expect(events(page, "story.status.changed")).to_have_count(1)
    expect(status(page)).to_have_attribute("data-state", "live")
    assert len(proxy.sockets) == 1  # never reconnected
    wait_for_line(page, console_lines, "[WebSocket] Ignored an invalid frame")


def test_close_4401_requires_sign_in_without_reconnect_loop(page, server):
    proxy = Proxy()
    page.route_web_socket(WS_PATTERN, proxy)
    login_live(page, server)
    assert len(proxy.sockets) == 1

    proxy.sockets[0].close(code=4401, reason="token expired")
    expect(status(page)).to_have_attribute("data-state", "auth-required")
    expect(status(page)).to_have_attribute("data-close-code", "4401")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.get_by_test_id("retry-button")).to_be_hidden()
    # Absence of a reconnect can only be observed over a window of time.
    page.wait_for_timeout(QUIET_WINDOW_MS)
    assert len(proxy.sockets) == 1
    expect(status(page)).to_have_attribute("data-state", "auth-required")

    # signing in again opens exactly one new socket and goes live
    login_form = page.get_by_test_id("login-form")
    login_form.locator('input[name="username"]').fill("alice")
    login_form.locator('input[name="password"]').fill("alice-demo")
    login_form.locator('button[type="submit"]').click()
    expect(status(page)).to_have_attribute("data-state", "live")
    assert len(proxy.sockets) == 2


def test_refused_token_is_forgotten_so_a_reload_shows_the_login(page, server):
    proxy = Proxy()
    page.route_web_socket(WS_PATTERN, proxy)
    login_live(page, server)
    proxy.sockets[0].close(code=4401, reason="token expired")
    expect(status(page)).to_have_attribute("data-state", "auth-required")
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-app", "ready")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    assert len(proxy.sockets) == 1
