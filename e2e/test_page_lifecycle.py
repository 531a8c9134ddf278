"""What browsers do to pages the user leaves: the back/forward cache and frozen background tabs.

Both tests use a Chromium this test starts itself (`cdp_browser`): pages Playwright launches are always
visible, cannot really be frozen, and have no back/forward cache (`--disable-back-forward-cache`).

1. Back/forward cache: the user navigates away and comes back. On `pagehide` the page closes its socket
   with 4001 (the server frees it at once); Chromium keeps the page, even through a garbage collection
   meanwhile (index.html holds the interpreter's finalizers); on `pageshow` (persisted) it dials at once and
   resumes with `since`.
2. A hidden tab that Chromium freezes (CDP `Page.setWebLifecycleState`): on `freeze` the page closes its
   socket with 4001 (the server does not wait for a heartbeat timeout); on `resume` it dials at once.

Either way the page is live again within 1 s of coming back (measured in the page, from the event's
`timeStamp` to the status change), the events missed meanwhile are replayed (`recovered: true`, each
once, in order) and the page makes no REST read.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .harness import wait_until
from .pages import escalation, login_live, next_status, status, story
from .records import (
    EVENTS_PER_CHANGE,
    ApiTraffic,
    alice_projects,
    logged_events,
    metric,
    ms_from_return_to_live,
    trace_lifecycle,
    wait_for_subscribed,
)
from .wslog import WsLog

GOING_AWAY = "4001"  # what the page closes with (WebSocket.close() refuses RFC 6455's 1001)
# A long first backoff: a page that only noticed its dead socket on return would need >= 250 ms and
# usually seconds to be live again; the lifecycle handling dials at once.
SLOW_BACKOFF = pytest.mark.server_env(DASHBOARD_RECONNECT_BASE_MS="4000", DASHBOARD_RECONNECT_MAX_MS="4000")


class Away:
    """A signed-in page with a known resume position; `leave` and `come_back` are the test's own."""

    def __init__(self, cdp_browser, server, api, query=""):
        self.server = server
        self.api = api
        self.page = cdp_browser.contexts[0].new_page()
        self.log = WsLog(self.page)
        self.traffic = ApiTraffic(self.page)
        login_live(self.page, server, query=query)
        self.projects = alice_projects(api)
        wait_for_subscribed(self.page, self.log, self.projects)
        warmup = sorted(api.stories("apollo"), key=lambda s: s["id"])[-1]
        api.move_story(warmup["id"], next_status(warmup["status"]))  # the resume position is past 0
        expect(self.page.get_by_test_id("event-item")).to_have_count(EVENTS_PER_CHANGE)
        self.logged_before = logged_events(self.page)
        self.position = self.logged_before[-1][2]
        self.traffic.wait_quiet(self.page)
        trace_lifecycle(self.page)

    def socket_freed(self) -> None:
        """The server saw the page close its socket with 4001 and holds no socket for it any more."""
        url = self.server.url
        wait_until(lambda: metric(url, "websocket_disconnects_total", code=GOING_AWAY) == 1, 5, message="close 4001")
        assert metric(url, "websocket_active_connections") == 0

    def change_meanwhile(self) -> None:
        self.moved = {}
        for item in sorted(self.api.stories("apollo"), key=lambda s: s["id"])[:2]:
            self.moved[item["id"]] = next_status(item["status"])
            self.api.move_story(item["id"], self.moved[item["id"]])
        self.raised = self.api.create_escalation("apollo", "Raised while the page was away")
        self.missed = EVENTS_PER_CHANGE * (len(self.moved) + 1)
        self.mark_req, self.mark_log = self.traffic.mark(), len(self.log)

    def back_live_with_the_missed_events(self) -> None:
        page = self.page
        expect(status(page)).to_have_attribute("data-state", "live")
        assert page.evaluate("window.lifecycleMarker") == "kept", "the page was reloaded, not restored"
        to_live = ms_from_return_to_live(page)
        assert to_live is not None and to_live <= 1000, page.evaluate("window.lifecycleTrace")
        (resumed,) = self.log.records("resume", self.mark_log)
        assert resumed["attempt"] == 0 and resumed.get("delayMs") is None, resumed
        assert not self.log.records("fail", self.mark_log)  # no failed socket, no backoff

        for story_id, to in self.moved.items():
            expect(story(page, story_id)).to_have_attribute("data-status", to)
        expect(escalation(page, self.raised["id"])).to_have_attribute("data-status", "open")
        again = wait_for_subscribed(page, self.log, self.projects, start=self.mark_log)
        assert again["apollo"]["recovered"] is True, again["apollo"]
        assert (again["apollo"]["replayed"], again["apollo"]["seq"]) == (self.missed, self.position + self.missed)
        expect(page.get_by_test_id("event-item")).to_have_count(len(self.logged_before) + self.missed)
        gained = logged_events(page)[len(self.logged_before) :]
        assert [seq for _, _, seq in gained] == list(range(self.position + 1, self.position + self.missed + 1))

        self.traffic.wait_quiet(page)
        assert self.traffic.gets_since(self.mark_req) == []  # replayed, not refetched
        assert metric(self.server.url, "websocket_active_connections") == 1


def collect_garbage(page) -> None:
    """A full collection in the page's renderer (CDP), as the next page's allocations bring one sooner or later."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("HeapProfiler.enable")
    cdp.send("HeapProfiler.collectGarbage")
    cdp.detach()


@SLOW_BACKOFF
def test_back_forward_cache_round_trip_is_live_at_once_with_the_missed_events(cdp_browser, server, api):
    away = Away(cdp_browser, server, api)
    page = away.page
    not_cached: list = []
    cdp = page.context.new_cdp_session(page)
    cdp.send("Page.enable")
    cdp.on("Page.backForwardCacheNotUsed", lambda e: not_cached.append([r["reason"] for r in e["notRestoredExplanations"]]))

    page.goto(server.url + "/healthz")
    away.socket_freed()
    collect_garbage(page)  # in the renderer the cached page shares with this one: its finalizers must not run
    away.change_meanwhile()
    page.go_back(wait_until="commit")  # a page restored from the cache fires no `load`
    expect(status(page)).to_have_attribute("data-state", "live")
    restored = page.evaluate("window.lifecycleMarker") == "kept"
    assert restored, f"reloaded, not restored from the back/forward cache: {not_cached}"
    away.back_live_with_the_missed_events()
    assert not not_cached, f"not restored from the back/forward cache: {not_cached}"


@SLOW_BACKOFF
def test_hidden_then_frozen_tab_frees_its_socket_and_resumes_at_once(cdp_browser, server, api):
    away = Away(cdp_browser, server, api)
    page = away.page
    # hide it the way a user does: another tab comes to the front
    browser_cdp = cdp_browser.new_browser_cdp_session()
    other = browser_cdp.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    page.wait_for_function("document.visibilityState === 'hidden'", polling=100)
    away.log.wait_for("hidden")

    # then freeze it, as Chromium does to background tabs: no timers, no frames
    page_cdp = page.context.new_cdp_session(page)
    page_cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
    away.socket_freed()
    assert "ws.heartbeat_timeout" not in server.log_tail(200_000)  # freed by the page, not reaped
    away.change_meanwhile()

    page_cdp.send("Page.setWebLifecycleState", {"state": "active"})  # fires `resume`; still hidden
    away.back_live_with_the_missed_events()
    assert page.evaluate("document.visibilityState") == "hidden"

    browser_cdp.send("Target.closeTarget", {"targetId": other})
    page.bring_to_front()
    page.wait_for_function("document.visibilityState === 'visible'", polling=100)
    away.log.wait_for("visible", start=away.mark_log)
    expect(status(page)).to_have_attribute("data-state", "live")


FINALIZER_PROBE = """() => {
  const Native = Object.getPrototypeOf(FinalizationRegistry);  // the browser's own, under the page's
  window.cleaned = [];
  window.registry = new FinalizationRegistry((held) => cleaned.push(held));
  window.control = {seen: 0, registry: new Native(() => { control.seen += 1; })};
  window.track = (held, token) => {  // an object that only the registry knows of, and a control next to it
    registry.register({}, held, token);
    control.registry.register({}, held);
  };
  window.transition = (type) => dispatchEvent(new PageTransitionEvent(type, {persisted: true}));
}"""


def _collect_and_settle(page, controls: int) -> None:
    """Collect, then wait for the unwrapped control registry's clean-ups: the page's would have run by then."""
    collect_garbage(page)
    page.wait_for_function("(n) => window.control.seen >= n", arg=controls, polling=20, timeout=10_000)
    page.evaluate("() => new Promise((r) => setTimeout(r, 50))")  # one more turn of the task queue


def test_finalizers_are_held_while_the_page_is_cached_and_run_when_it_comes_back(page, server):
    page.goto(server.url + "/")
    page.evaluate(FINALIZER_PROBE)
    assert page.evaluate("() => { try { registry.register(window, window); } catch (e) { return e.name; } }") == "TypeError"

    page.evaluate("() => track('before')")
    _collect_and_settle(page, 1)
    assert page.evaluate("cleaned") == ["before"]  # a page that is shown cleans up as usual

    page.evaluate("() => { track('away'); window.kept = {}; registry.register(kept, 'kept'); transition('pagehide'); }")
    _collect_and_settle(page, 2)
    assert page.evaluate("cleaned") == ["before"]  # held while cached: no page script runs

    page.evaluate("() => transition('pageshow')")
    assert page.evaluate("cleaned") == ["before", "away"]  # deferred, not lost; `kept` is still alive

    page.evaluate("() => { window.token = {}; track('dropped', token); }")
    assert page.evaluate("() => [registry.unregister(token), registry.unregister(token)]") == [True, False]
    page.evaluate("() => { delete window.kept; }")
    _collect_and_settle(page, 3)
    assert page.evaluate("cleaned") == ["before", "away", "kept"]  # re-registered on `pageshow`; unregistered stays out
