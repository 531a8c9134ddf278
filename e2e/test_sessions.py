"""Sessions that last all day (issue 12), in Chromium against a server whose access tokens live 4 s
(`DASHBOARD_TOKEN_TTL_S=4`): the page refreshes its token over REST (refresh cookie) and hands it to the open
socket in band, so it stays live on one socket; a tab frozen past the expiry comes back live; sign-out in one
tab signs every tab out and kills the token on the server; a revoked session (a stolen refresh value replayed)
shows the sign-in form with a message."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from playwright.sync_api import expect

from .harness import USERS, pick_move, wait_until
from .pages import login_live, sign_in, status, story
from .records import metric
from .test_tabs import open_tabs
from .wslog import WsLog

SHORT_TOKENS = pytest.mark.server_env(DASHBOARD_TOKEN_TTL_S="4")
ACCEPTED = ("websocket_connections_total", {"status": "accepted"})
COOKIE = "dashboard_refresh"
# Records, in page time, every moment the sign-in form is shown (it must never be, for a refresh).
WATCH_LOGIN_JS = """() => {
  const view = document.getElementById("login-view");
  const seen = window.loginShown = [];
  new MutationObserver(() => { if (!view.hidden) seen.push(performance.now()); })
    .observe(view, {attributes: true, attributeFilter: ["hidden"]});
}"""


class Outsider:
    """Another REST client (httpx) that keeps its own 4 s token fresh with the refresh cookie."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=10.0)
        response = self.client.post("/api/auth/login", json={"username": "alice", "password": USERS["alice"]})
        response.raise_for_status()
        self.token = response.json()["token"]

    def refresh(self) -> None:
        response = self.client.post("/api/auth/refresh", json={})
        response.raise_for_status()
        self.token = response.json()["token"]

    def stories(self, project_id: str) -> list[dict]:
        self.refresh()
        response = self.client.get(f"/api/projects/{project_id}/stories", headers=self.bearer())
        response.raise_for_status()
        return response.json()

    def move(self, story_id: int, to: str) -> None:
        response = self.client.patch(f"/api/stories/{story_id}", json={"status": to}, headers=self.bearer())
        response.raise_for_status()

    def bearer(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": "Bearer " + (token or self.token)}

    def close(self) -> None:
        self.client.close()


def rest_status(base_url: str, token: str) -> int:
    return httpx.get(base_url + "/api/projects", headers={"Authorization": "Bearer " + token}, timeout=5.0).status_code


def stored_token(page) -> str:
    return page.evaluate("localStorage.getItem('dashboard.token')")


def unauthorized(page) -> list[str]:
    """Every REST answer 401 the page gets from now on."""
    seen: list[str] = []
    page.on("response", lambda r: seen.append(r.url) if "/api/" in r.url and r.status == 401 else None)
    return seen


@SHORT_TOKENS
def test_the_page_stays_live_for_30_s_on_one_socket_while_its_4_s_token_is_refreshed(page, server):
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    refused = unauthorized(page)
    log = WsLog(page)
    login_live(page, server)
    page.evaluate(WATCH_LOGIN_JS)
    accepted = server.metric(*ACCEPTED)
    assert accepted == 1 and len(sockets) == 1
    outsider = Outsider(server.url)
    started = time.monotonic()
    moves = 0
    while time.monotonic() - started < 30:
        # every few seconds a change made elsewhere must reach the page over the same socket
        target, to = pick_move(outsider.stories("apollo"))
        outsider.move(target["id"], to)
        expect(story(page, target["id"])).to_have_attribute("data-status", to)
        moves += 1
        page.wait_for_timeout(2500)  # the test is about time passing: ~10 token lifetimes over the loop
    expect(status(page)).to_have_attribute("data-state", "live")
    assert server.metric(*ACCEPTED) == accepted, "the socket never dropped for a refresh"
    assert len(sockets) == 1
    assert refused == [], refused
    assert page.evaluate("window.loginShown") == []
    refreshed = log.records("session.refreshed")
    assert len(refreshed) >= 30 // 4, f"{len(refreshed)} refreshes in 30 s"
    assert len(log.records("auth-accepted")) >= len(refreshed) - 1  # each new token went in band
    assert log.records("session.refresh-failed") == []
    assert metric(server.url, "dashboard_auth_refresh_total", result="ok") >= len(refreshed)
    assert moves >= 8
    outsider.close()


@SHORT_TOKENS
def test_a_tab_frozen_past_its_token_expiry_comes_back_live_without_the_sign_in_form(cdp_browser, server):
    page = cdp_browser.contexts[0].new_page()
    log = WsLog(page)
    login_live(page, server)
    page.evaluate(WATCH_LOGIN_JS)
    browser_cdp = cdp_browser.new_browser_cdp_session()
    other = browser_cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    page.wait_for_function("document.visibilityState === 'hidden'", polling=100)
    page_cdp = page.context.new_cdp_session(page)
    page_cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
    token = stored_token(page)  # storage can still be read from outside the frozen page
    # frozen until the server refuses the token the page holds (its expiry passed; nothing refreshed it)
    wait_until(lambda: rest_status(server.url, token) == 401, 10, interval_s=0.2, message="the frozen tab's token expired")
    mark = len(log)
    page_cdp.send("Page.setWebLifecycleState", {"state": "active"})  # `resume`, still hidden
    expect(status(page)).to_have_attribute("data-state", "live")
    assert log.records("session.refreshed", mark), "came back through a refresh"
    browser_cdp.send("Target.closeTarget", {"targetId": other})
    page.bring_to_front()
    page.wait_for_function("document.visibilityState === 'visible'", polling=100)
    expect(status(page)).to_have_attribute("data-state", "live")
    assert page.evaluate("window.loginShown") == []
    expect(page.get_by_test_id("login-form")).to_be_hidden()
    assert stored_token(page) != token


@SHORT_TOKENS
def test_two_tabs_refresh_once_per_token_and_never_trip_reuse_detection(context, server):
    a, b = open_tabs(context, server, count=2)
    logs = [WsLog(a), WsLog(b)]
    before = metric(server.url, "dashboard_auth_refresh_total", result="ok")
    started = time.monotonic()
    wait_until(lambda: metric(server.url, "dashboard_auth_refresh_total", result="ok") - before >= 4, 20,
               message="four refreshes")
    elapsed = time.monotonic() - started
    for page in (a, b):
        page.bring_to_front()  # a wake-up in each tab: at most one of them refreshes
        expect(status(page)).to_have_attribute("data-state", "live")
    page_refreshes = sum(len(log.records("session.refreshed")) for log in logs)
    adopted = sum(len(log.records("session.adopted")) for log in logs)
    ok = metric(server.url, "dashboard_auth_refresh_total", result="ok") - before
    assert ok <= elapsed / 2.8 + 3, f"{ok} refreshes in {elapsed:.1f} s: both tabs refreshed"
    assert adopted >= page_refreshes - 2, "the other tab took the stored token instead of refreshing"
    assert metric(server.url, "dashboard_auth_refresh_total", result="reused") == 0
    assert stored_token(a) == stored_token(b)
    for page in (a, b):
        expect(page.get_by_test_id("login-form")).to_be_hidden()


@pytest.mark.server_env(DASHBOARD_TOKEN_TTL_S="60")  # long enough that a 401 proves the sign-out, not the expiry
def test_sign_out_in_one_tab_signs_every_tab_out_within_2_s_and_kills_the_token(context, server):
    a, b = open_tabs(context, server, count=2)
    token = stored_token(a)
    assert rest_status(server.url, token) == 200
    a.get_by_test_id("logout-button").click()
    clicked = time.monotonic()
    expect(a.get_by_test_id("login-form")).to_be_visible()
    expect(b.get_by_test_id("login-form")).to_be_visible(timeout=2000)
    assert time.monotonic() - clicked <= 2.5
    expect(b.locator("#login-notice")).to_contain_text("signed out in another tab")
    wait_until(lambda: server.metric("websocket_active_connections") == 0, 2, message="every tab disconnected")
    wait_until(lambda: rest_status(server.url, token) == 401, 5, message="the old token is refused")
    assert stored_token(b) is None
    assert [c for c in context.cookies() if c["name"] == COOKIE] == []  # the server deleted the refresh cookie


@SHORT_TOKENS
@pytest.mark.parametrize("query", ["", "?runtime=pyodide"], ids=["micropython", "pyodide"])
def test_a_revoked_session_reuse_detected_shows_the_sign_in_form_with_a_message(page, server, query):
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    log = WsLog(page)
    login_live(page, server, query=query)
    first = next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE)
    log.wait_for("session.refreshed", timeout_ms=8000)  # the page rotated its refresh cookie since
    assert next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE) != first
    stolen = httpx.post(server.url + "/api/auth/refresh", json={}, headers={"Cookie": f"{COOKIE}={first}"}, timeout=5.0)
    assert stolen.status_code == 401 and stolen.json()["reason"] == "reused"
    expect(page.get_by_test_id("login-form")).to_be_visible(timeout=3000)
    expect(page.locator("#login-notice")).to_contain_text("sign in again")
    expect(status(page)).to_have_attribute("data-state", "auth-required")
    assert metric(server.url, "dashboard_auth_refresh_total", result="reused") == 1
    page.wait_for_timeout(2000)  # no reconnect and no refresh loop can only be seen over a window of time
    assert len(sockets) == 1
    assert len(log.records("session.refresh-refused")) <= 1


def owed_signouts(page) -> list[str]:
    return json.loads(page.evaluate("localStorage.getItem('dashboard.signout-owed')") or "[]")


@pytest.mark.server_env(DASHBOARD_TOKEN_TTL_S="60")
def test_a_sign_out_made_offline_ends_the_session_once_the_network_is_back(context, page, server):
    login_live(page, server)
    token = stored_token(page)
    context.set_offline(True)
    page.get_by_test_id("logout-button").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    assert stored_token(page) is None
    assert owed_signouts(page) == [token]  # owed: the server has not heard
    assert rest_status(server.url, token) == 200

    context.set_offline(False)  # `online`: the page sends it now, not at its retry timer (5 s)
    wait_until(lambda: rest_status(server.url, token) == 401, 4, message="the session ended once back online")
    wait_until(lambda: owed_signouts(page) == [], 2, message="nothing owed any more")


@pytest.mark.server_env(DASHBOARD_TOKEN_TTL_S="60")
def test_a_sign_out_sent_after_a_new_sign_in_ends_only_the_old_session(context, page, server):
    page.route("**/api/auth/logout", lambda route: route.abort("internetdisconnected"))  # the server never hears
    login_live(page, server)
    old = stored_token(page)
    page.get_by_test_id("logout-button").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    assert owed_signouts(page) == [old]

    sign_in(page, "alice")  # a new session, and a new refresh cookie
    expect(status(page)).to_have_attribute("data-state", "live")
    new = stored_token(page)
    cookie = [c["value"] for c in context.cookies() if c["name"] == COOKIE]
    page.unroute("**/api/auth/logout")
    page.reload()  # the next page load sends what is owed
    expect(status(page)).to_have_attribute("data-state", "live")
    wait_until(lambda: rest_status(server.url, old) == 401, 5, message="the old session ended")
    wait_until(lambda: owed_signouts(page) == [], 2, message="nothing owed any more")
    assert rest_status(server.url, new) == 200
    assert [c["value"] for c in context.cookies() if c["name"] == COOKIE] == cookie  # the new sign-in's cookie stays
    assert page.evaluate("fetch('/api/auth/refresh', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'}).then(r => r.status)") == 200
