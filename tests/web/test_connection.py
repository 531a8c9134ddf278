"""Connection state machine through the Runtime façade: every transition, the close-code policy,
timeouts, the watchdog, hidden/visible, offline/online, suspended and its wake-ups.

Time is a float advanced by the driver; deadlines fire through handle_timer(get_timer()).
"""

import pytest

from client import connection as conn
from client_harness import WALL0, Const, Driver, make_jwt

CFG = {
    "heartbeatIntervalMs": 30000,
    "heartbeatMisses": 2,
    "reconnectBaseMs": 1000,
    "reconnectMaxMs": 16000,
    "reconnectMaxAttempts": 10,
    "connectTimeoutMs": 10000,
    "suspendedRetryMs": 60000,
    "restartWindowMs": 5000,
}


def live_driver(**kw):
    d = Driver(dict(CFG), **kw)
    d.connect()
    assert d.state == "live"
    return d


# ---------------------------------------------------------------- the table itself
def test_table_targets_are_states_and_every_active_state_can_stop():
    states = set(conn.TRANSITIONS)
    assert states == set(conn.PUBLIC)
    for state, row in conn.TRANSITIONS.items():
        for event, target in row.items():
            assert target in states, (state, event)
        if state != conn.IDLE:
            assert row[conn.STOP] == conn.IDLE
    assert set(conn.PUBLIC.values()) == {"idle", "connecting", "live", "reconnecting", "offline", "suspended", "auth-required"}


def test_an_event_missing_from_the_table_raises():
    c = conn.Connection(conn_config(), lambda: "t", "ws://x", [])
    with pytest.raises(conn.TransitionError):
        c._fire(conn.CONNECTED, 0)
    assert c.state == conn.IDLE


def conn_config():
    from client.config import ClientConfig

    return ClientConfig(CFG)


# ---------------------------------------------------------------- connect
def test_start_dials_with_subprotocol_token_and_goes_live_on_connected():
    d = Driver(dict(CFG))
    cmds = d.start()
    (open_cmd,) = d.opens(cmds)
    assert open_cmd[2] == "ws://test/ws/status-updates"
    assert open_cmd[3] == ["dashboard.v2", "dashboard.v1", "bearer." + d.token]
    assert d.token not in open_cmd[2]
    assert d.state == "connecting"
    d.opened()
    assert d.state == "connecting"  # open alone is not live: we wait for `connected`
    d.connected()
    assert d.state == "live"
    assert d.rt.status["lastLiveAt"] == 0
    assert [s["state"] for s in d.statuses] == ["connecting", "live"]


def test_every_transition_logs_a_structured_record():
    d = live_driver()
    d.advance(1000)
    d.closed(1006)
    rec = d.records(event="fail")[-1]
    for field in ("event", "state", "attempt", "delayMs", "closeCode", "reason", "sinceLastMessageMs", "recovered", "hidden"):
        assert field in rec
    assert rec["state"] == "reconnecting" and rec["closeCode"] == 1006 and rec["attempt"] == 1
    assert rec["delayMs"] == 750 and rec["sinceLastMessageMs"] == 1000 and rec["hidden"] is False
    assert [r["event"] for r in d.records()] == ["start", "open", "connected", "closed", "fail"]
    assert d.records(event="closed")[0]["closeCode"] == 1006 and rec["maxAttempts"] == 10


def test_first_connect_failure_retries_with_backoff():
    d = Driver(dict(CFG))
    d.start()
    d.closed(1006)
    st = d.rt.status
    assert st["state"] == "reconnecting" and st["attempt"] == 1 and st["nextRetryAt"] == 750
    assert d.advance(749) == []
    cmds = d.advance(1)
    assert len(d.opens(cmds)) == 1 and d.rt.status["nextRetryAt"] is None
    d.connect()
    assert d.state == "live" and d.rt.stats["failedAttempts"] == 1


def test_connect_timeout_covers_open_and_connected_message():
    d = Driver(dict(CFG))
    d.start()
    d.advance(5000)
    d.opened()  # the socket opens but `connected` never comes
    cmds = d.advance(5000)
    assert d.closes(cmds) == [("close", "s1", conn.CLOSE_CONNECT_TIMEOUT, "connect timeout")]
    assert d.state == "reconnecting" and d.rt.status["attempt"] == 1
    assert d.rt.stats["failedAttempts"] == 1
    d.server({"type": "connected"}, sid="s1")  # too late: abandoned socket
    assert d.state == "reconnecting"


def test_connect_timeout_when_the_socket_never_opens():
    d = Driver(dict(CFG))
    d.start()
    cmds = d.advance(10000)
    assert [c[2] for c in d.closes(cmds)] == [conn.CLOSE_CONNECT_TIMEOUT]
    assert d.state == "reconnecting"


# ---------------------------------------------------------------- close-code policy
@pytest.mark.parametrize("code", [4401, 4403, 1008])
def test_auth_close_codes_need_sign_in_and_never_retry(code):
    d = live_driver()
    d.server({"type": "error", "error": "Authentication failed", "message": "token expired"})
    d.closed(code, "auth")
    assert d.state == "auth-required"
    assert d.rt.status["closeCode"] == code
    assert d.rt.get_timer() is None
    assert d.opens(d.advance(3_600_000)) == []


@pytest.mark.parametrize("code", [1012, 1001])
def test_restart_codes_reconnect_inside_the_restart_window(code):
    d = live_driver(rand=Const(0.9))
    d.advance(6000)  # stable
    d.closed(code, "service restart")
    assert d.state == "reconnecting"
    assert d.rt.status["nextRetryAt"] - d.now == 4500  # 0.9 * restartWindowMs


def test_restart_hint_sets_the_window_for_the_next_close():
    d = live_driver(rand=Const(0.5))
    d.server({"type": "restart", "reconnectWithinMs": 2000})
    d.closed(1006)
    assert d.rt.status["nextRetryAt"] - d.now == 1000
    assert d.records(event="restart-hint")[0]["delayMs"] == 2000


@pytest.mark.parametrize("code", [1013, 4429, 4409])
def test_try_later_codes_use_the_long_backoff(code):
    d = live_driver(rand=Const(0.25))
    d.closed(code)
    assert d.rt.status["nextRetryAt"] - d.now == 10000  # 8 s + 0.25 * 8 s


@pytest.mark.parametrize("code", [1006, 1011, 4008, 4000, 1000, 3001])
def test_other_codes_use_the_normal_backoff(code):
    d = live_driver(rand=Const(0.5))
    d.closed(code)
    assert d.state == "reconnecting"
    assert d.rt.status["nextRetryAt"] - d.now == 750


def test_close_policy_table():
    assert [conn.close_policy(c) for c in (4401, 4403, 1008)] == [conn.AUTH] * 3
    assert [conn.close_policy(c) for c in (1001, 1012)] == [conn.RESTART] * 2
    assert [conn.close_policy(c) for c in (1013, 4429, 4409)] == [conn.LONG] * 3
    assert [conn.close_policy(c) for c in (1006, 1011, 4008, 4000, 1000)] == [conn.BACKOFF] * 5


# ---------------------------------------------------------------- backoff reset rules
def test_accept_then_close_loop_keeps_growing_the_backoff():
    d = Driver(dict(CFG, reconnectMaxAttempts=6), rand=Const(0.5))
    d.start()
    delays = []
    for _ in range(6):
        d.opened()
        d.connected()
        assert d.state == "live"
        d.advance(1000)  # < stableAfterMs
        d.closed(1006)
        delays.append(d.rt.status["nextRetryAt"] - d.now)
        d.advance(delays[-1])
    assert delays == [750, 1250, 2250, 4250, 8250, 16000]
    d.opened()
    d.connected()
    d.advance(1000)
    d.closed(1006)
    assert d.state == "suspended"


def test_backoff_resets_after_connected_and_five_stable_seconds():
    d = Driver(dict(CFG), rand=Const(0.5))
    d.start()
    for _ in range(3):
        d.closed(1006)
        d.advance(d.rt.status["nextRetryAt"] - d.now)
    assert d.rt.status["attempt"] == 3
    d.opened()
    d.connected()
    d.advance(4999)
    assert d.rt.status["attempt"] == 3
    d.advance(1)
    assert d.rt.status["attempt"] == 0
    assert d.records(event="stable")
    d.closed(1006)
    assert d.rt.status["nextRetryAt"] - d.now == 750


def test_seed_schedule_mode_runs_the_exact_table_then_suspends():
    d = Driver(dict(CFG, backoff="seed"), rand=Const(0.5))
    d.start()
    delays = []
    while True:
        d.closed(1006)
        if d.state != "reconnecting":
            break
        delays.append(d.rt.status["nextRetryAt"] - d.now)
        d.advance(delays[-1])
    assert delays == [1000, 2000, 4000, 8000, 16000, 16000, 16000, 16000, 16000, 16000]
    assert sum(delays) == 111000
    assert d.state == "suspended"


# ---------------------------------------------------------------- suspended
def suspended_driver(**kw):
    d = Driver(dict(CFG, reconnectMaxAttempts=2), **kw)
    d.connect()
    for _ in range(2):
        d.closed(1006)
        d.advance(d.rt.status["nextRetryAt"] - d.now)
    d.closed(1006)
    assert d.state == "suspended"
    return d


def test_suspended_reports_the_retries_of_the_fast_phase_not_more():
    d = suspended_driver(rand=Const(0.5))
    assert d.rt.status["attempt"] == 2
    d.advance(d.rt.status["nextRetryAt"] - d.now)
    d.closed(1006)
    assert d.state == "suspended" and d.rt.status["attempt"] == 2


def test_manual_retry_while_offline_that_fails_waits_for_online():
    d = Driver(dict(CFG), rand=Const(0.0))
    d.connect()
    d.rt.network_changed(False, d.now)
    d.pump()
    assert d.state == "offline"
    d.rt.retry_now(d.now)
    assert len(d.opens(d.pump())) == 1  # the user may overrule navigator.onLine
    d.closed(1001)
    assert d.state == "offline"
    assert d.opens(d.advance(60000)) == []
    d.rt.network_changed(True, d.now)
    assert len(d.opens(d.pump())) == 1


def test_suspended_retries_every_period_within_twenty_percent():
    for r, expected in ((0.0, 48000), (0.5, 60000), (0.999, 71976)):
        d = suspended_driver(rand=Const(r))
        assert d.rt.status["nextRetryAt"] - d.now == expected
        assert d.opens(d.advance(expected - 1)) == []
        cmds = d.advance(1)
        assert len(d.opens(cmds)) == 1 and d.state == "reconnecting"
        d.closed(1006)
        assert d.state == "suspended"  # one try, then back


@pytest.mark.parametrize("wake", ["online", "visible", "retry"])
def test_suspended_wakes_up_at_once(wake):
    d = suspended_driver(rand=Const(0.5))
    if wake == "online":
        d.rt.network_changed(False, d.now)
        assert d.state == "offline"
        d.rt.network_changed(True, d.now)
    elif wake == "visible":
        d.rt.visibility_changed(False, d.now)
        d.rt.visibility_changed(True, d.now)
    else:
        d.rt.retry_now(d.now)
    cmds = d.pump()
    assert len(d.opens(cmds)) == 1
    assert d.state == "reconnecting"
    if wake == "retry":
        assert d.rt.status["attempt"] == 0  # retry_now resets attempts
        d.closed(1006)
        assert d.state == "reconnecting" and d.rt.status["nextRetryAt"] - d.now == 750
        d.advance(750)
    d.connect()
    assert d.state == "live"


def test_retry_now_while_reconnecting_dials_at_once_and_resets():
    d = Driver(dict(CFG), rand=Const(0.5))
    d.start()
    for _ in range(3):
        d.closed(1006)
        d.advance(d.rt.status["nextRetryAt"] - d.now)
    d.closed(1006)
    assert d.rt.status["attempt"] == 4
    d.rt.retry_now(d.now)
    assert len(d.opens(d.pump())) == 1 and d.rt.status["attempt"] == 0


# ---------------------------------------------------------------- watchdog and heartbeats
def test_server_ping_is_answered_and_keeps_the_socket_alive():
    d = live_driver()
    for _ in range(5):
        d.advance(30000)
        cmds = d.server({"type": "ping"})
        assert d.sent(cmds) == [{"action": "pong"}, {"action": "ping"}]  # answered, and our own ping
        d.advance(40)
        d.server({"type": "pong"})
    assert d.state == "live"


def test_watchdog_closes_a_silent_socket_after_misses_plus_grace():
    d = live_driver()
    d.advance(60000 + 10000 - 1)  # heartbeat 30 s * 2 misses + 10 s grace
    assert d.state == "live"
    cmds = d.advance(1)
    assert [c[2] for c in d.closes(cmds)] == [conn.CLOSE_HEARTBEAT_TIMEOUT]
    assert d.state == "reconnecting"
    assert d.records(event="fail")[-1]["reason"] == "heartbeat timeout"
    assert d.records(event="fail")[-1]["sinceLastMessageMs"] == 70000


def test_watchdog_uses_the_servers_heartbeat_interval():
    d = Driver(dict(CFG))
    d.start()
    d.opened()
    d.connected(heartbeat_ms=1000)
    d.advance(2999)  # 1 s * 2 + min(10 s, 1 s)
    assert d.state == "live"
    d.advance(1)
    assert d.state == "reconnecting"


def test_any_message_feeds_the_watchdog():
    d = live_driver()
    for _ in range(10):
        d.advance(50000)
        d.server({"type": "unsubscribed", "projectId": "x"})
    assert d.state == "live"


def test_malformed_frames_are_logged_and_do_not_kill_the_connection():
    d = live_driver()
    d.server("{not json")
    d.server("[1,2]")
    assert d.state == "live"
    assert d.rt.stats["badFrames"] == 2


# ---------------------------------------------------------------- hidden / visible
def test_hidden_tab_gets_no_watchdog_kill_and_no_new_dials():
    d = live_driver()
    d.advance(6000)
    d.rt.visibility_changed(False, d.now)
    d.pump()
    assert d.advance(300000) == []  # throttled timers: no kill while hidden
    assert d.state == "live"
    d.closed(1006)
    assert d.state == "reconnecting"
    assert d.rt.get_timer() is None  # nothing to arm while hidden (stable timer cleared)
    assert d.opens(d.advance(100000)) == []
    d.rt.visibility_changed(True, d.now)
    assert len(d.opens(d.pump())) == 1


def test_retry_that_comes_due_while_hidden_waits_for_visible():
    d = live_driver()
    d.closed(1006)
    due = d.rt.status["nextRetryAt"]
    d.rt.visibility_changed(False, d.now)
    d.now = due + 1
    d.rt.handle_timer(d.now)  # a throttled timer firing late
    assert d.opens(d.pump()) == []
    assert d.rt.status["deferred"] is True
    d.rt.visibility_changed(True, d.now)
    assert len(d.opens(d.pump())) == 1


def test_visible_with_a_silent_open_socket_probes_then_reconnects():
    d = live_driver()
    d.rt.visibility_changed(False, d.now)
    d.advance(45000)
    d.rt.visibility_changed(True, d.now)
    cmds = d.pump()
    assert d.sent(cmds) == [{"action": "ping"}]
    d.advance(2999)
    assert d.state == "live"
    cmds = d.advance(1)
    assert [c[2] for c in d.closes(cmds)] == [conn.CLOSE_PROBE_TIMEOUT]
    assert len(d.opens(cmds)) == 1  # zombie socket: redial at once
    assert d.state == "reconnecting"


def test_probe_answered_keeps_the_socket():
    d = live_driver()
    d.rt.visibility_changed(False, d.now)
    d.advance(45000)
    d.rt.visibility_changed(True, d.now)
    d.pump()
    d.advance(500)
    d.server({"type": "pong"})
    d.advance(60000)
    assert d.state == "live"


def test_visible_after_a_short_hide_sends_no_probe():
    d = live_driver()
    d.rt.visibility_changed(False, d.now)
    d.advance(1000)
    d.rt.visibility_changed(True, d.now)
    assert d.sent(d.pump()) == []


def test_visible_after_a_long_frozen_period_gives_a_fresh_watchdog_window():
    d = live_driver()
    d.rt.visibility_changed(False, d.now)
    d.advance(600000)
    d.rt.visibility_changed(True, d.now)
    d.pump()
    d.server({"type": "pong"})  # the probe is answered
    assert d.state == "live"


# ---------------------------------------------------------------- offline / online
def test_offline_closes_and_does_not_dial_until_online():
    d = live_driver()
    d.rt.network_changed(False, d.now)
    cmds = d.pump()
    assert [c[2] for c in d.closes(cmds)] == [conn.CLOSE_OFFLINE]
    assert d.state == "offline"
    assert d.opens(d.advance(600000)) == []
    d.rt.network_changed(True, d.now)
    assert len(d.opens(d.pump())) == 1
    assert d.state == "reconnecting"


def test_offline_while_waiting_and_online_while_hidden():
    d = live_driver()
    d.closed(1006)
    d.rt.network_changed(False, d.now)
    assert d.state == "offline" and d.rt.status["nextRetryAt"] is None
    d.rt.visibility_changed(False, d.now)
    d.rt.network_changed(True, d.now)
    assert d.opens(d.pump()) == [] and d.state == "reconnecting"
    d.rt.visibility_changed(True, d.now)
    assert len(d.opens(d.pump())) == 1


def test_start_while_offline_waits_for_online():
    d = Driver(dict(CFG))
    d.rt.network_changed(False, 0)
    d.start()
    assert d.state == "offline" and d.opens() == []
    d.rt.network_changed(True, 10)
    assert len(d.opens(d.pump())) == 1 and d.state == "connecting"


# ---------------------------------------------------------------- tokens and auth
def test_missing_token_means_auth_required_without_dialling():
    d = Driver(dict(CFG), token=None)
    d.start()
    assert d.state == "auth-required" and d.opens() == []
    d.token = make_jwt(exp_s=WALL0 // 1000 + 60)
    d.rt.retry_now(d.now)
    assert len(d.opens(d.pump())) == 1 and d.state == "connecting"


def test_expired_token_is_caught_before_dialling():
    d = Driver(dict(CFG), token=make_jwt(exp_s=WALL0 // 1000 - 1))
    d.start()
    assert d.state == "auth-required" and d.opens() == []
    assert d.records(event="no-token")[0]["reason"] == "token expired"


def test_token_is_read_before_every_connect():
    seen = []
    d = Driver(dict(CFG))
    tokens = iter([make_jwt(exp_s=WALL0 // 1000 + 100, sub="a"), make_jwt(exp_s=WALL0 // 1000 + 100, sub="b")])

    def provider():
        token = next(tokens)
        seen.append(token)
        return token

    d.rt.connection.token_provider = provider
    d.connect()
    d.closed(1006)
    d.advance(1000)
    assert [o[3][-1] for o in d.opens()] == ["bearer." + t for t in seen]
    assert len(set(seen)) == 2


def test_token_expiring_during_backoff_stops_the_retries():
    d = Driver(dict(CFG), token=make_jwt(exp_s=WALL0 // 1000 + 5))
    d.connect()
    d.advance(6000)
    d.closed(1006)
    d.advance(1000)
    assert d.state == "auth-required" and len(d.opens()) == 1


def test_rest_401_means_auth_required():
    d = live_driver()
    d.rt.watch(("projects",), lambda e: None)
    (fetch,) = d.fetches(d.pump())
    d.fetch_result(fetch[1], 401, {"error": "unauthorized", "message": "bad token"})
    assert d.state == "auth-required"
    assert [c[2] for c in d.closes()] == [1000]


# ---------------------------------------------------------------- stop and stale sockets
def test_stop_closes_with_1000_and_stays_closed():
    d = live_driver()
    d.rt.stop(d.now)
    cmds = d.pump()
    assert d.closes(cmds) == [("close", "s1", 1000, "client stop")]
    assert d.state == "idle"
    d.closed(1000, sid="s1")
    assert d.opens(d.advance(600000)) == [] and d.state == "idle"


def test_inputs_for_old_sockets_are_ignored():
    d = live_driver()
    d.closed(1006)
    d.advance(1000)
    assert d.sid == "s2"
    d.rt.socket_opened("s1", d.now)
    d.rt.socket_message("s1", '{"type":"connected"}', d.now)
    d.rt.socket_closed("s1", 4401, "", d.now)
    assert d.state == "reconnecting" and d.pump() == []


def test_stats_count_reconnects_and_time_to_reconnect():
    d = live_driver(rand=Const(0.5))
    d.advance(10000)
    d.closed(1006)
    d.advance(750)
    d.opened()
    d.advance(100)
    d.connected()
    stats = d.rt.stats
    assert stats["reconnects"] == 1 and stats["drops"] == 1 and stats["lastReconnectMs"] == 850
    assert stats["connects"] == 2


def test_config_defaults_and_bad_values():
    from client.config import ClientConfig

    cfg = ClientConfig({"heartbeatIntervalMs": "x", "reconnectMaxAttempts": True, "connectTimeoutMs": -5})
    assert cfg.heartbeat_ms == 30000 and cfg.reconnect_max_attempts == 10 and cfg.connect_timeout_ms == 10000
    assert ClientConfig(None).restart_window_ms == 5000


def test_without_a_wall_clock_expiry_is_judged_from_server_event_time():
    d = Driver(dict(CFG), token=make_jwt(exp_s=WALL0 // 1000 + 30), wall=False)
    d.rt.subscribe("apollo", lambda e: None)
    d.connect()
    d.server({"type": "event", "eventType": "x", "projectId": "apollo", "seq": 1, "epoch": "e", "timestamp": WALL0 + d.now, "data": {}})
    d.advance(40000)
    d.server({"type": "ping"})
    d.closed(1006)
    d.advance(1000)
    assert d.state == "auth-required" and len(d.opens()) == 1


def test_reconnect_off_never_dials_by_itself_but_retry_still_works():
    d = Driver(dict(CFG, reconnect=False), rand=Const(0.5))
    d.connect()
    d.closed(1006)
    assert d.state == "suspended"
    assert d.rt.status["nextRetryAt"] is None and d.rt.get_timer() is None
    assert d.opens(d.advance(600000)) == []
    d.rt.retry_now(d.now)
    assert len(d.opens(d.pump())) == 1
    d.closed(1012)  # even a restart hint is not followed automatically
    assert d.state == "suspended" and d.opens(d.advance(600000)) == []


def test_reconnect_option_defaults_on_and_only_false_turns_it_off():
    from client.config import ClientConfig

    assert ClientConfig({}).reconnect is True
    assert ClientConfig({"reconnect": 0}).reconnect is True
    assert ClientConfig({"reconnect": False}).reconnect is False


def test_a_dial_that_fails_inside_the_restart_window_stays_spread_over_the_rest_of_it():
    d = live_driver(rand=Const(0.5))
    d.server({"type": "restart", "reconnectWithinMs": 10000})
    d.closed(1012, "service restart")
    assert d.rt.status["nextRetryAt"] - d.now == 5000  # half the window
    d.advance(5000)  # dials; the new server is not listening yet
    d.closed(1006)
    # the second attempt's normal backoff would say 1.25 s; the window has 5 s left: 0.5 * 5 s
    assert d.rt.status["nextRetryAt"] - d.now == 2500


def test_after_the_restart_window_a_failed_dial_uses_the_normal_backoff():
    d = live_driver(rand=Const(0.5))
    d.server({"type": "restart", "reconnectWithinMs": 1000})
    d.closed(1012, "service restart")
    d.advance(1000)
    d.closed(1006)
    assert d.rt.status["nextRetryAt"] - d.now == 1250  # the second attempt's normal backoff: the window is over
