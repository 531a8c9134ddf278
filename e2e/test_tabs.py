"""One WebSocket per browser shared by every tab (web/client/tabs.py): one browser context is one profile,
each page a tab. The server's own metrics count the sockets."""

import time

from playwright.sync_api import expect

from .harness import pick_move, wait_until
from .pages import BOOT_TIMEOUT_MS, login_live, open_dashboard, status, story
from .records import ApiTraffic, wait_for_subscribed
from .wslog import WsLog

ACCEPTED = ("websocket_connections_total", {"status": "accepted"})


def open_tabs(context, server, count=3, query=""):
    """The first tab signs in and leads; the others start from the stored session and follow it.

    Returns once every tab is settled: its own subscription to apollo acknowledged (a follower shows its
    leader's `live` before that) and its first reads done, so that what a test counts afterwards is its own."""
    first = context.new_page()
    watched = [(first, WsLog(first), ApiTraffic(first))]
    login_live(first, server, query=query)
    for _ in range(count - 1):
        page = context.new_page()
        watched.append((page, WsLog(page), ApiTraffic(page)))
        open_dashboard(page, server.url, query)
        expect(status(page)).to_have_attribute("data-state", "live")
    for page, log, traffic in watched:
        wait_for_subscribed(page, log, ["apollo"])
        traffic.wait_quiet(page)
    return [page for page, _, _ in watched]


def role(page):
    return status(page).get_attribute("data-role")


def active_sockets(server):
    return server.metric("websocket_active_connections")


def wait_for_sockets(server, count, timeout_s=10.0):
    wait_until(lambda: active_sockets(server) == count, timeout_s, message=f"{count} open socket(s) on the server")


def rest_reads(page):
    """Every REST GET the page makes from now on."""
    reads = []
    page.on("request", lambda req: reads.append(req.url) if "/api/" in req.url and req.method == "GET" else None)
    return reads


def test_three_tabs_cost_the_server_one_socket_and_all_show_a_change(context, server, api):
    pages = open_tabs(context, server)
    expect(status(pages[0])).to_have_attribute("data-role", "leader")
    for page in pages[1:]:
        expect(status(page)).to_have_attribute("data-role", "follower")
    wait_for_sockets(server, 1)
    assert server.metric(*ACCEPTED) == 1

    target, to = pick_move(api.stories("apollo"))
    api.move_story(target["id"], to)
    for page in pages:
        expect(story(page, target["id"])).to_have_attribute("data-status", to)
    # a change made in a follower goes over its own REST call and reaches every tab through the one socket
    other, to2 = pick_move([s for s in api.stories("apollo") if s["id"] != target["id"]])
    story(pages[2], other["id"]).locator("select").select_option(to2)
    for page in pages:
        expect(story(page, other["id"])).to_have_attribute("data-status", to2)
    assert active_sockets(server) == 1


def test_closing_the_leader_hands_over_within_3s_and_loses_nothing(context, server, api):
    leader, *followers = open_tabs(context, server)
    wait_for_sockets(server, 1)
    recovered = server.metric("websocket_recoveries_total", {"result": "recovered"})
    reads = {id(page): rest_reads(page) for page in followers}

    closed_at = time.monotonic()
    leader.close()
    target, to = pick_move(api.stories("apollo"))
    api.move_story(target["id"], to)  # made during the hand-over

    def handed_over():
        roles = sorted(role(page) for page in followers)
        return roles == ["follower", "leader"] and active_sockets(server) == 1

    wait_until(handed_over, 10, interval_s=0.02, message="a new leader with one socket")
    assert time.monotonic() - closed_at <= 3.0
    for page in followers:
        expect(status(page)).to_have_attribute("data-state", "live")
        expect(story(page, target["id"])).to_have_attribute("data-status", to)
    assert server.metric("websocket_recoveries_total", {"result": "recovered"}) > recovered
    assert [reads[id(page)] for page in followers] == [[], []]  # resumed, nothing refetched
    assert active_sockets(server) == 1


STEAL_LINE = "[WebSocket] The tab holding the connection stopped answering; taking it over"


def console_of(page):
    lines = []
    page.on("console", lambda msg: lines.append(msg.text))
    return lines


def test_a_frozen_leader_is_replaced_and_follows_when_it_wakes(cdp_browser, server, api):
    context = cdp_browser.contexts[0]
    leader, first, second = open_tabs(context, server)
    wait_for_sockets(server, 1)
    assert role(leader) == "leader"
    first.bring_to_front()  # the user looks at another tab; the leader is a background tab now
    first.wait_for_function("document.visibilityState === 'visible'", polling=100)
    console = console_of(first)

    cdp = context.new_cdp_session(leader)
    cdp.send("Page.setWebLifecycleState", {"state": "frozen"})  # `freeze` runs first: bye, lock given back
    frozen_at = time.monotonic()
    target, to = pick_move(api.stories("apollo"))
    api.move_story(target["id"], to)
    expect(status(first)).to_have_attribute("data-role", "leader", timeout=5_000)
    assert time.monotonic() - frozen_at <= 5.0
    for page in (first, second):
        expect(story(page, target["id"])).to_have_attribute("data-status", to)
    assert not [line for line in console if line.startswith(STEAL_LINE)]  # handed over, not taken

    cdp.send("Page.setWebLifecycleState", {"state": "active"})
    expect(status(leader)).to_have_attribute("data-role", "follower")
    expect(status(leader)).to_have_attribute("data-state", "live")
    expect(story(leader, target["id"])).to_have_attribute("data-status", to)
    wait_for_sockets(server, 1)
    other, to2 = pick_move([s for s in api.stories("apollo") if s["id"] != target["id"]])
    api.move_story(other["id"], to2)
    for page in (leader, first, second):
        expect(story(page, other["id"])).to_have_attribute("data-status", to2)
    assert sorted(role(page) for page in (leader, first, second)) == ["follower", "follower", "leader"]
    assert active_sockets(server) == 1


def test_a_hung_leader_keeps_its_lock_and_is_taken_over_with_steal(cdp_browser, server, api):
    """A leader whose page stops running without `freeze` (here: paused in the debugger) still holds the
    lock; a follower that misses its beats takes the lock with `steal`, and the old leader follows once it
    runs again."""
    context = cdp_browser.contexts[0]
    leader, first, second = open_tabs(context, server)
    wait_for_sockets(server, 1)
    first.bring_to_front()
    first.wait_for_function("document.visibilityState === 'visible'", polling=100)
    console = console_of(first)

    cdp = context.new_cdp_session(leader)
    cdp.send("Debugger.enable")
    cdp.send("Debugger.pause")  # stops at its next statement: its next beat
    hung_at = time.monotonic()
    target, to = pick_move(api.stories("apollo"))
    api.move_story(target["id"], to)
    expect(status(first)).to_have_attribute("data-role", "leader", timeout=5_000)
    assert time.monotonic() - hung_at <= 5.0
    assert [line for line in console if line.startswith(STEAL_LINE)]
    for page in (first, second):
        expect(story(page, target["id"])).to_have_attribute("data-status", to)

    cdp.send("Debugger.resume")
    cdp.send("Debugger.disable")
    expect(status(leader)).to_have_attribute("data-role", "follower")
    expect(status(leader)).to_have_attribute("data-state", "live")
    expect(story(leader, target["id"])).to_have_attribute("data-status", to)
    wait_for_sockets(server, 1)
    assert sorted(role(page) for page in (leader, first, second)) == ["follower", "follower", "leader"]


def test_reloading_a_follower_keeps_one_socket(context, server, api):
    pages = open_tabs(context, server)
    wait_for_sockets(server, 1)
    pages[1].reload()
    expect(pages[1].locator("html")).to_have_attribute("data-app", "ready", timeout=BOOT_TIMEOUT_MS)
    expect(status(pages[1])).to_have_attribute("data-state", "live")
    expect(status(pages[1])).to_have_attribute("data-role", "follower")
    target, to = pick_move(api.stories("apollo"))
    api.move_story(target["id"], to)
    expect(story(pages[1], target["id"])).to_have_attribute("data-status", to)
    assert active_sockets(server) == 1 and server.metric(*ACCEPTED) == 1


def test_server_sigkill_with_three_tabs_makes_one_socket_come_back(context, server, api):
    pages = open_tabs(context, server)
    wait_for_sockets(server, 1)
    server.kill()
    for page in pages:
        expect(status(page)).not_to_have_attribute("data-state", "live")
    server.restart()
    for page in pages:
        expect(status(page)).to_have_attribute("data-state", "live", timeout=20_000)
    target, to = pick_move(api.stories("apollo"))
    api.move_story(target["id"], to)
    board = {s["id"]: s["status"] for s in api.stories("apollo")}
    for page in pages:
        expect(story(page, target["id"])).to_have_attribute("data-status", to)
        shown = page.locator('[data-testid="story"]').evaluate_all("els => els.map(e => [Number(e.dataset.storyId), e.dataset.status])")
        assert dict(shown) == board
    assert server.metric(*ACCEPTED) == 1  # the restarted server saw one socket from this browser
    assert active_sockets(server) == 1


def test_tabs_own_keeps_a_socket_per_tab(context, server):
    pages = open_tabs(context, server, count=2, query="?tabs=own")
    for page in pages:
        expect(status(page)).to_have_attribute("data-role", "own")
    wait_for_sockets(server, 2)
