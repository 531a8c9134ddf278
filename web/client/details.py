"""The connection details panel as data: `rows(...)` -> [(key, label, value)], `panel_html(rows)` -> markup.

Pure functions of `rt.status` and `rt.stats` (no `js`): the browser side (`client.browser.details`) renders the
result into `data-testid="connection-details"` after every pump while the panel is open. Times follow
`client.presenter`: `to_wall(monotonic_ms)` gives epoch ms, `tz_offset_min` is `Date.getTimezoneOffset()`.
"""

from .logtext import seconds
from .presenter import STATE_LABELS, clock, escape, freshness

RUNTIME_LABELS = {"micropython": "MicroPython", "pyodide": "Pyodide"}
DASH = "–"


def _count(stats, key):
    value = stats.get(key) if stats else None
    return str(int(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else "0"


def rows(status, stats, runtime, to_wall, tz_offset_min=0):
    """What the panel shows, in order: (key, label, value); `key` becomes the value's `data-testid` suffix."""
    status = status or {}
    stats = stats or {}
    state = status.get("state") or "idle"
    state_text = STATE_LABELS.get(state, state)
    if status.get("closeCode") is not None and state != "live":
        state_text += " (last close " + str(status.get("closeCode")) + ")"
    attempt = status.get("attempt") or 0
    next_at = status.get("nextRetryAt")
    if next_at is not None:
        next_try = clock(to_wall(next_at), tz_offset_min)
    elif state in ("connecting", "reconnecting"):
        next_try = "dialling now"
    else:
        next_try = DASH
    rtt = stats.get("rttMs")
    downtime = stats.get("lastReconnectMs")
    reconnects = _count(stats, "reconnects")
    last_live = status.get("lastLiveAt")
    return [
        ("state", "State", state_text),
        ("attempt", "Attempt", str(attempt) if attempt else DASH),
        ("next-try", "Next try", next_try),
        ("runtime", "Runtime", RUNTIME_LABELS.get(runtime, runtime or DASH)),
        ("client-id", "Client id", stats.get("clientId") or DASH),
        ("rtt", "Round trip", str(int(rtt + 0.5)) + " ms" if isinstance(rtt, (int, float)) else "not measured yet"),
        ("downtime", "Last downtime", seconds(downtime) if reconnects != "0" and downtime is not None else "none"),
        ("reconnects", "Reconnects this session", reconnects),
        ("events", "Events received", _count(stats, "events")),
        ("resumes", "Resumes", _count(stats, "recovered") + " recovered, " + _count(stats, "unrecovered") + " refetched"),
        ("freshness", "Data", freshness(status, None if last_live is None else to_wall(last_live), tz_offset_min)),
    ]


def panel_html(items):
    """A `<dl>` with one `data-testid="details-<key>"` value per row (escaped)."""
    parts = []
    for key, label, value in items:
        parts.append('<dt>%s</dt><dd data-testid="details-%s">%s</dd>' % (escape(label), escape(key), escape(value)))
    return "".join(parts)
