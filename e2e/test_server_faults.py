"""Server faults: SIGKILL, SIGTERM (graceful restart), SIGSTOP (hung) and a server that stays down."""

import pytest
from playwright.sync_api import expect

from .harness import pick_move
from .pages import events, login_live, status, story

RECOVERY_MS = 20_000


def move_and_see_it(page, api, project_id="apollo"):
    """A change made through REST after recovery reaches the page: the subscription is back."""
    target, to = pick_move(api.stories(project_id))
    before = events(page, "story.status.changed").count()
    api.move_story(target["id"], to)
    expect(story(page, target["id"])).to_have_attribute("data-status", to)
    expect(events(page, "story.status.changed")).to_have_count(before + 1)


@pytest.mark.server_env(DASHBOARD_RECONNECT_MAX_ATTEMPTS="30")
@pytest.mark.parametrize("query", ["", "?runtime=pyodide"], ids=["micropython", "pyodide"])
def test_sigkill_then_restart_on_same_port_goes_live_and_resubscribes(page, server, api, query):
    login_live(page, server, query=query)
    server.kill()
    expect(status(page)).to_have_attribute("data-state", "reconnecting")
    expect(status(page)).to_have_attribute("data-close-code", "1006")
    expect(page.get_by_test_id("freshness")).to_contain_text("Data as of")
    expect(page.get_by_test_id("retry-button")).to_be_visible()

    server.restart()
    expect(status(page)).to_have_attribute("data-state", "live", timeout=RECOVERY_MS)
    expect(page.get_by_test_id("freshness")).to_have_text("Live")
    move_and_see_it(page, api)


@pytest.mark.server_env(DASHBOARD_RESTART_WINDOW_MS="3000", DASHBOARD_RECONNECT_MAX_ATTEMPTS="30")
def test_sigterm_restart_hint_is_honoured(page, server, api, ws_log):
    login_live(page, server)
    server.terminate()
    expect(status(page)).to_have_attribute("data-close-code", "1012")
    ws_log.wait_for("fail")
    hints = ws_log.records("restart-hint")
    # (a retry that lands while the old process still drains may get a second hint)
    assert hints and all(hint["delayMs"] == 3000 for hint in hints)
    # the first retry after the 1012 close is scheduled inside the hinted window
    retries = [r for r in ws_log.records("fail") if r.get("closeCode") == 1012]
    assert retries and 0 <= retries[0]["delayMs"] <= 3000

    server.restart()
    expect(status(page)).to_have_attribute("data-state", "live", timeout=RECOVERY_MS)
    move_and_see_it(page, api)


@pytest.mark.server_env(DASHBOARD_RECONNECT_MAX_ATTEMPTS="30")
def test_hung_server_is_detected_then_recovered(page, server, api):
    login_live(page, server)
    server.pause()
    try:
        # no close arrives: only the heartbeat watchdog can notice (2 x 1000 ms here)
        expect(status(page)).to_have_attribute("data-state", "reconnecting")
        expect(page.get_by_test_id("freshness")).to_contain_text("Data as of")
    finally:
        server.resume()
    expect(status(page)).to_have_attribute("data-state", "live", timeout=RECOVERY_MS)
    move_and_see_it(page, api)


def test_server_down_suspends_after_max_attempts_then_retry_goes_live(page, server, api):
    login_live(page, server)
    server.kill()
    expect(status(page)).to_have_attribute("data-state", "suspended")
    assert int(status(page).get_attribute("data-attempt")) >= 3  # DASHBOARD_RECONNECT_MAX_ATTEMPTS
    retry = page.get_by_test_id("retry-button")
    expect(retry).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("Press Retry")

    server.restart()
    retry.click()
    expect(status(page)).to_have_attribute("data-state", "live")
    expect(retry).to_be_hidden()
    move_and_see_it(page, api)
