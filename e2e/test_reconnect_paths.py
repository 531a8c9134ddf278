"""Reconnect paths proven in the browser: a really expired token, a slow mobile link through a SIGKILL, a handshake
that never answers, and the exact backoff table read from the console records."""

import re

import pytest
from client.logtext import seconds
from playwright.sync_api import expect

from .harness import pick_move
from .netem import ShapedLink
from .pages import events, login_live, open_dashboard, open_project, sign_in, status, story

QUIET_WINDOW_MS = 3000


@pytest.fixture
def link(server):
    shaped = ShapedLink(server.port).start()
    yield shaped
    shaped.stop()


@pytest.mark.server_env(DASHBOARD_TOKEN_TTL_S="4", DASHBOARD_REFRESH_TTL_S="1")  # the refresh cookie is gone first
def test_really_expired_token_asks_for_sign_in_without_a_reconnect_loop(page, server, ws_log):
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    login_live(page, server)
    assert len(sockets) == 1
    # No refresh is possible: the token simply runs out; the server closes 4401 at its `exp`.
    expect(status(page)).to_have_attribute("data-state", "auth-required", timeout=10_000)
    expect(status(page)).to_have_attribute("data-close-code", "4401")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(page.locator("#login-notice")).to_contain_text("sign in again")
    page.wait_for_timeout(QUIET_WINDOW_MS)
    assert len(sockets) == 1, "no reconnect with a token that cannot work"
    assert [r["closeCode"] for r in ws_log.records("closed")] == [4401]
    assert ws_log.records("fail") == []
    sign_in(page)
    expect(status(page)).to_have_attribute("data-state", "live")
    assert len(sockets) == 2


@pytest.mark.server_env(DASHBOARD_HEARTBEAT_INTERVAL_MS="2000", DASHBOARD_CONNECT_TIMEOUT_MS="15000",
                        DASHBOARD_RECONNECT_MAX_ATTEMPTS="30")
def test_slow_mobile_link_goes_live_shows_its_round_trip_and_survives_a_server_kill(page, server, api, link):
    open_dashboard(page, link.url)
    link.throttle(rtt_ms=400, bytes_per_s=50_000)  # before signing in
    sign_in(page)
    expect(status(page)).to_have_attribute("data-state", "live", timeout=30_000)
    open_project(page, "apollo")
    status(page).click()
    rtt = page.get_by_test_id("details-rtt")
    expect(rtt).to_have_text(re.compile(r"^\d+ ms$"), timeout=10_000)  # after the first heartbeat
    assert int(rtt.inner_text().split()[0]) >= 300, "the socket itself is throttled"
    page.keyboard.press("Escape")

    server.kill()
    expect(status(page)).to_have_attribute("data-state", "reconnecting")
    target, to = pick_move([s for s in api_stories_after_restart(server, api)])
    expect(status(page)).to_have_attribute("data-state", "live", timeout=30_000)
    api.move_story(target["id"], to)  # made while the page resubscribes: an event, or the refetch after recovered:false
    expect(story(page, target["id"])).to_have_attribute("data-status", to, timeout=20_000)
    again, to_again = pick_move(api.stories("apollo"))
    before = events(page, "story.status.changed").count()
    api.move_story(again["id"], to_again)  # subscribed again by now: it arrives as a live event
    expect(story(page, again["id"])).to_have_attribute("data-status", to_again, timeout=20_000)
    expect(events(page, "story.status.changed")).to_have_count(before + 1, timeout=20_000)
    board = {s["id"]: s["status"] for s in api.stories("apollo")}
    shown = page.locator('[data-testid="story"]').evaluate_all("els => els.map(e => [Number(e.dataset.storyId), e.dataset.status])")
    assert dict(shown) == board, "the board matches the server after the restart"


def api_stories_after_restart(server, api):
    server.restart()
    return api.stories("apollo")


@pytest.mark.server_env(DASHBOARD_CONNECT_TIMEOUT_MS="1500", DASHBOARD_RECONNECT_MAX_ATTEMPTS="30")
def test_handshake_black_hole_fails_each_attempt_after_the_connect_timeout(page, server, link, ws_log):
    link.black_hole_websockets()
    open_dashboard(page, link.url)
    sign_in(page)
    badge = status(page)
    expect(badge).to_have_attribute("data-attempt", "3", timeout=20_000)
    expect(badge).to_have_attribute("data-state", "reconnecting")
    fails = ws_log.wait_for("fail", 3)
    dials = [r for r in ws_log.records() if r.get("event") in ("start", "dial")]
    assert all(f["reason"] == "connect timeout" for f in fails)
    assert [f["attempt"] for f in fails[:3]] == [1, 2, 3]
    for dial, fail in zip(dials, fails):
        waited = fail["at"] - dial["at"]
        assert 1500 <= waited < 1500 + 1000, waited  # given up at DASHBOARD_CONNECT_TIMEOUT_MS, not before
    assert link.handshakes_swallowed >= 3
    assert ws_log.records("open") == [] and ws_log.records("connected") == []  # never opened


@pytest.mark.server_env(DASHBOARD_RECONNECT_JITTER="none", DASHBOARD_RECONNECT_BASE_MS="250",
                        DASHBOARD_RECONNECT_MAX_MS="2000", DASHBOARD_RECONNECT_MAX_ATTEMPTS="6")
def test_backoff_without_jitter_follows_the_doubling_table_up_to_the_cap(page, server, ws_log):
    login_live(page, server)
    mark = len(ws_log)
    server.kill()
    expect(status(page)).to_have_attribute("data-state", "suspended", timeout=20_000)
    records = ws_log.records(start=mark)
    fails = [r for r in records if r.get("event") == "fail"]
    dials = [r for r in records if r.get("event") == "dial"]
    table = [250, 500, 1000, 2000, 2000, 2000]
    assert [f["delayMs"] for f in fails] == table
    gaps = [b["at"] - a["at"] for a, b in zip([records[0], *dials], dials)]
    for gap, delay in zip(gaps, table):
        assert delay <= gap < delay + 1000, (gaps, table)
    for fail, dial in zip(fails, dials):
        assert dial["at"] - fail["at"] >= fail["delayMs"]
    # the readable lines say the same, at warning level
    texts = [text for kind, text in ws_log.lines(mark) if kind == "warning" and text.startswith("[WebSocket] Reconnecting in")]
    assert texts[:4] == [f"[WebSocket] Reconnecting in {seconds(d)} (attempt {i}/6)" for i, d in enumerate(table[:4], 1)]
    assert ("error", "[WebSocket] No answer after 6 attempts; retrying every 5 s") in ws_log.lines(mark)
    assert ("warning", "[WebSocket] Closed 1006") in ws_log.lines(mark)
