"""Network faults in the browser: offline, a dead link the browser does not notice, a throttled link."""

import pytest
from playwright.sync_api import expect

from .harness import pick_move
from .pages import events, login_live, status, story

DEAD_LINK = {
    "offline": True,
    "matchedNetworkConditions": [
        {"urlPattern": "", "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    ],
}
HEALTHY_LINK = {"offline": False, "matchedNetworkConditions": []}


def test_offline_is_shown_at_once_and_online_catches_up(page, context, server, api):
    login_live(page, server)
    target, to = pick_move(api.stories("apollo"))
    context.set_offline(True)
    try:
        # the socket stays OPEN when Chromium goes offline: the page must react to the `offline` event
        expect(status(page)).to_have_attribute("data-state", "offline", timeout=2000)
        expect(page.get_by_test_id("freshness")).to_contain_text("Data as of")
        api.move_story(target["id"], to)  # changed while the page cannot hear about it
        expect(story(page, target["id"])).to_have_attribute("data-status", target["status"])
    finally:
        context.set_offline(False)
    expect(status(page)).to_have_attribute("data-state", "live", timeout=5000)
    expect(story(page, target["id"])).to_have_attribute("data-status", to)


@pytest.mark.server_env(DASHBOARD_RECONNECT_MAX_ATTEMPTS="30")
def test_dead_network_while_browser_believes_online_trips_the_heartbeat(page, context, server, api):
    login_live(page, server)
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditionsByRule", DEAD_LINK)
    try:
        assert page.evaluate("navigator.onLine") is True
        expect(status(page)).to_have_attribute("data-state", "reconnecting")
        assert page.evaluate("navigator.onLine") is True
    finally:
        cdp.send("Network.emulateNetworkConditionsByRule", HEALTHY_LINK)
    expect(status(page)).to_have_attribute("data-state", "live", timeout=15_000)
    target, to = pick_move(api.stories("apollo"))
    api.move_story(target["id"], to)
    expect(story(page, target["id"])).to_have_attribute("data-status", to)


@pytest.mark.server_env(DASHBOARD_HEARTBEAT_INTERVAL_MS="5000", DASHBOARD_CONNECT_TIMEOUT_MS="10000")
def test_throttled_link_stays_correct_without_duplicate_events(page, context, server, api):
    login_live(page, server)
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 150, "downloadThroughput": 4000, "uploadThroughput": 4000},
    )
    stories = sorted(api.stories("apollo"), key=lambda s: s["id"])[:3]
    order = ["todo", "in_progress", "review", "done", "blocked"]
    expected = {}
    for item in stories:
        to = order[(order.index(item["status"]) + 1) % len(order)]
        api.move_story(item["id"], to)
        expected[item["id"]] = to
    for story_id, to in expected.items():
        expect(story(page, story_id)).to_have_attribute("data-status", to, timeout=20_000)
    moved = events(page, "story.status.changed")
    expect(moved).to_have_count(len(expected), timeout=20_000)
    keys = moved.evaluate_all("els => els.map(e => e.dataset.projectId + ':' + e.dataset.seq)")
    assert len(set(keys)) == len(keys)
    expect(status(page)).to_have_attribute("data-state", "live")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
