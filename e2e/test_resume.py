"""Zero-loss resume in the browser: a gap the server still holds is replayed, a lost history is refetched.

1. Offline gap: the page goes offline (`context.set_offline`), another client makes eight events' worth of
   changes over REST, the page comes back. It resubscribes with `since`, the server replays exactly
   the missed events (`recovered: true`), and the board shows every change while every REST request
   the page makes after reconnecting is still held unanswered (`page.route`): the data came from the
   replay, not from a refetch. The event log gains one entry per missed event, none twice; the only
   reads are the per-event invalidations docs/client.md describes, at most one per watched key.
2. Server restart with the in-process bus: history and epoch are gone, so the resume is refused
   (`recovered: false`), nothing is replayed, and the page refetches the project over REST; changes
   made while it was away show up through that refetch, and live events continue from the new head.

Every change through `backend.changes` publishes two events (the change, then `project.updated`).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Route, expect

from .pages import escalation, events, login_live, next_status, status, story
from .records import EVENTS_PER_CHANGE, PROJECTS, ApiTraffic, alice_projects, logged_events, wait_for_subscribed

STORIES = "/api/projects/apollo/stories"
ESCALATIONS = "/api/projects/apollo/escalations"


def test_offline_gap_is_replayed_not_refetched(page, context, server, api, ws_log):
    traffic = ApiTraffic(page)
    login_live(page, server)
    projects = alice_projects(api)
    assert "apollo" in projects and len(projects) >= 2
    wait_for_subscribed(page, ws_log, projects)
    warmup = sorted(api.stories("apollo"), key=lambda s: s["id"])[-1]
    api.move_story(warmup["id"], next_status(warmup["status"]))  # a live change: the position is past 0
    expect(events(page)).to_have_count(EVENTS_PER_CHANGE)
    logged_before = logged_events(page)
    position = logged_before[-1][2]  # the page's resume position for apollo
    traffic.wait_quiet(page)

    context.set_offline(True)
    try:
        expect(status(page)).to_have_attribute("data-state", "offline", timeout=2000)
        # another client changes apollo meanwhile (httpx runs in this process, unaffected by set_offline)
        moved = {}
        for item in sorted(api.stories("apollo"), key=lambda s: s["id"])[:3]:
            moved[item["id"]] = next_status(item["status"])
            assert api.move_story(item["id"], moved[item["id"]])["status"] == moved[item["id"]]
        raised = api.create_escalation("apollo", "Raised while the page was offline")
        missed = EVENTS_PER_CHANGE * (len(moved) + 1)
        for story_id in moved:  # nothing reached the page yet
            expect(story(page, story_id)).not_to_have_attribute("data-status", moved[story_id])
        expect(escalation(page, raised["id"])).to_have_count(0)

        # from here on: count the page's REST requests and hold every one of them unanswered, so
        # whatever the board shows after reconnecting can only have come through the WebSocket
        held: list[Route] = []
        holding = [True]

        def hold(route: Route) -> None:
            if holding[0]:
                held.append(route)
            else:
                route.continue_()

        page.route("**/api/**", hold)
        mark_req, mark_log = traffic.mark(), len(ws_log)
    finally:
        context.set_offline(False)
    expect(status(page)).to_have_attribute("data-state", "live", timeout=5000)

    for story_id, to in moved.items():
        expect(story(page, story_id)).to_have_attribute("data-status", to)
    expect(escalation(page, raised["id"])).to_have_attribute("data-status", "open")
    expect(escalation(page, raised["id"])).to_contain_text("Raised while the page was offline")
    expect(events(page)).to_have_count(len(logged_before) + missed)
    assert len(traffic.in_flight) == len(traffic.started) - mark_req  # no REST answer since reconnecting

    # the server replayed the gap: one `subscribed` per project, with `since`, recovered
    again = wait_for_subscribed(page, ws_log, projects, start=mark_log)
    assert again["apollo"]["recovered"] is True, again["apollo"]
    assert (again["apollo"]["replayed"], again["apollo"]["seq"]) == (missed, position + missed), again["apollo"]
    for pid in projects:
        assert again[pid]["recovered"] is True, again[pid]
    assert not ws_log.records("gap", mark_log) and not ws_log.records("epoch", mark_log)

    # the event log gained exactly the missed events, in order, each once
    gained = logged_events(page)[len(logged_before) :]
    assert [(pid, seq) for _, pid, seq in gained] == [("apollo", s) for s in range(position + 1, position + missed + 1)]
    assert [kind for kind, _, _ in gained] == (["story.status.changed", "project.updated"] * len(moved)
                                                + ["escalation.created", "project.updated"])

    # The resume refetches nothing (docs/client.md: `recovered: true` invalidates no key), and every replayed
    # event arrived in sequence carrying its whole object, so no watched key needed a REST read either.
    traffic.wait_quiet(page, held=True)  # any coalesced refetch would be issued (and held) by now
    assert len(held) == len(traffic.started) - mark_req
    gets = traffic.gets_since(mark_req)
    assert gets == [], gets

    # let the held reads through: the board stays right and nothing is delivered twice
    holding[0] = False
    for route in held:
        route.continue_()
    page.unroute("**/api/**", hold)
    traffic.wait_quiet(page)
    assert traffic.gets_since(mark_req) == gets  # no further reads
    for story_id, to in moved.items():
        expect(story(page, story_id)).to_have_attribute("data-status", to)
    expect(escalation(page, raised["id"])).to_have_attribute("data-status", "open")
    assert logged_events(page) == logged_before + gained
    expect(status(page)).to_have_attribute("data-state", "live")


@pytest.mark.server_env(DASHBOARD_SUSPENDED_RETRY_MS="600000")
def test_server_restart_is_not_recovered_and_refetches(page, server, api, ws_log):
    # With 3 fast attempts the page is `suspended` within seconds of the kill and, with a 10-minute
    # suspended retry, dials again only when Retry is pressed: the changes below are all made on the
    # restarted server before the page reconnects, with no race.
    traffic = ApiTraffic(page)
    login_live(page, server)
    projects = alice_projects(api)
    wait_for_subscribed(page, ws_log, projects)
    stories = sorted(api.stories("apollo"), key=lambda s: s["id"])
    warmup = stories[-1]
    api.move_story(warmup["id"], next_status(warmup["status"]))  # a live change: the position is now past 0
    expect(events(page)).to_have_count(EVENTS_PER_CHANGE)
    old_position = logged_events(page)[-1][2]
    traffic.wait_quiet(page)
    logged_before = logged_events(page)

    server.kill()  # SIGKILL: the in-process bus, its history and its epoch are gone
    expect(status(page)).to_have_attribute("data-state", "suspended")
    expect(page.get_by_test_id("retry-button")).to_be_visible()
    server.restart()  # same port, same database, same JWT secret; a new, empty bus
    moved = {}
    for item in stories[:3]:
        moved[item["id"]] = next_status(item["status"])
        api.move_story(item["id"], moved[item["id"]])
    raised = api.create_escalation("apollo", "Raised while the server was down")
    head = EVENTS_PER_CHANGE * (len(moved) + 1)  # the new bus numbers apollo's events from 1 again
    expect(status(page)).to_have_attribute("data-state", "suspended")  # still away: no dial without Retry

    mark_req, mark_log = traffic.mark(), len(ws_log)
    page.get_by_test_id("retry-button").click()
    expect(status(page)).to_have_attribute("data-state", "live")

    again = wait_for_subscribed(page, ws_log, projects, start=mark_log)
    for pid in projects:
        assert again[pid]["recovered"] is False and again[pid]["replayed"] == 0, again[pid]
    assert again["apollo"]["seq"] == head, (again["apollo"], old_position)

    # nothing replayed, so the changes reach the board through the refetch of apollo's queries
    for story_id, to in moved.items():
        expect(story(page, story_id)).to_have_attribute("data-status", to)
    expect(escalation(page, raised["id"])).to_have_attribute("data-status", "open")
    traffic.wait_quiet(page)
    gets = traffic.gets_since(mark_req)
    assert STORIES in gets and ESCALATIONS in gets and PROJECTS in gets, gets
    assert set(gets) == {STORIES, ESCALATIONS, PROJECTS}, gets  # watched keys only; borealis' board is not open
    assert logged_events(page) == logged_before  # the missed events were not delivered

    # live events continue right after the new head
    target = next(item for item in api.stories("apollo") if item["id"] == stories[3]["id"])
    api.move_story(target["id"], next_status(target["status"]))
    expect(story(page, target["id"])).to_have_attribute("data-status", next_status(target["status"]))
    expect(events(page)).to_have_count(len(logged_before) + EVENTS_PER_CHANGE)
    assert logged_events(page)[len(logged_before) :] == [
        ("story.status.changed", "apollo", head + 1), ("project.updated", "apollo", head + 2)]
