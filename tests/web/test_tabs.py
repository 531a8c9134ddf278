"""One socket per browser shared by every tab (`client.tabs`, `client.channel`), in an in-memory browser
profile (tests/portable/tabs_world.py): a channel, Web Locks with steal, frozen pages and a server with
history and resume."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "portable"))

from client import channel  # noqa: E402
from client.runtime import Runtime  # noqa: E402
from client.tabs import Tabs  # noqa: E402
from tabs_world import CONFIG, TOKEN, World  # noqa: E402

TIMEOUT = CONFIG["tabsTimeoutMs"]


def three_tabs(**world):
    w = World(**world)
    tabs = [w.open_tab("ta"), w.open_tab("tb"), w.open_tab("tc")]
    w.advance(1000)
    return w, tabs


def positions(tab, pid="apollo"):
    return [(e, s) for p, e, s in tab.applied if p == pid]


def statuses(tab, pid="apollo"):
    return {s["id"]: s["status"] for s in tab.stories(pid)}


def records(tab, event):
    return [c[1] for c in tab.commands if c[0] == "log" and c[1]["event"] == event]


def posts(tab, kind=None):
    out = [json.loads(c[1]) for c in tab.commands if c[0] == "post"]
    return [m for m in out if kind is None or m["kind"] == kind]


# ---------------------------------------------------------------------------------------------- envelope
def test_the_envelope_round_trips_and_anything_else_is_refused():
    text = channel.make(channel.SUB, "ta", {"projectId": "apollo"}, to="tb")
    assert json.loads(text) == {"v": 1, "kind": "sub", "from": "ta", "to": "tb", "body": {"projectId": "apollo"}}
    assert channel.parse(text)["body"] == {"projectId": "apollo"}
    good = {"v": 1, "kind": "x", "from": "ta", "to": None, "body": {}}
    assert channel.parse(json.dumps(good)) is not None
    for bad in (
        "not json",
        "[1]",
        json.dumps(dict(good, v=2)),
        json.dumps(dict(good, kind=3)),
        json.dumps(dict(good, **{"from": None})),
        json.dumps(dict(good, to=5)),
        json.dumps(dict(good, body=[])),
        None,
        b"{}",
        json.dumps(dict(good, body={"pad": "x" * channel.MAX_TEXT})),
    ):
        assert channel.parse(bad) is None, bad


def test_unknown_kinds_and_other_versions_change_nothing_and_extension_kinds_reach_listeners():
    w, (a, b, c) = three_tabs()
    heard = []
    stop = b.tabs.listen("session.signed-out", lambda msg, now: heard.append((msg["from"], msg["body"])))
    before = (b.tabs.role, b.tabs.leader_id, b.status()["state"])
    b.tabs.channel_message(channel.make("no.such.kind", "tz", {"x": 1}), w.now)
    b.tabs.channel_message(json.dumps({"v": 2, "kind": "beat", "from": "tz", "to": None, "body": {"term": 10**15}}), w.now)
    b.tabs.channel_message("garbage", w.now)
    assert (b.tabs.role, b.tabs.leader_id, b.status()["state"]) == before
    assert b.tabs.stats["ignored"] >= 1
    a.tabs.post("session.signed-out", {"reason": "user"})
    a.pump()
    w.settle()
    assert heard == [("ta", {"reason": "user"})]
    stop()
    a.tabs.post("session.signed-out", {})
    a.pump()
    w.settle()
    assert len(heard) == 1


# ---------------------------------------------------------------------------------------------- sharing
def test_three_tabs_share_one_socket_and_every_tab_applies_every_event_with_the_same_position():
    w, (a, b, c) = three_tabs()
    assert w.leaders() == ["ta"]
    assert [t.status()["role"] for t in (a, b, c)] == ["leader", "follower", "follower"]
    assert [t.status()["state"] for t in (a, b, c)] == ["live", "live", "live"]
    assert w.server.active() == 1 and w.server.accepted == 1
    assert {s[0] for s in w.server.subscribes} == {"ta"}
    w.server.publish("apollo", 1, "review")
    w.server.publish("apollo", 2, "done")
    w.settle()
    for tab in (a, b, c):
        assert positions(tab) == [("e1", 1), ("e1", 2)]
        assert statuses(tab) == {1: "review", 2: "done"}
        assert tab.rt.stats["duplicates"] == 0 and tab.rt.stats["gaps"] == 0
    w.advance(10000)  # relayed server pings keep the followers' links alive
    assert [t.rt.stats["connects"] for t in (a, b, c)] == [1, 1, 1]
    assert [t.rt.stats["drops"] for t in (a, b, c)] == [0, 0, 0]


def test_the_leader_subscribes_the_union_counted_per_tab():
    w = World()
    a = w.open_tab("ta", watch=("apollo",))
    b = w.open_tab("tb", watch=("apollo", "zeus"))
    c = w.open_tab("tc", watch=("zeus", "hermes"))
    w.advance(1000)
    sock = [s for s in w.server.sockets if s.open][0]
    assert sorted(sock.subs) == ["apollo", "hermes", "zeus"]
    w.server.publish("hermes", 1, "done")
    w.settle()
    assert positions(c, "hermes") == [("e1", 1)] and positions(a, "hermes") == [] and positions(b, "hermes") == []
    b.unwatch("zeus")
    w.settle()
    assert w.server.subscribed("zeus") == 1  # tc still holds it
    w.close_tab(c)
    w.advance(100)
    assert w.server.subscribed("zeus") == 0 and w.server.subscribed("hermes") == 0
    assert w.server.subscribed("apollo") == 1


def test_a_tab_that_vanishes_without_a_word_is_released_after_the_liveness_timeout():
    w = World()
    a = w.open_tab("ta", watch=("apollo",))
    b = w.open_tab("tb", watch=("zeus",))
    w.advance(1000)
    assert w.server.subscribed("zeus") == 1
    w.crash_tab(b)
    w.advance(TIMEOUT - 600)
    assert w.server.subscribed("zeus") == 1
    w.advance(1200)
    assert w.server.subscribed("zeus") == 0
    assert a.tabs.stats["sharesDropped"] == 1 and a.tabs.stats["shares"] == 0


def test_a_reloaded_follower_still_costs_one_socket():
    w, (a, b, c) = three_tabs()
    w.close_tab(b)
    d = w.open_tab("td")
    w.advance(500)
    assert w.server.active() == 1 and w.server.accepted == 1
    assert d.status()["role"] == "follower" and d.status()["state"] == "live"
    w.server.publish("apollo", 1, "blocked")
    w.settle()
    assert statuses(d)[1] == "blocked" and positions(d) == [("e1", 1)]


def test_own_mode_keeps_a_socket_per_tab_and_never_posts():
    w = World()
    tabs = [w.open_tab(name, shared=False) for name in ("ta", "tb")]
    w.advance(1000)
    assert w.server.active() == 2
    assert [t.status()["role"] for t in tabs] == ["own", "own"]
    assert all(posts(t) == [] for t in tabs)
    assert all(c[0] not in ("lock", "unlock") for t in tabs for c in t.commands)


def test_a_lock_api_failure_falls_back_to_an_own_socket():
    w = World()
    a = w.open_tab("ta")
    w.settle()
    b = Tabs(Runtime(CONFIG, lambda: TOKEN), config=CONFIG, tab_id="tb")
    b.start(0)
    lock = [c for c in b.commands() if c[0] == "lock"][0]
    b.lock_failed(lock[1], "SecurityError", 1)
    out = b.commands()
    assert b.role == "own" and [c[0] for c in out if c[0] == "open"] == ["open"]


# ---------------------------------------------------------------------------------------------- hand-over
@pytest.mark.parametrize("how", ["close", "crash"])
def test_the_leader_going_away_hands_over_within_the_budget_without_loss_refetch_or_duplicate(how):
    w = World()
    a = w.open_tab("ta")
    b = w.open_tab("tb", watch=("apollo", "zeus"))
    c = w.open_tab("tc", watch=("apollo", "hermes"))  # hermes: only a follower of the next leader watches it
    w.advance(1000)
    for pid in ("apollo", "zeus", "hermes"):
        w.server.publish(pid, 1, "review")
    w.settle()
    reads = (len(b.reads), len(c.reads))
    gone_at = w.now
    (w.close_tab if how == "close" else w.crash_tab)(a)
    for pid in ("apollo", "zeus", "hermes"):
        w.server.publish(pid, 2, "done")  # during the hand-over: nobody's socket is subscribed
    while not (w.leaders() == ["tb"] and b.status()["state"] == "live"):
        w.advance(50)
        assert w.now - gone_at <= 3000, "no live leader within 3 s"
    w.advance(500)
    assert w.server.active() == 1
    for pid in ("apollo", "zeus", "hermes"):
        assert ("tb", pid, ["e1", 1]) in w.server.subscribes, pid  # since = what the tabs applied
    for tab in (b, c):
        assert positions(tab) == [("e1", 1), ("e1", 2)]
        assert statuses(tab)[2] == "done"
        assert tab.rt.stats["duplicates"] == 0 and tab.rt.stats["gaps"] == 0 and tab.rt.stats["unrecovered"] == 0
        assert tab.status()["state"] == "live"
    assert positions(b, "zeus") == [("e1", 1), ("e1", 2)] and positions(c, "hermes") == [("e1", 1), ("e1", 2)]
    assert statuses(c, "hermes")[2] == "done"
    assert b.rt.stats["recovered"] >= 1 and c.rt.stats["recovered"] >= 1
    assert (len(b.reads), len(c.reads)) == reads  # no REST read anywhere


@pytest.mark.parametrize("channel_to_frozen", [True, False], ids=["channel-runs-while-frozen", "channel-waits"])
def test_a_frozen_leader_is_replaced_and_follows_when_it_wakes_up(channel_to_frozen):
    w, (a, b, c) = three_tabs(channel_to_frozen=channel_to_frozen)
    w.server.publish("apollo", 1, "review")
    w.settle()
    frozen_at = w.now
    w.freeze(a)
    # the best-ranked follower (visible, lowest id) goes first, the next one a stagger later
    assert c.tabs.takeover_at() - b.tabs.takeover_at() == CONFIG["tabsStaggerMs"]
    w.server.publish("apollo", 2, "done")
    while w.leaders() in (["ta"], []) or b.status()["state"] != "live" and c.status()["state"] != "live":
        w.advance(50)
        assert w.now - frozen_at <= TIMEOUT + CONFIG["tabsHeartbeatMs"] + 100, "nobody took over"
    w.advance(300)
    new_leader = [t for t in (b, c) if t.tabs.role == "leader"][0]
    assert new_leader is b  # best ranked: lowest id among the visible followers
    assert len(records(b, "tabs.steal")) == 1 and records(c, "tabs.steal") == []
    w.unfreeze(a)
    w.advance(1500)
    w.server.publish("apollo", 1, "blocked")
    w.settle()
    assert w.leaders() == ["tb"] and a.tabs.role == "follower"
    assert w.server.active() == 1
    for tab in (a, b, c):
        assert positions(tab) == [("e1", 1), ("e1", 2), ("e1", 3)]
        assert statuses(tab) == {1: "blocked", 2: "done"}
        assert tab.status()["state"] == "live"
        assert tab.rt.stats["gaps"] == 0 and tab.rt.stats["unrecovered"] == 0


def test_a_hidden_follower_waits_much_longer_before_taking_over():
    w, (a, b, c) = three_tabs()
    for tab in (b, c):
        tab.tabs.visibility_changed(False, w.now)
        tab.pump()
    w.settle()
    w.freeze(a)
    w.advance(TIMEOUT * 3)
    assert w.leaders() == ["ta"]  # throttled background timers must not make every hidden tab steal
    c.tabs.visibility_changed(True, w.now)  # the user looks at tc: it takes over at once
    c.pump()
    w.advance(100)
    assert w.leaders() == ["tc"]


def test_a_leader_that_sees_a_newer_claim_steps_down_and_closes_its_socket():
    w, (a, b, c) = three_tabs()
    newer = channel.make(channel.BEAT, "tz", {"term": a.tabs.term + 1, "live": False, "hb": 1000, "status": {"state": "connecting"}})
    a.tabs.channel_message(newer, w.now)
    out = a.tabs.commands()
    assert a.tabs.role == "follower" and a.tabs.leader_id == "tz"
    assert [c[2] for c in out if c[0] == "close"] == [1000]
    assert [c for c in out if c[0] == "lock"]  # queued again for the lock
    older = channel.make(channel.BEAT, "ty", {"term": 1, "live": True, "hb": 1000, "status": {"state": "live"}})
    b.tabs.channel_message(older, w.now)
    assert b.tabs.leader_id in ("ta", "tz")


# ---------------------------------------------------------------------------------------------- from any tab
def test_followers_show_the_leaders_state_and_retry_in_a_follower_makes_the_leader_dial():
    w, (a, b, c) = three_tabs()
    w.server.kill()
    w.advance(3000)
    leader = a.status()
    assert leader["state"] == "suspended"
    for tab in (b, c):
        st = tab.status()
        assert (st["state"], st["attempt"], st["nextRetryAt"]) == (leader["state"], leader["attempt"], leader["nextRetryAt"])
        assert st["role"] == "follower"
    w.server.restart()
    opens = len([x for x in a.commands if x[0] == "open"])
    c.tabs.retry_now(w.now)  # well before the leader's own next try
    c.pump()
    w.settle()
    assert len([x for x in a.commands if x[0] == "open"]) == opens + 1
    w.advance(200)
    assert [t.status()["state"] for t in (a, b, c)] == ["live", "live", "live"]


def test_server_kill_with_three_tabs_makes_one_socket_reconnect_and_every_tab_resumes():
    w, (a, b, c) = three_tabs()
    w.server.publish("apollo", 1, "review")
    w.settle()
    reads = [len(t.reads) for t in (a, b, c)]
    w.server.kill()
    w.advance(300)
    w.server.publish("apollo", 2, "done")
    w.server.restart()
    accepted = w.server.accepted
    w.advance(12000)
    assert w.server.accepted == accepted + 1 and w.server.active() == 1
    for tab in (a, b, c):
        assert tab.status()["state"] == "live"
        assert positions(tab) == [("e1", 1), ("e1", 2)] and statuses(tab)[2] == "done"
        assert tab.rt.stats["unrecovered"] == 0
    assert [len(t.reads) for t in (a, b, c)] == reads


def test_the_leaders_runtime_is_visible_while_any_tab_is():
    w, (a, b, c) = three_tabs()
    for tab in (a, c):
        tab.tabs.visibility_changed(False, w.now)
        tab.pump()
    w.settle()
    assert a.rt.status["hidden"] is False  # tb is still visible
    b.tabs.visibility_changed(False, w.now)
    b.pump()
    w.settle()
    assert a.rt.status["hidden"] is True
    c.tabs.visibility_changed(True, w.now)
    c.pump()
    w.settle()
    assert a.rt.status["hidden"] is False


def test_a_revoked_project_reaches_the_followers_watching_it():
    w = World()
    a = w.open_tab("ta", watch=("apollo",))
    b = w.open_tab("tb", watch=("apollo", "zeus"))
    w.advance(1000)
    w.server.forbid("zeus")
    w.settle()
    assert b.rt.subscriptions.get("zeus").status == "forbidden"
    assert a.rt.subscriptions.get("apollo").status == "subscribed"


def test_a_frozen_follower_keeps_following():
    w, (a, b, c) = three_tabs()
    w.freeze(c)
    c.tabs.lifecycle_changed(True, w.now)  # `freeze`: Chromium still runs its channel handlers
    w.server.publish("apollo", 1, "done")
    w.advance(TIMEOUT * 2)
    assert positions(c) == [("e1", 1)] and a.tabs.stats["shares"] == 2
    w.unfreeze(c)
    c.tabs.lifecycle_changed(False, w.now)
    c.pump()
    w.advance(300)
    assert c.tabs.role == "follower" and c.status()["state"] == "live" and c.rt.stats["connects"] == 1


def test_pagehide_releases_the_share_and_the_page_restored_from_the_cache_catches_up_without_refetch():
    w, (a, b, c) = three_tabs()
    w.server.publish("apollo", 2, "review")
    w.settle()
    reads = len(c.reads)
    c.tabs.lifecycle_changed(True, w.now)  # the adapter's pagehide
    c.tabs.page_hidden(w.now)  # BrowserTabs' pagehide
    c.pump()
    w.settle()
    assert c.tabs.role == "closed" and [m["kind"] for m in posts(c)][-1] == "bye"
    assert a.tabs.stats["shares"] == 1
    w.server.publish("apollo", 1, "done")
    w.advance(200)
    c.tabs.lifecycle_changed(False, w.now)  # pageshow with persisted: back from the back/forward cache
    c.pump()
    w.advance(300)
    assert c.tabs.role == "follower" and c.status()["state"] == "live" and w.server.active() == 1
    assert positions(c) == [("e1", 1), ("e1", 2)] and statuses(c)[1] == "done"  # the leader sent what it missed
    assert len(c.reads) == reads and c.rt.stats["unrecovered"] == 0


def test_a_leader_that_freezes_gives_the_lock_to_the_next_tab_at_once():
    w, (a, b, c) = three_tabs()
    w.server.publish("apollo", 1, "done")
    w.settle()
    reads = [len(t.reads) for t in (a, b, c)]
    w.freeze(a)
    a.tabs.lifecycle_changed(True, w.now)  # Chromium fires `freeze` before freezing the page
    a.pump()
    w.settle()
    w.server.publish("apollo", 2, "review")
    w.advance(50)
    assert w.leaders() == ["tb"] and w.server.active() == 1  # the frozen page's socket was closed (4001)
    assert records(b, "tabs.steal") == []  # handed over, nothing stolen
    w.advance(300)
    w.unfreeze(a)
    a.tabs.lifecycle_changed(False, w.now)  # resume
    a.pump()
    w.advance(500)
    assert [t.tabs.role for t in (a, b, c)] == ["follower", "leader", "follower"] and w.server.active() == 1
    for tab in (a, b, c):
        assert positions(tab) == [("e1", 1), ("e1", 2)] and statuses(tab) == {1: "done", 2: "review"}
    assert [len(t.reads) for t in (a, b, c)] == reads


def test_what_other_tabs_can_make_the_leader_hold_is_bounded():
    from client import tabrelay as tabsmod

    w, (a, b, c) = three_tabs()
    for n in range(tabsmod.MAX_TABS + 10):
        a.tabs.channel_message(channel.make(channel.TAB, "tx%03d" % n, {"leader": "ta", "link": None, "visible": True, "watch": []}), w.now)
    assert len(a.tabs.relay.shares) == tabsmod.MAX_TABS and len(a.tabs.peers) == tabsmod.MAX_TABS
    a.pump()
    link = b.tabs.vsid
    for n in range(tabsmod.MAX_PROJECTS + 5):  # as if tb asked for that many (it holds apollo already)
        a.tabs.channel_message(channel.make(channel.SUB, "tb", {"link": link, "projectId": "p%03d" % n, "since": None}, to="ta"), w.now)
    a.pump()
    assert len(a.tabs.relay.shares["tb"].refs) == tabsmod.MAX_PROJECTS
    refused = [m for m in posts(a, "reply") if m["body"]["frame"].get("error") == "too_many_subscriptions"]
    assert len(refused) == 6


def test_history_keeps_one_contiguous_run_per_project_and_says_when_it_cannot_cover():
    from client.tabrelay import HISTORY_PER_PROJECT, History

    def ev(seq, epoch="e1", pid="apollo"):
        return {"type": "event", "projectId": pid, "seq": seq, "epoch": epoch}

    h = History()
    for seq in (3, 4, 4, 5):
        h.add(ev(seq))
    assert [e["seq"] for e in h.missed("apollo", "e1", 3, 5)] == [4, 5]
    assert h.missed("apollo", "e1", 5, 5) == [] and h.missed("apollo", "e1", 7, 5) == []
    assert h.missed("apollo", "e1", 1, 5) is None  # seq 2 and 3 are not all here
    assert h.missed("apollo", "e2", 3, 5) is None and h.missed("zeus", "e1", 0, 1) is None
    h.add(ev(7))  # a gap: a new run
    assert h.missed("apollo", "e1", 4, 7) is None and [e["seq"] for e in h.missed("apollo", "e1", 6, 7)] == [7]
    h.add(ev(1, epoch="e2"))
    assert h.missed("apollo", "e1", 6, 7) is None and h.missed("apollo", "e2", 0, 1) == [ev(1, epoch="e2")]
    for seq in range(2, HISTORY_PER_PROJECT + 10):
        h.add(ev(seq, epoch="e2"))
    assert h.missed("apollo", "e2", 0, 5) is None
    assert len(h.missed("apollo", "e2", HISTORY_PER_PROJECT + 9 - HISTORY_PER_PROJECT, HISTORY_PER_PROJECT + 9)) == HISTORY_PER_PROJECT
    h.add({"type": "event", "projectId": "x", "seq": True, "epoch": "e1"})  # malformed: ignored
    assert h.missed("x", "e1", 0, 1) is None


def test_a_tab_further_behind_than_the_leaders_history_refetches_that_project_itself():
    w = World()
    a = w.open_tab("ta", watch=("apollo",))
    b = w.open_tab("tb", watch=("apollo",))
    w.advance(1000)
    w.server.publish("apollo", 1, "review")
    w.settle()
    b.tabs.page_hidden(w.now)
    b.pump()
    w.settle()
    w.server.publish("apollo", 2, "done")
    w.settle()
    a.tabs.history = type(a.tabs.history)()  # as if the leader had started since: it cannot replay seq 2
    a.tabs.relay.history = a.tabs.history
    w.server.publish("apollo", 1, "blocked")
    w.advance(200)
    reads = len(b.reads)
    b.tabs.lifecycle_changed(False, w.now)
    b.pump()
    w.advance(600)
    assert b.rt.stats["unrecovered"] == 1 and len(b.reads) > reads
    assert statuses(b) == {1: "blocked", 2: "done"} and b.status()["state"] == "live"


def test_a_follower_shows_its_leaders_round_trip_and_client_id():
    w, (a, b, c) = three_tabs()
    w.advance(2000)  # server pings: the leader measures its round trip
    assert a.rt.stats["clientId"] == "c1" and a.rt.stats["rttMs"] is not None
    a.tabs.handle_timer(w.now)  # one more beat carries them
    a.pump()
    w.settle()
    shown = b.tabs.shown_stats
    assert (shown["clientId"], shown["rttMs"]) == (a.rt.stats["clientId"], a.rt.stats["rttMs"])
    assert shown["events"] == b.rt.stats["events"]
