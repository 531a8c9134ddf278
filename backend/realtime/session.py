"""Sans-I/O state of one WebSocket connection: message parsing and validation, subscriptions held,
the rate-limit token buckets (messages, and re-subscribes per project), heartbeat and token-expiry deadlines.
No I/O and no clock: every input carries `now` (monotonic seconds).

The endpoint calls `received(now)` and `allow(now)` for each client message, then `parse(text)` (and
`allow_subscribe(project_id, now)` for a subscribe); the hub's `Deadlines` timer calls `handle_timer(now)`
at `get_timer()` and the endpoint runs its actions. An in-band `auth` moves `expires_at` (`reauthenticated`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..settings import Settings

PROJECT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

# Client-reported figures are clamped to these before they reach metrics or logs.
MAX_REPORTED_ATTEMPTS = 10_000
MAX_REPORTED_DOWNTIME_MS = 86_400_000  # one day
# Re-subscribes to one project: a bucket of this many, refilled by one every RESUBSCRIBE_INTERVAL_S.
RESUBSCRIBE_BURST = 5
RESUBSCRIBE_INTERVAL_S = 2.0

# Actions returned by `Session.handle_timer`.
SEND_PING = "ping"
TIMED_OUT = "timeout"
TOKEN_EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class Since:
    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    project_id: str
    since: Since | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    project_id: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Pong:
    pass


@dataclass(frozen=True, slots=True)
class Hello:
    reconnect_attempts: int
    downtime_ms: int


@dataclass(frozen=True, slots=True)
class Auth:
    """A fresh token for this connection (in-band refresh). `repr` hides it."""

    token: str

    def __repr__(self) -> str:
        return "Auth(token=…)"


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message that cannot be handled: reply with an error frame, keep the connection."""

    error: str  # "invalid_message" | "unknown_action"
    message: str


Command = Subscribe | Unsubscribe | Ping | Pong | Hello | Auth | Invalid


def _non_negative_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _project_id(raw: dict[str, object]) -> str | None:
    value = raw.get("projectId")
    return value if isinstance(value, str) and PROJECT_ID.match(value) else None


def parse(text: str) -> Command:
    """Turn one client text frame into a command, or `Invalid` with the reason."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        return Invalid("invalid_message", "not valid JSON")
    if not isinstance(raw, dict):
        return Invalid("invalid_message", "a message must be a JSON object")
    action = raw.get("action")
    if not isinstance(action, str):
        return Invalid("invalid_message", "missing string field 'action'")
    if action in ("subscribe", "unsubscribe"):
        project_id = _project_id(raw)
        if project_id is None:
            return Invalid("invalid_message", "'projectId' must be a short id string")
        if action == "unsubscribe":
            return Unsubscribe(project_id)
        since = raw.get("since")
        if since is None:
            return Subscribe(project_id)
        if (
            not isinstance(since, dict)
            or not isinstance(since.get("epoch"), str)
            or not 0 < len(since["epoch"]) <= 64
            or not _non_negative_int(since.get("seq"))
        ):
            return Invalid("invalid_message", "'since' must be {epoch: string, seq: non-negative integer}")
        return Subscribe(project_id, Since(since["epoch"], since["seq"]))
    if action == "ping":
        return Ping()
    if action == "pong":
        return Pong()
    if action == "hello":
        attempts = raw.get("reconnectAttempts", 0)
        downtime = raw.get("downtimeMs", 0)
        if not _non_negative_int(attempts) or not _non_negative_int(downtime):
            return Invalid("invalid_message", "'reconnectAttempts' and 'downtimeMs' must be non-negative integers")
        return Hello(min(attempts, MAX_REPORTED_ATTEMPTS), min(downtime, MAX_REPORTED_DOWNTIME_MS))  # type: ignore[type-var]
    if action == "auth":
        token = raw.get("token")
        if not isinstance(token, str) or not token:
            return Invalid("invalid_message", "'token' must be a non-empty string")
        return Auth(token)
    return Invalid("unknown_action", f"unknown action {action[:40]!r}")


class Session:
    """One connection's state. `expires_at` is the token expiry on the same monotonic clock as `now`;
    `first_ping` is the fraction of a heartbeat interval before the first server ping."""

    __slots__ = (
        "client_id", "user_id", "session_id", "connected_at", "expires_at", "subscriptions", "max_subscriptions",
        "_interval", "_misses", "_last_received", "_next_ping", "_rate", "_burst", "_tokens", "_refilled_at",
        "_resubscribes",
    )

    def __init__(
        self,
        settings: Settings,
        *,
        client_id: str,
        user_id: str,
        now: float,
        expires_at: float | None = None,
        first_ping: float = 1.0,
        session_id: str | None = None,
    ) -> None:
        self.client_id = client_id
        self.user_id = user_id
        self.session_id = session_id  # the token's `sid` claim (the sign-in session), if any
        self.connected_at = now
        self.expires_at = expires_at
        self.subscriptions: set[str] = set()
        self.max_subscriptions = settings.max_subscriptions
        self._interval = settings.heartbeat_interval_ms / 1000
        self._misses = max(settings.heartbeat_misses, 1)
        self._last_received = now
        # `first_ping` ∈ (0, 1]: the first ping comes after that fraction of an interval. The endpoint draws it at
        # random so that connections opened together (a reconnect storm) do not ping, and re-check memberships,
        # in the same instant every interval ever after; never later than one interval.
        self._next_ping = now + self._interval * min(max(first_ping, 0.0), 1.0)
        self._rate = settings.rate_limit_per_s
        # The bucket always holds one full re-subscribe burst (a subscribe per project plus `hello`), so a
        # client that legitimately holds the maximum number of subscriptions is never limited by reconnecting.
        self._burst = float(max(settings.rate_limit_burst, settings.max_subscriptions + 2, 1))
        self._tokens = self._burst
        self._refilled_at = now
        self._resubscribes: dict[str, tuple[float, float]] | None = None  # project → (tokens, at); on demand

    # -- inputs ---------------------------------------------------------------------------------

    def received(self, now: float) -> None:
        """Any client message proves the peer alive."""
        self._last_received = max(self._last_received, now)

    def allow(self, now: float) -> bool:
        """Take one token from the bucket; False means the client exceeds the rate limit."""
        self._tokens = min(self._burst, self._tokens + (now - self._refilled_at) * self._rate)
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def allow_subscribe(self, project_id: str, now: float) -> bool:
        """Take one token from `project_id`'s re-subscribe bucket (`RESUBSCRIBE_BURST`, one more every
        `RESUBSCRIBE_INTERVAL_S`); False means this subscribe comes too soon after the previous ones.
        At most `2 × max_subscriptions` buckets are kept; the oldest are forgotten (a full bucket is the default)."""
        buckets = self._resubscribes
        if buckets is None:
            buckets = self._resubscribes = {}
        tokens, at = buckets.pop(project_id, (float(RESUBSCRIBE_BURST), now))
        tokens = min(float(RESUBSCRIBE_BURST), tokens + (now - at) / RESUBSCRIBE_INTERVAL_S)
        allowed = tokens >= 1.0
        buckets[project_id] = (tokens - 1.0 if allowed else tokens, now)
        while len(buckets) > 2 * self.max_subscriptions:
            del buckets[next(iter(buckets))]
        return allowed

    def reauthenticated(self, expires_at: float | None, session_id: str | None) -> None:
        """A fresh token was accepted in band: its expiry replaces the old deadline (see `get_timer`)."""
        self.expires_at = expires_at
        if session_id is not None:
            self.session_id = session_id

    # -- timers ---------------------------------------------------------------------------------

    @property
    def last_received(self) -> float:
        return self._last_received

    @property
    def dead_at(self) -> float:
        """When the connection is declared dead: `heartbeat_misses` silent intervals after the last message."""
        return self._last_received + self._misses * self._interval

    def get_timer(self) -> float:
        """The next moment `handle_timer` has something to do."""
        deadline = min(self._next_ping, self.dead_at)
        if self.expires_at is not None:
            deadline = min(deadline, self.expires_at)
        return deadline

    def handle_timer(self, now: float) -> list[str]:
        """Actions due at `now`: `TOKEN_EXPIRED` or `TIMED_OUT` (then close), or `SEND_PING`."""
        if self.expires_at is not None and now >= self.expires_at:
            return [TOKEN_EXPIRED]
        if now >= self.dead_at:
            return [TIMED_OUT]
        if now >= self._next_ping:
            while self._next_ping <= now:
                self._next_ping += self._interval
            return [SEND_PING]
        return []

    # -- subscriptions --------------------------------------------------------------------------

    def can_add_subscription(self) -> bool:
        return len(self.subscriptions) < self.max_subscriptions
