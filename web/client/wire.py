"""Wire helpers for `dashboard.v2`/`dashboard.v1` (docs/protocol.md): parse server frames, build client frames.

`parse(text)` returns a dict with a string "type" or None for anything malformed (never raises);
`batch_events(msg)` unpacks a `dashboard.v2` batch frame into its event messages.
The builders return compact JSON text ready for a ("send", sid, text) command.
"""

import json

SUBPROTOCOLS = ["dashboard.v2", "dashboard.v1"]  # offered newest first; v2 adds batch frames
SUBPROTOCOL = SUBPROTOCOLS[-1]
BEARER_PREFIX = "bearer."


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


def parse(text):
    try:
        msg = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        return None
    return msg


def batch_events(msg):
    """The event messages of a `{"type":"batch","events":[...]}` frame, or None if it is malformed
    (not a list, or an element that is not an event object)."""
    events = msg.get("events")
    if not isinstance(events, list) or not events:
        return None
    for event in events:
        if not isinstance(event, dict) or event.get("type") != "event":
            return None
    return events


def protocols(token):
    return SUBPROTOCOLS + [BEARER_PREFIX + token]


def subscribe(project_id, epoch=None, seq=None):
    msg = {"action": "subscribe", "projectId": project_id}
    if epoch is not None and seq is not None:
        msg["since"] = {"epoch": epoch, "seq": seq}
    return dumps(msg)


def unsubscribe(project_id):
    return dumps({"action": "unsubscribe", "projectId": project_id})


def ping():
    return dumps({"action": "ping"})


def pong():
    return dumps({"action": "pong"})


def auth(token):
    return dumps({"action": "auth", "token": token})


def hello(attempts, downtime_ms):
    return dumps({"action": "hello", "reconnectAttempts": attempts, "downtimeMs": downtime_ms})


def is_int(value):
    """int but not bool (MicroPython: bool is not an int subclass; CPython: it is)."""
    return isinstance(value, int) and not isinstance(value, bool)
