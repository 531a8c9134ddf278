"""Wire helpers for `dashboard.v1` (docs/protocol.md): parse server frames, build client frames.

`parse(text)` returns a dict with a string "type" or None for anything malformed (never raises).
The builders return compact JSON text ready for a ("send", sid, text) command.
"""

import json

SUBPROTOCOL = "dashboard.v1"
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


def protocols(token):
    return [SUBPROTOCOL, BEARER_PREFIX + token]


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


def hello(attempts, downtime_ms):
    return dumps({"action": "hello", "reconnectAttempts": attempts, "downtimeMs": downtime_ms})


def is_int(value):
    """int but not bool (MicroPython: bool is not an int subclass; CPython: it is)."""
    return isinstance(value, int) and not isinstance(value, bool)
