"""The client measures its own round-trip time: one ping of ours per server heartbeat, timed to its pong."""

from client_harness import Driver

CFG = {"heartbeatIntervalMs": 30000, "reconnectBaseMs": 1000, "reconnectMaxAttempts": 3}


def live():
    d = Driver(dict(CFG))
    d.connect()
    return d


def test_each_server_ping_is_answered_then_followed_by_our_ping_and_its_pong_sets_the_rtt():
    d = live()
    assert d.rt.connection.rtt_ms is None
    d.advance(30000)
    assert d.sent(d.server({"type": "ping"})) == [{"action": "pong"}, {"action": "ping"}]
    d.advance(420)
    d.server({"type": "pong"})
    assert d.rt.connection.rtt_ms == 420
    d.advance(30000)
    d.server({"type": "ping"})
    d.advance(35)
    d.server({"type": "pong"})
    assert d.rt.connection.rtt_ms == 35  # refreshed every heartbeat


def test_pongs_are_matched_to_pings_in_order_and_a_stray_pong_changes_nothing():
    d = live()
    d.server({"type": "pong"})  # nothing of ours in flight
    assert d.rt.connection.rtt_ms is None
    d.server({"type": "ping"})
    d.advance(100)
    d.server({"type": "ping"})
    d.advance(50)
    d.server({"type": "pong"})
    assert d.rt.connection.rtt_ms == 150  # the first ping's
    d.advance(10)
    d.server({"type": "pong"})
    assert d.rt.connection.rtt_ms == 60  # the second one's


def test_unanswered_pings_are_bounded_and_a_new_socket_starts_afresh():
    d = live()
    sent = []
    for _ in range(10):
        sent += d.sent(d.server({"type": "ping"}))
    assert sent.count({"action": "ping"}) == 4  # MAX_PINGS_IN_FLIGHT, then none until answered
    assert sent.count({"action": "pong"}) == 10
    d.closed(1006)
    d.advance(2000)
    d.opened()
    d.connected()
    d.server({"type": "pong"})  # an answer meant for the old socket's pings never counts
    assert d.rt.connection.rtt_ms is None


def test_the_visibility_probe_is_timed_too():
    d = live()
    d.rt.visibility_changed(False, d.now)
    d.advance(45000)
    d.rt.visibility_changed(True, d.now)
    assert d.sent(d.pump()) == [{"action": "ping"}]
    d.advance(200)
    d.server({"type": "pong"})
    assert d.rt.connection.rtt_ms == 200 and d.state == "live"


def test_connected_remembers_the_client_id_and_records_attempts_and_downtime():
    d = live()
    assert d.rt.connection.client_id == "c-1"
    d.closed(1006)
    d.advance(5000)  # first retry (750 ms with rand 0.5) refused
    d.closed(1006)
    d.advance(5000)
    d.opened()
    d.connected()
    rec = d.records(event="connected")[-1]
    assert rec["attempt"] == 2 and rec["downtimeMs"] == 10000
    assert d.records(event="connected")[0]["downtimeMs"] is None
