"""The Runtime façade itself: command draining, status listeners, stats, ids."""

from client.runtime import Runtime
from client_harness import Const, Driver


def test_commands_are_drained_once_and_in_order():
    d = Driver({})
    d.rt.start(0)
    first = d.rt.commands()
    assert [c[0] for c in first] == ["log", "open"]
    assert d.rt.commands() == []


def test_status_listener_hears_changes_only_and_can_unsubscribe():
    d = Driver({}, rand=Const(0.5))
    seen = []
    stop = d.rt.on_status(seen.append)
    d.start()
    d.opened()  # no state change: nothing new
    assert [s["state"] for s in seen] == ["connecting"]
    d.connected()
    stop()
    d.closed(1006)
    assert [s["state"] for s in seen] == ["connecting", "live"]
    assert set(seen[0]) >= {"state", "attempt", "nextRetryAt", "lastLiveAt", "closeCode"}


def test_deferred_retry_while_hidden_is_published():
    d = Driver({}, rand=Const(0.5))
    d.connect()
    d.closed(1006)
    d.rt.visibility_changed(False, d.now)
    d.now += 5000
    d.rt.handle_timer(d.now)
    assert d.statuses[-1]["deferred"] is True and d.statuses[-1]["hidden"] is True


def test_unknown_request_ids_and_stale_sockets_are_ignored():
    d = Driver({})
    d.rt.fetch_result("r999", 200, "[]", 0)
    d.rt.socket_message("nope", '{"type":"connected"}', 0)
    assert d.rt.commands() == [] and d.state == "idle"


def test_stats_expose_the_counters():
    rt = Runtime({}, lambda: None)
    stats = rt.stats
    for key in ("reconnects", "failedAttempts", "lastReconnectMs", "drops", "duplicates", "gaps", "refetches"):
        assert stats[key] == 0


def test_default_rand_and_config_work_without_arguments():
    rt = Runtime(None, lambda: "tok")
    rt.start(0)
    cmds = rt.commands()
    assert cmds[-1][0] == "open" and cmds[-1][3] == ["dashboard.v2", "dashboard.v1", "bearer.tok"]
    assert rt.get_timer() == 10000
