"""Readable console lines for the connection's telemetry records (the ("log", record) commands).

`describe(record)` returns `(level, text)`: level is "debug", "info", "warn" or "error" and text is one
sentence such as `Connected (attempt 3, offline 4.2 s)`. `fields(record)` is the record without its empty
(None) fields. The browser adapter prints `"[WebSocket] " + text` with the console method of that level,
then the `fields(record)` object; nothing else decides how a record reads.
"""

PREFIX = "[WebSocket]"
LEVELS = ("debug", "info", "warn", "error")
TIMEOUT_REASONS = ("connect timeout", "heartbeat timeout", "probe timeout")


def seconds(ms):
    """`4.2 s` for 4200 ms (one decimal)."""
    if ms is None:
        return "? s"
    tenths = int(ms / 100 + 0.5)
    return str(tenths // 10) + "." + str(tenths % 10) + " s"


def whole_seconds(ms):
    """`60 s` for 60000 ms, `5 s` for 5000; one decimal for what is neither whole nor long (`2.5 s`)."""
    if ms is None:
        return "? s"
    if ms >= 10000 or ms % 1000 == 0:
        return str(int(ms / 1000 + 0.5)) + " s"
    return seconds(ms)


def fields(record):
    """The record without its None fields (what the console shows as an object)."""
    out = {}
    for key in record:
        if record[key] is not None:
            out[key] = record[key]
    return out


def _connected(r):
    parts = []
    attempt = r.get("attempt") or 0
    if attempt > 0:
        parts.append("attempt " + str(attempt))
    if r.get("downtimeMs") is not None:
        parts.append("offline " + seconds(r["downtimeMs"]))
    if not parts:
        return "info", "Connected"
    return "info", "Connected (" + ", ".join(parts) + ")"


def _closed(r):
    code = r.get("closeCode")
    text = "Closed " + str(code)
    if r.get("reason"):
        text += " (" + str(r["reason"]) + ")"
    return ("info" if code == 1000 else "warn"), text


def _fail(r):
    text = "Reconnecting in " + seconds(r.get("delayMs")) + " (attempt " + str(r.get("attempt"))
    if r.get("maxAttempts") is not None:
        text += "/" + str(r["maxAttempts"])
    text += ")"
    if r.get("reason") in TIMEOUT_REASONS:
        text += " after a " + r["reason"]
    return "warn", text


def _exhausted(r):
    if r.get("retryEveryMs") is None:
        return "error", "Connection lost and automatic reconnect is off; waiting for Retry, the network or the tab"
    tries = r.get("maxAttempts")
    return "error", "No answer after " + str(tries) + " attempts; retrying every " + whole_seconds(r["retryEveryMs"])


def _dial(r):
    attempt = r.get("attempt") or 0
    return "info", "Connecting" + (" (attempt " + str(attempt) + ")" if attempt > 0 else "")


def _subscribed(r):
    project = str(r.get("projectId"))
    if r.get("recovered") is True:
        return "info", "Subscribed to " + project + " (resumed, " + str(r.get("replayed") or 0) + " missed events replayed)"
    if r.get("recovered") is False:
        return "warn", "Subscribed to " + project + " (could not resume: refetching)"
    return "info", "Subscribed to " + project


ROLE_TEXT = {
    "leader": "This tab holds the connection for every tab (leader)",
    "follower": "Following the tab that holds the connection",
    "candidate": "Looking for the tab that holds the connection",
    "closed": "Left the other tabs",
    "own": "This tab keeps a connection of its own",
}


def _tabs_role(r):
    text = ROLE_TEXT.get(r.get("role"), "Tab role " + str(r.get("role")))
    if r.get("role") == "follower" and r.get("leader"):
        text += " (" + str(r["leader"]) + ")"
    return "info", text


def _reason(prefix, level):
    def build(r):
        reason = r.get("reason")
        return level, prefix + (": " + str(reason) if reason else "")

    return build


def _fixed(level, text):
    return lambda r: (level, text)


DESCRIBE = {
    "start": _dial,
    "dial": _dial,
    "open": _fixed("debug", "Socket open, waiting for the server's greeting"),
    "connected": _connected,
    "closed": _closed,
    "fail": _fail,
    "exhausted": _exhausted,
    "auth-failed": _reason("Sign-in needed", "error"),
    "no-token": _reason("Not dialling, sign-in needed", "warn"),
    "offline": _fixed("warn", "Browser offline; waiting for the network"),
    "schedule": _fixed("info", "Back online; reconnecting once the tab is visible"),
    "stop": _fixed("info", "Stopped"),
    "freeze": _fixed("info", "Page frozen or left; socket closed (4001) until it is back"),
    "resume": _fixed("info", "Page back; reconnecting now"),
    "stable": _fixed("debug", "Connection stable; backoff reset"),
    "hidden": _fixed("debug", "Tab hidden"),
    "visible": _fixed("debug", "Tab visible"),
    "probe": _fixed("info", "Tab visible again after a quiet spell; checking the connection"),
    "retry-deferred": _fixed("info", "Retry deferred until the tab is visible"),
    "restart-hint": lambda r: ("info", "Server restarting; reconnecting within " + seconds(r.get("delayMs"))),
    "bad-frame": _fixed("warn", "Ignored an invalid frame"),
    "server-error": _reason("Server error", "error"),
    "listener-error": _reason("Error in a page listener", "error"),
    "subscribed": _subscribed,
    "gap": lambda r: ("warn", "Missed events of " + str(r.get("projectId")) + "; refetching"),
    "epoch": lambda r: ("warn", str(r.get("projectId")) + " restarted its event numbering; refetching"),
    # in-band token refresh (Runtime.send_auth)
    "auth-sent": _fixed("debug", "Sent a refreshed token on the open connection"),
    "auth-accepted": _fixed("info", "The server took the refreshed token; the connection stays"),
    # client/tabs.py: one socket shared by every tab
    "tabs.role": _tabs_role,
    "tabs.leader-left": _fixed("info", "The tab holding the connection left; the next one takes over"),
    "tabs.steal": _fixed("warn", "The tab holding the connection stopped answering; taking it over"),
    "tabs.share-dropped": _reason("A tab stopped answering; its projects were released", "info"),
    "tabs.lock-failed": _reason("No connection can be shared between tabs; this tab keeps its own", "warn"),
    # client/session.py: the token's life
    "session.refresh": _reason("Refreshing the sign-in token", "debug"),
    "session.refreshed": _fixed("info", "Sign-in token refreshed"),
    "session.adopted": _fixed("debug", "Took the sign-in token another tab refreshed"),
    "session.refresh-failed": lambda r: ("warn", "Token refresh failed; trying again in " + seconds(r.get("delayMs"))),
    "session.refresh-refused": _reason("The server refused to refresh the sign-in token", "warn"),
    "session.signed-out": _reason("Signed out", "warn"),
    "fetch.failed": lambda r: ("warn", "Request failed: " + str(r.get("method")) + " " + str(r.get("path")) + " (" + str(r.get("error")) + ")"),
}


def describe(record):
    """`(level, text)` for one telemetry record; an unknown event reads as its name."""
    event = record.get("event")
    build = DESCRIBE.get(event)
    if build is None:
        level = record.get("level")
        return (level if level in LEVELS else "info"), str(event if event is not None else record.get("msg", ""))
    return build(record)


def line(record):
    """`(level, "[WebSocket] <text>")`: what the adapter prints before the record's fields."""
    level, text = describe(record)
    return level, PREFIX + " " + text
