"""Subscriptions through the Runtime: restore after reconnect with `since`, dedupe, gaps, epochs,
old sockets, hello, and invalidating only what could not be recovered."""

from client_harness import Const, Driver


def ev(pid, seq, epoch="e1", event_type="story.status.changed", data=None):
    return {"type": "event", "eventType": event_type, "projectId": pid, "seq": seq, "epoch": epoch, "timestamp": 1, "data": data or {}}


def acked(d, pid, seq, epoch="e1", recovered=False, replayed=0):
    return d.server({"type": "subscribed", "projectId": pid, "recovered": recovered, "replayed": replayed, "seq": seq, "epoch": epoch})


def setup(pids=("apollo", "zeus")):
    d = Driver({}, rand=Const(0.5))
    events = {pid: [] for pid in pids}
    for pid in pids:
        d.rt.subscribe(pid, events[pid].append)
    return d, events


def test_subscribe_is_sent_after_connected_not_on_open():
    d, _ = setup()
    d.start()
    assert d.sent(d.opened()) == []
    cmds = d.connected()
    assert d.sent(cmds) == [
        {"action": "subscribe", "projectId": "apollo"},
        {"action": "subscribe", "projectId": "zeus"},
    ]


def test_resubscribe_after_reconnect_with_since_then_hello():
    d, events = setup()
    d.connect()
    acked(d, "apollo", 40)
    acked(d, "zeus", 7)
    d.server(ev("apollo", 41))
    d.server(ev("apollo", 42))
    d.advance(2000)
    d.closed(1006)
    d.advance(750)
    d.opened()
    d.advance(50)
    cmds = d.connected()
    assert d.sent(cmds) == [
        {"action": "subscribe", "projectId": "apollo", "since": {"epoch": "e1", "seq": 42}},
        {"action": "subscribe", "projectId": "zeus", "since": {"epoch": "e1", "seq": 7}},
        {"action": "hello", "reconnectAttempts": 1, "downtimeMs": 800},
    ]
    assert [c[1] for c in cmds if c[0] == "send"] == ["s2"] * 3
    assert [e["seq"] for e in events["apollo"]] == [41, 42]


def test_duplicates_and_old_seqs_are_dropped():
    d, events = setup(("apollo",))
    d.connect()
    acked(d, "apollo", 10)
    for seq in (11, 11, 12, 10, 12, 13):
        d.server(ev("apollo", seq))
    assert [e["seq"] for e in events["apollo"]] == [11, 12, 13]
    assert d.rt.stats["duplicates"] == 3


def test_messages_from_an_older_socket_are_ignored():
    d, events = setup(("apollo",))
    d.connect()
    acked(d, "apollo", 10)
    d.closed(1006)
    d.advance(750)
    d.connect()
    d.server(ev("apollo", 11), sid="s1")
    assert events["apollo"] == []


def watch_all(d, pid):
    seen = {}
    for key in (("project", pid), ("stories", pid), ("escalations", pid)):
        seen[key] = []
        d.rt.watch(key, seen[key].append, d.now)
    for f in d.fetches(d.pump()):
        d.fetch_result(f[1], 200, {"id": pid, "counts": {}} if f[3].endswith(pid) else [])
    return seen


def fetch_paths(cmds, d):
    return sorted(f[3] for f in d.fetches(cmds))


def test_seq_gap_marks_only_that_project_for_refetch_after_the_coalescing_window():
    d, events = setup()
    d.connect()
    acked(d, "apollo", 10)
    acked(d, "zeus", 3)
    d.advance(1000)
    watch_all(d, "apollo")
    watch_all(d, "zeus")
    d.server(ev("apollo", 11, event_type="custom.noop"))
    assert fetch_paths(d.advance(300), d) == ["/api/projects/apollo"]  # a normal event: its keys only
    d.server(ev("apollo", 15))  # 12..14 missing
    assert [e["seq"] for e in events["apollo"]] == [11, 15]
    assert d.rt.stats["gaps"] == 1
    cmds = d.advance(250)
    assert fetch_paths(cmds, d) == ["/api/projects/apollo", "/api/projects/apollo/escalations", "/api/projects/apollo/stories"]


def test_epoch_change_refetches_the_project():
    d, events = setup(("apollo",))
    d.connect()
    acked(d, "apollo", 10)
    d.advance(1000)
    watch_all(d, "apollo")
    d.server(ev("apollo", 1, epoch="e2"))
    assert d.rt.stats["epochChanges"] == 1
    assert len(d.fetches(d.advance(250))) == 3
    d.server(ev("apollo", 2, epoch="e2"))
    assert [e["seq"] for e in events["apollo"]] == [1, 2]


def reconnect(d):
    d.closed(1006)
    d.advance(750)
    d.connect()


def test_recovered_projects_are_not_refetched_unrecovered_ones_are():
    d, _ = setup()
    d.connect()
    acked(d, "apollo", 10)
    acked(d, "zeus", 3)
    d.advance(1000)
    watch_all(d, "apollo")
    watch_all(d, "zeus")
    reconnect(d)
    d.server(ev("apollo", 11, event_type="custom.noop"))  # replayed
    acked(d, "apollo", 11, recovered=True, replayed=1)
    acked(d, "zeus", 9, recovered=False)
    cmds = d.advance(1000)
    paths = fetch_paths(cmds, d)
    assert "/api/projects/zeus/stories" in paths and "/api/projects/zeus/escalations" in paths
    assert not any(p.endswith("/apollo/stories") or p.endswith("/apollo/escalations") for p in paths)
    recs = d.records(event="subscribed")
    assert [(r["projectId"], r["recovered"]) for r in recs[-2:]] == [("apollo", True), ("zeus", False)]
    assert d.rt.stats["recovered"] == 1 and d.rt.stats["unrecovered"] == 1


def test_recovered_but_short_replay_counts_as_a_gap():
    d, _ = setup(("apollo",))
    d.connect()
    acked(d, "apollo", 10)
    d.advance(1000)
    watch_all(d, "apollo")
    reconnect(d)
    acked(d, "apollo", 12, recovered=True, replayed=0)  # head is 12, we only have 10
    assert len(d.fetches(d.advance(250))) == 3


def test_data_fetched_before_a_fresh_subscribe_is_refetched_newer_data_is_not():
    d, _ = setup(("apollo",))
    d.start()
    watch_all(d, "apollo")  # fetched at t=0, before any subscription existed
    d.advance(100)
    d.opened()
    d.connected()
    acked(d, "apollo", 5)
    # the project and both lists were fetched before the subscribe: events in between may be lost
    assert len(d.fetches(d.advance(250))) == 3
    d2, _ = setup(("apollo",))
    d2.connect()
    d2.advance(100)
    watch_all(d2, "apollo")  # fetched after the subscribe was sent
    acked(d2, "apollo", 5)
    assert d2.fetches(d2.advance(250)) == []


def test_subscribe_and_unsubscribe_while_live_are_sent_at_once_and_refcounted():
    d, _ = setup(())
    d.connect()
    stop_a = d.rt.subscribe("apollo", lambda e: None)
    stop_b = d.rt.subscribe("apollo", lambda e: None)
    assert d.sent(d.pump()) == [{"action": "subscribe", "projectId": "apollo"}]
    stop_a()
    assert d.sent(d.pump()) == []
    stop_b()
    stop_b()  # twice is harmless
    assert d.sent(d.pump()) == [{"action": "unsubscribe", "projectId": "apollo"}]
    d.server(ev("apollo", 1))
    assert d.rt.subscriptions.project_ids() == []


def test_wildcard_handler_sees_every_subscribed_project_and_forbidden_stops_delivery():
    d, _ = setup()
    seen = []
    d.rt.subscribe("*", seen.append)
    d.connect()
    d.server({"type": "error", "error": "forbidden", "projectId": "zeus", "message": "not a member"})
    d.server(ev("apollo", 1))
    d.server(ev("zeus", 1))
    d.server(ev("hermes", 1))  # never subscribed
    assert [(e["projectId"], e["seq"]) for e in seen] == [("apollo", 1)]
    assert d.records(event="server-error")[0]["projectId"] == "zeus"


def test_watching_a_project_key_keeps_the_project_subscribed():
    d, _ = setup(())
    d.connect()
    stop = d.rt.watch(("stories", "apollo"), lambda e: None)
    assert {"action": "subscribe", "projectId": "apollo"} in d.sent(d.pump())
    stop()
    assert {"action": "unsubscribe", "projectId": "apollo"} in d.sent(d.pump())


def test_a_failing_handler_is_reported_and_others_still_run():
    d, _ = setup(())
    seen = []

    def boom(event):
        raise RuntimeError("ui bug")

    d.rt.subscribe("apollo", boom)
    d.rt.subscribe("apollo", seen.append)
    d.connect()
    d.server(ev("apollo", 1))
    assert len(seen) == 1
    assert d.records(event="listener-error")[0]["reason"] == "RuntimeError: ui bug"
    assert d.state == "live"


def test_subscribe_answered_unavailable_is_retried_at_the_next_ping_only():
    d, events = setup()
    d.connect()
    acked(d, "apollo", 3)
    d.server({"type": "error", "error": "unavailable", "projectId": "zeus", "message": "bus down"})
    cmds = d.server({"type": "ping"})
    assert d.sent(cmds) == [{"action": "pong"}, {"action": "ping"}, {"action": "subscribe", "projectId": "zeus"}]
    acked(d, "zeus", 9)
    assert d.sent(d.server({"type": "ping"})) == [{"action": "pong"}, {"action": "ping"}]  # subscribed now: no subscribe
    d.server(ev("zeus", 10))
    assert [e["seq"] for e in events["zeus"]] == [10]


def test_forbidden_is_never_retried():
    d, _ = setup()
    d.connect()
    d.server({"type": "error", "error": "forbidden", "projectId": "zeus", "message": "not a member"})
    assert d.sent(d.server({"type": "ping"})) == [{"action": "pong"}, {"action": "ping"}]
