"""Readable console lines: one sentence per telemetry record, the level that picks the console method,
and the record itself without its empty fields. Driven through the real connection machine."""

import pytest

from client import logtext
from client_harness import Driver

CFG = {"reconnectBaseMs": 1000, "reconnectMaxMs": 16000, "reconnectMaxAttempts": 10, "suspendedRetryMs": 60000, "backoff": "seed"}


def lines(d, event):
    return [logtext.line(r) for r in d.records(event=event)]


def test_a_drop_reads_closed_then_reconnecting_then_connected_with_attempt_and_downtime():
    d = Driver(dict(CFG))
    d.connect()
    assert lines(d, "connected") == [("info", "[WebSocket] Connected")]
    d.closed(1006)
    d.advance(1000)
    d.closed(1006)
    d.advance(2000)
    d.closed(1006)
    d.advance(4000)
    d.opened()
    d.now += 200
    d.connected()
    assert lines(d, "closed")[0] == ("warn", "[WebSocket] Closed 1006")
    assert [text for _, text in lines(d, "fail")] == [
        "[WebSocket] Reconnecting in 1.0 s (attempt 1/10)",
        "[WebSocket] Reconnecting in 2.0 s (attempt 2/10)",
        "[WebSocket] Reconnecting in 4.0 s (attempt 3/10)",
    ]
    assert lines(d, "connected")[-1] == ("info", "[WebSocket] Connected (attempt 3, offline 7.2 s)")


def test_used_up_attempts_read_as_an_error_with_the_retry_period():
    d = Driver(dict(CFG, reconnectMaxAttempts=2))
    d.connect()
    for _ in range(3):
        d.closed(1006)
        d.advance(20000)
    level, text = lines(d, "exhausted")[0]
    assert (level, text) == ("error", "[WebSocket] No answer after 2 attempts; retrying every 60 s")


def test_reconnect_off_says_so():
    d = Driver(dict(CFG, reconnect=False))
    d.connect()
    d.closed(1006)
    level, text = lines(d, "exhausted")[0]
    assert level == "error" and "automatic reconnect is off" in text


def test_invalid_frame_warns_and_client_side_timeouts_say_which():
    d = Driver(dict(CFG, connectTimeoutMs=3000))
    d.connect()
    d.server("{not json")
    assert lines(d, "bad-frame") == [("warn", "[WebSocket] Ignored an invalid frame")]
    d.closed(1006)
    d.advance(1000)  # dial
    d.advance(3000)  # no greeting: connect timeout
    assert lines(d, "fail")[-1] == ("warn", "[WebSocket] Reconnecting in 2.0 s (attempt 2/10) after a connect timeout")


def test_auth_and_server_errors_go_to_console_error():
    d = Driver(dict(CFG))
    d.connect()
    d.server({"type": "error", "error": "forbidden", "projectId": "apollo", "message": "not a member"})
    assert lines(d, "server-error")[0][0] == "error"
    d.closed(4401, "token expired")
    assert lines(d, "auth-failed") == [("error", "[WebSocket] Sign-in needed: token expired")]
    assert lines(d, "closed")[-1] == ("warn", "[WebSocket] Closed 4401 (token expired)")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"event": "closed", "closeCode": 1000, "reason": "client stop"}, ("info", "Closed 1000 (client stop)")),
        ({"event": "subscribed", "projectId": "apollo", "recovered": True, "replayed": 3}, ("info", "Subscribed to apollo (resumed, 3 missed events replayed)")),
        ({"event": "subscribed", "projectId": "apollo", "recovered": False}, ("warn", "Subscribed to apollo (could not resume: refetching)")),
        ({"event": "restart-hint", "delayMs": 3000}, ("info", "Server restarting; reconnecting within 3.0 s")),
        ({"event": "fetch.failed", "method": "GET", "path": "/api/projects", "error": "abort"}, ("warn", "Request failed: GET /api/projects (abort)")),
        ({"event": "something-new", "level": "error"}, ("error", "something-new")),
        ({"event": "something-new"}, ("info", "something-new")),
    ],
)
def test_describe(record, expected):
    assert logtext.describe(record) == expected


def test_every_event_the_core_logs_has_a_sentence():
    import re
    from pathlib import Path

    core = Path(__file__).resolve().parents[2] / "web" / "client"
    source = (core / "connection.py").read_text() + (core / "runtime.py").read_text()
    constants = dict(re.findall(r'^([A-Z_]+) = "([a-z-]+)"', source, re.M))
    logged = set(re.findall(r'log_event\("([a-z-]+)"', source))
    logged |= {value for name, value in constants.items() if re.search(r"_fire\(" + name + r"\b", source)}
    assert logged and logged - set(logtext.DESCRIBE) == set()


def test_fields_drop_empty_values_only():
    assert logtext.fields({"event": "fail", "delayMs": 0, "closeCode": None, "hidden": False, "reason": None}) == {
        "event": "fail", "delayMs": 0, "hidden": False}


@pytest.mark.parametrize(("ms", "text"), [(0, "0.0 s"), (4249, "4.2 s"), (4250, "4.3 s"), (60000, "60.0 s"), (None, "? s")])
def test_seconds(ms, text):
    assert logtext.seconds(ms) == text


def test_every_tabs_record_has_a_sentence():
    import re
    from pathlib import Path

    source = (Path(__file__).resolve().parents[2] / "web" / "client" / "tabs.py").read_text()
    logged = set(re.findall(r'_log\("(tabs\.[a-z-]+)"', source))
    assert logged and logged - set(logtext.DESCRIBE) == set()
    assert logtext.describe({"event": "tabs.role", "role": "follower", "leader": "tab1"}) == (
        "info", "Following the tab that holds the connection (tab1)")
    assert logtext.describe({"event": "tabs.role", "role": "leader"})[1].endswith("(leader)")
