"""Page lifecycle through the Runtime: `lifecycle_changed(frozen, now)` for `pagehide`/`freeze` and
`pageshow` (persisted)/`resume`. Frozen: the socket is closed with 4001 at once and nothing runs;
back: one dial at once (no backoff), resume with `since`, nothing refetched when the server recovers."""

import pytest

from client import connection as conn
from client_harness import Const, Driver, make_jwt

CFG = {"reconnectBaseMs": 1000, "reconnectMaxMs": 16000, "reconnectMaxAttempts": 3, "suspendedRetryMs": 60000}


def ev(pid, seq, data=None):
    return {"type": "event", "eventType": "custom.noop", "projectId": pid, "seq": seq, "epoch": "e1", "timestamp": 1, "data": data or {}}


def acked(d, pid, seq, recovered=False, replayed=0):
    return d.server({"type": "subscribed", "projectId": pid, "recovered": recovered, "replayed": replayed, "seq": seq, "epoch": "e1"})


def live(pids=("apollo",)):
    d = Driver(dict(CFG), rand=Const(0.5))
    events = []
    for pid in pids:
        d.rt.subscribe(pid, events.append)
    d.connect()
    for pid in pids:
        acked(d, pid, 10)
    d.server(ev(pids[0], 11))
    d.advance(6000)  # stable
    return d, events


def freeze(d):
    d.rt.lifecycle_changed(True, d.now)
    return d.pump()


def resume(d):
    d.rt.lifecycle_changed(False, d.now)
    return d.pump()


def test_freeze_closes_the_socket_with_going_away_and_runs_nothing():
    d, _ = live()
    old = d.sid
    cmds = freeze(d)
    assert [(c[1], c[2]) for c in d.closes(cmds)] == [(old, conn.CLOSE_GOING_AWAY)]
    assert conn.CLOSE_GOING_AWAY == 4001  # RFC 6455's 1001 is refused by WebSocket.close(); see docs/client.md
    assert d.rt.status["phase"] == "frozen" and d.state == "connecting"
    assert d.rt.status["closeCode"] == 4001 and d.rt.status["nextRetryAt"] is None
    assert d.rt.get_timer() is None
    assert d.advance(3_600_000) == []  # an hour in the back/forward cache: no dial, no watchdog
    assert d.records(event="freeze")[-1]["reason"] == "page frozen"
    assert d.rt.stats["drops"] == 0  # leaving on purpose is not an outage


def test_resume_dials_at_once_and_resubscribes_with_since_without_hello():
    d, events = live(("apollo", "zeus"))
    freeze(d)
    d.advance(120_000)
    cmds = resume(d)
    (dial,) = d.opens(cmds)
    assert dial[1] != "s1" and d.state == "connecting" and d.rt.status["attempt"] == 0
    d.opened()
    cmds = d.connected()
    assert d.sent(cmds) == [
        {"action": "subscribe", "projectId": "apollo", "since": {"epoch": "e1", "seq": 11}},
        {"action": "subscribe", "projectId": "zeus", "since": {"epoch": "e1", "seq": 10}},
    ]  # no `hello`: the server's reconnect metrics are for outages
    assert d.state == "live"
    d.server(ev("apollo", 12))
    acked(d, "apollo", 12, recovered=True, replayed=1)
    assert [e["seq"] for e in events] == [11, 12]
    stats = d.rt.stats
    assert (stats["resumes"], stats["reconnects"], stats["connects"], stats["recovered"]) == (1, 0, 2, 1)


def test_the_old_sockets_late_close_is_ignored():
    d, _ = live()
    old = d.sid
    freeze(d)
    resume(d)
    d.closed(1006, sid=old)  # Chromium delivers the close of the frozen socket after `resume`
    assert d.rt.status["phase"] == "connecting"
    d.opened()
    d.connected()
    assert d.state == "live"


def test_a_recovered_resume_refetches_nothing():
    d, _ = live()
    for key in (("stories", "apollo"), ("escalations", "apollo"), ("project", "apollo")):
        d.rt.watch(key, lambda entry: None, d.now)
    for f in d.fetches(d.pump()):
        d.fetch_result(f[1], 200, [] if "/stories" in f[3] or "/escalations" in f[3] else {"id": "apollo", "counts": {}})
    d.advance(1000)
    freeze(d)
    d.advance(60_000)
    resume(d)
    d.opened()
    d.connected()
    acked(d, "apollo", 11, recovered=True)
    assert d.fetches(d.advance(5000)) == []


@pytest.mark.parametrize("setup", ["waiting", "suspended", "dialing"])
def test_freeze_cancels_a_pending_retry_and_resume_dials_at_once_with_attempts_reset(setup):
    d, _ = live()
    d.closed(1006)
    if setup == "suspended":
        for _ in range(3):
            d.advance(d.rt.status["nextRetryAt"] - d.now)
            d.closed(1006)
        assert d.state == "suspended"
    elif setup == "dialing":
        d.advance(d.rt.status["nextRetryAt"] - d.now)
        assert d.rt.status["phase"] == "redialing"
    dialing = d.sid if setup == "dialing" else None
    cmds = freeze(d)
    assert [c[1] for c in d.closes(cmds)] == ([dialing] if dialing else [])
    assert d.rt.get_timer() is None and d.advance(600_000) == []
    (dial,) = d.opens(resume(d))
    assert d.rt.status["attempt"] == 0


def test_a_failed_resume_backs_off_and_counts_the_outage_from_there():
    d, _ = live()
    freeze(d)
    d.advance(300_000)
    resume(d)
    d.closed(1006)  # the server is down
    assert d.state == "reconnecting" and d.rt.status["attempt"] == 1
    d.advance(750)  # floor 250 + 0.5 * 1000
    d.opened()
    d.advance(50)
    cmds = d.connected()
    assert {"action": "hello", "reconnectAttempts": 1, "downtimeMs": 800} in d.sent(cmds)
    assert d.rt.stats["resumes"] == 0 and d.rt.stats["reconnects"] == 1


@pytest.mark.parametrize("state", ["idle", "offline", "auth-required"])
def test_pages_without_a_connection_stay_as_they_are(state):
    d = Driver(dict(CFG), token=None if state == "auth-required" else "default")
    if state == "offline":
        d.rt.network_changed(False, d.now)
    if state != "idle":
        d.start()
    assert d.state == state
    assert freeze(d) == [] and d.state == state
    assert resume(d) == [] and d.state == state


def test_offline_while_frozen_waits_for_online_after_resume():
    d, _ = live()
    freeze(d)
    d.rt.network_changed(False, d.now)
    assert d.state == "offline"
    assert d.opens(resume(d)) == []
    d.rt.network_changed(True, d.now)
    assert len(d.opens(d.pump())) == 1


def test_resume_with_an_expired_token_needs_sign_in():
    d, _ = live()
    freeze(d)
    d.token = make_jwt(exp_s=1)
    assert d.opens(resume(d)) == [] and d.state == "auth-required"


def test_stop_while_frozen_is_idle():
    d, _ = live()
    freeze(d)
    d.rt.stop(d.now)
    assert d.closes(d.pump()) == [] and d.state == "idle"
    assert resume(d) == [] and d.state == "idle"
