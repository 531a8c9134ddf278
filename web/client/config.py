"""Client timings: the dict from GET /api/config, with defaults for missing or malformed keys.

Call `ClientConfig(dict_or_None)` once and hand it to `Runtime`; read the attributes, never the dict.
"""

# key in /api/config -> (attribute, default)
SERVER_KEYS = (
    ("heartbeatIntervalMs", "heartbeat_ms", 30000),
    ("heartbeatMisses", "heartbeat_misses", 2),
    ("reconnectBaseMs", "reconnect_base_ms", 1000),
    ("reconnectMaxMs", "reconnect_max_ms", 16000),
    ("reconnectMaxAttempts", "reconnect_max_attempts", 10),
    ("connectTimeoutMs", "connect_timeout_ms", 10000),
    ("suspendedRetryMs", "suspended_retry_ms", 60000),
    ("restartWindowMs", "restart_window_ms", 5000),
)
# client-only knobs (same dict; the server does not send them)
CLIENT_KEYS = (
    ("reconnectFloorMs", "reconnect_floor_ms", 250),
    ("stableAfterMs", "stable_after_ms", 5000),  # connected this long -> backoff resets
    ("probeTimeoutMs", "probe_timeout_ms", 3000),  # visible-again liveness probe
    ("heartbeatGraceMs", "heartbeat_grace_ms", None),  # None: min(10 s, heartbeat interval)
    ("coalesceMs", "coalesce_ms", 250),  # cache invalidation burst window
)

ATTRS = tuple(a for _, a, _ in SERVER_KEYS) + tuple(a for _, a, _ in CLIENT_KEYS) + ("backoff_mode", "reconnect")


def _number(value, default):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    if value < 0 or value != value:
        return default
    return value


class ClientConfig:
    """Validated timings (milliseconds). `backoff` key: "jitter" (default) or "seed". `reconnect` key: False turns
    off every timed retry (a lost socket goes straight to `suspended`; online, visible and Retry still dial)."""

    __slots__ = ATTRS

    def __init__(self, raw=None):
        raw = raw if isinstance(raw, dict) else {}
        for key, attr, default in SERVER_KEYS + CLIENT_KEYS:
            setattr(self, attr, _number(raw.get(key), default))
        mode = raw.get("backoff")
        self.backoff_mode = mode if mode in ("jitter", "seed") else "jitter"
        self.reconnect = raw.get("reconnect") is not False
        if self.heartbeat_ms <= 0:
            self.heartbeat_ms = 30000
        if self.heartbeat_misses < 1:
            self.heartbeat_misses = 1

    def grace_ms(self, heartbeat_ms):
        """Extra slack on top of heartbeat * misses before the watchdog declares the socket dead."""
        if self.heartbeat_grace_ms is not None:
            return self.heartbeat_grace_ms
        return heartbeat_ms if heartbeat_ms < 10000 else 10000
