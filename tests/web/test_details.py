"""The connection details panel's content, from a runtime driven through a drop, a reconnect, events and pings."""

from client import details
from client_harness import Driver

TZ = 0


def to_wall(ms):
    return 1_764_000_000_000 + ms


def shown(d, runtime="micropython"):
    return {key: value for key, _, value in details.rows(d.rt.status, d.rt.stats, runtime, to_wall, TZ)}


def test_a_fresh_live_connection():
    d = Driver({"backoff": "seed"})
    d.connect()
    values = shown(d)
    assert values["state"] == "Live" and values["attempt"] == "–" and values["next-try"] == "–"
    assert values["runtime"] == "MicroPython" and values["client-id"] == "c-1"
    assert values["rtt"] == "not measured yet" and values["downtime"] == "none" and values["reconnects"] == "0"
    assert values["events"] == "0" and values["resumes"] == "0 recovered, 0 refetched" and values["freshness"] == "Live"
    assert [key for key, _, _ in details.rows({}, {}, "pyodide", to_wall)][:4] == ["state", "attempt", "next-try", "runtime"]
    assert shown(d, "pyodide")["runtime"] == "Pyodide"


def test_after_a_drop_events_pings_and_a_resume():
    d = Driver({"backoff": "seed", "reconnectBaseMs": 1000})
    d.rt.subscribe("apollo", lambda e: None, 0)
    d.connect()
    d.server({"type": "subscribed", "projectId": "apollo", "recovered": False, "replayed": 0, "seq": 1, "epoch": "e0"})
    d.server({"type": "event", "eventType": "story.created", "projectId": "apollo", "seq": 2, "epoch": "e0", "timestamp": 1, "data": {}})
    d.server({"type": "event", "eventType": "story.created", "projectId": "apollo", "seq": 2, "epoch": "e0", "timestamp": 1, "data": {}})
    d.server({"type": "ping"})
    d.advance(412)
    d.server({"type": "pong"})
    d.closed(1006)
    values = shown(d)
    assert values["state"] == "Reconnecting (last close 1006)" and values["attempt"] == "1"
    assert values["next-try"] == "16:00:01"  # 1 s after the drop, in wall-clock time
    assert values["freshness"].startswith("Data as of ")
    d.advance(1000)
    assert shown(d)["next-try"] == "dialling now"
    d.advance(3200)
    d.opened()
    d.connected()
    d.server({"type": "subscribed", "projectId": "apollo", "recovered": True, "replayed": 0, "seq": 2, "epoch": "e0"})
    values = shown(d)
    assert values["rtt"] == "412 ms" and values["downtime"] == "4.2 s" and values["reconnects"] == "1"
    assert values["events"] == "1"  # the duplicate is not counted
    assert values["resumes"] == "1 recovered, 0 refetched"


def test_panel_html_escapes_and_marks_each_value():
    html = details.panel_html([("client-id", "Client <id>", "<b>x</b>")])
    assert html == '<dt>Client &lt;id&gt;</dt><dd data-testid="details-client-id">&lt;b&gt;x&lt;/b&gt;</dd>'
