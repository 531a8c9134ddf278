"""Sans-I/O connection machine for `/ws/status-updates`: states, timers and the close-code policy.

Theory of operation
-------------------
Everything that changes the connection state lives in this file, and every state change goes through
the `TRANSITIONS` table (state -> {event: next state}); a pair missing from the table is a bug and
raises `TransitionError`. Inputs carry `now` (monotonic milliseconds); outputs are tuples appended to
the shared outbox ("open", "send", "close", "log") plus `get_timer()`, the next absolute deadline.
After every input the owner (runtime.py) drains the outbox and re-arms one timer from `get_timer()`;
when it fires it calls `handle_timer(now)`.

Public states (what the UI shows) are the values of `PUBLIC`; two internal states ("waiting" for the
next try and "redialing" while a retry is in flight) are both shown as "reconnecting", and "frozen" (the page
is frozen or kept in the back/forward cache, no socket, no timers) is shown as "connecting": it is only ever
seen at the moment the page comes back, when it dials at once.
"""

from . import tokens, wire
from .backoff import Backoff

# internal states
IDLE = "idle"
CONNECTING = "connecting"  # first dial after start(): socket opening or waiting for `connected`
LIVE = "live"
WAITING = "waiting"  # socket gone, next try scheduled at retry_at
REDIALING = "redialing"  # a retry is in flight
OFFLINE = "offline"
SUSPENDED = "suspended"  # fast retries used up: slow periodic retries + instant wake-ups
AUTH_REQUIRED = "auth-required"
FROZEN = "frozen"  # page frozen or in the back/forward cache: socket closed with 4001, nothing runs until resumed

PUBLIC = {
    IDLE: "idle",
    CONNECTING: "connecting",
    LIVE: "live",
    WAITING: "reconnecting",
    REDIALING: "reconnecting",
    OFFLINE: "offline",
    SUSPENDED: "suspended",
    AUTH_REQUIRED: "auth-required",
    FROZEN: "connecting",
}

# events
START = "start"  # first dial (start(), or leaving auth-required/offline before ever being live)
DIAL = "dial"  # a retry dial
CONNECTED = "connected"  # the server's `connected` message on the current socket
FAIL = "fail"  # socket lost or abandoned; a retry is scheduled
EXHAUSTED = "exhausted"  # socket lost and the fast attempts are used up
AUTH_FAILED = "auth-failed"  # 4401/4403/1008, or a REST 401
NO_TOKEN = "no-token"  # token missing or expired: never dial
GO_OFFLINE = "offline"
SCHEDULE = "schedule"  # back online while hidden: the dial waits for the tab to be visible
STOP = "stop"
FREEZE = "freeze"  # pagehide / freeze: the socket is closed on purpose, no retries while frozen
RESUME = "resume"  # pageshow (persisted) / resume: dial at once, no backoff

_AFTER_SOCKET = {CONNECTED: LIVE, FAIL: WAITING, EXHAUSTED: SUSPENDED, AUTH_FAILED: AUTH_REQUIRED, GO_OFFLINE: OFFLINE, STOP: IDLE, FREEZE: FROZEN}
_WAITING_LIKE = {DIAL: REDIALING, NO_TOKEN: AUTH_REQUIRED, AUTH_FAILED: AUTH_REQUIRED, GO_OFFLINE: OFFLINE, STOP: IDLE, FREEZE: FROZEN}

TRANSITIONS = {
    IDLE: {START: CONNECTING, NO_TOKEN: AUTH_REQUIRED, GO_OFFLINE: OFFLINE, AUTH_FAILED: AUTH_REQUIRED},
    CONNECTING: dict(_AFTER_SOCKET),
    LIVE: {FAIL: WAITING, EXHAUSTED: SUSPENDED, AUTH_FAILED: AUTH_REQUIRED, GO_OFFLINE: OFFLINE, STOP: IDLE, FREEZE: FROZEN},
    WAITING: dict(_WAITING_LIKE),
    REDIALING: dict(_AFTER_SOCKET),
    SUSPENDED: dict(_WAITING_LIKE),
    OFFLINE: {START: CONNECTING, DIAL: REDIALING, SCHEDULE: WAITING, NO_TOKEN: AUTH_REQUIRED, AUTH_FAILED: AUTH_REQUIRED, STOP: IDLE},
    AUTH_REQUIRED: {START: CONNECTING, NO_TOKEN: AUTH_REQUIRED, STOP: IDLE},
    FROZEN: {RESUME: CONNECTING, NO_TOKEN: AUTH_REQUIRED, AUTH_FAILED: AUTH_REQUIRED, GO_OFFLINE: OFFLINE, STOP: IDLE},
}

DIALING = (CONNECTING, REDIALING)

# close-code policy (docs/protocol.md "Close codes")
AUTH = "auth"  # auth-required, no retries
RESTART = "restart"  # reconnect at a random moment inside the restart window
LONG = "long"  # long backoff
BACKOFF = "backoff"  # normal backoff with jitter
NOW = "now"  # retry at once (dead socket found by a probe)

AUTH_CODES = (4401, 4403, 1008)
RESTART_CODES = (1001, 1012)
LONG_CODES = (1013, 4429, 4409)

# close codes this client sends (browsers only allow 1000 and 3000-4999)
CLOSE_NORMAL = 1000  # stop()/logout, or auth lost on REST
CLOSE_CONNECT_TIMEOUT = 4100
CLOSE_HEARTBEAT_TIMEOUT = 4101
CLOSE_PROBE_TIMEOUT = 4102
CLOSE_OFFLINE = 4103
# The page is frozen or going into the back/forward cache. RFC 6455 says 1001 (going away), but
# `WebSocket.close()` refuses 1001 (InvalidAccessError), so the page sends its mirror in the private range.
CLOSE_GOING_AWAY = 4001

MAX_PINGS_IN_FLIGHT = 4  # our own pings awaiting their pong; past that the link is not answering anyway


def close_policy(code):
    """AUTH, RESTART, LONG or BACKOFF for a close code received from the server."""
    if code in AUTH_CODES:
        return AUTH
    if code in RESTART_CODES:
        return RESTART
    if code in LONG_CODES:
        return LONG
    return BACKOFF


def transition_rows():
    """The table as markdown rows `| state | event | next |` (docs/client.md embeds them; a test checks)."""
    rows = ["| state | event | next state |", "|---|---|---|"]
    for state in (IDLE, CONNECTING, LIVE, WAITING, REDIALING, SUSPENDED, OFFLINE, AUTH_REQUIRED, FROZEN):
        row = TRANSITIONS[state]
        for event in sorted(row):
            rows.append("| " + state + " | " + event + " | " + row[event] + " |")
    return rows


class TransitionError(Exception):
    """An event was fired in a state whose row in TRANSITIONS does not list it (a bug)."""


class NoHooks:
    """Default owner callbacks: ignore everything."""

    def link_connected(self, now, msg, info):
        pass

    def link_message(self, now, msg):
        pass

    def link_batch(self, now, events):
        for msg in events:
            self.link_message(now, msg)

    def link_lost(self, now):
        pass

    def link_status(self, now):
        pass


class Stats:
    """Counters exposed as `Runtime.stats` (see `as_dict`)."""

    __slots__ = ("connects", "reconnects", "resumes", "drops", "failed_attempts", "last_reconnect_ms", "max_reconnect_ms", "total_reconnect_ms", "messages", "bad_frames")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self):
        return {
            "connects": self.connects,
            "reconnects": self.reconnects,
            "resumes": self.resumes,
            "drops": self.drops,
            "failedAttempts": self.failed_attempts,
            "lastReconnectMs": self.last_reconnect_ms,
            "maxReconnectMs": self.max_reconnect_ms,
            "totalReconnectMs": self.total_reconnect_ms,
            "messages": self.messages,
            "badFrames": self.bad_frames,
        }


class Connection:
    """One logical connection that survives many sockets. Drive it with the input methods below."""

    __slots__ = (
        "config", "token_provider", "url", "wall_clock", "backoff", "out", "hooks", "state", "sid", "opened",
        "attempt", "retry_at", "deferred", "connect_deadline", "probe_deadline", "stable_at", "last_message_at",
        "watch_base", "heartbeat_ms", "restart_window", "hidden", "online", "close_code", "close_reason",
        "last_live_at", "live_since", "dropped_at", "ever_live", "stats", "_next_sid", "last_delay",
        "client_id", "rtt_ms", "pings_sent", "resuming", "restart_until",
    )

    def __init__(self, config, token_provider, url, out, hooks=None, rand=None, wall_clock=None):
        self.config = config
        self.token_provider = token_provider
        self.url = url
        self.wall_clock = wall_clock
        self.backoff = Backoff(config.reconnect_base_ms, config.reconnect_max_ms, config.reconnect_floor_ms, config.backoff_mode, rand)
        self.out = out
        self.hooks = hooks if hooks is not None else NoHooks()
        self.state = IDLE
        self.sid = None
        self.opened = False
        self.attempt = 0  # number of the current/next retry in this episode; 0 after a stable connection
        self.retry_at = None
        self.deferred = False  # a retry came due while hidden
        self.connect_deadline = None
        self.probe_deadline = None
        self.stable_at = None
        self.last_message_at = None
        self.watch_base = None
        self.heartbeat_ms = config.heartbeat_ms
        self.restart_window = None
        self.restart_until = None  # end of the restart window we are reconnecting in (until live again)
        self.hidden = False
        self.online = True
        self.close_code = None
        self.close_reason = None
        self.last_live_at = None
        self.live_since = None
        self.dropped_at = None
        self.ever_live = False
        self.stats = Stats()
        self._next_sid = 0
        self.last_delay = None
        self.client_id = None  # the server's id for the current (or last) live socket
        self.rtt_ms = None  # round trip of our latest ping (one per server heartbeat), None until measured
        self.pings_sent = []  # send times of our pings awaiting their pong, oldest first
        self.resuming = False  # the current dial is the one made when the page came back

    # ------------------------------------------------------------------ table
    def allows(self, event):
        return event in TRANSITIONS[self.state]

    def _fire(self, event, now, delay=None, reason=None, **extra):
        target = TRANSITIONS[self.state].get(event)
        if target is None:
            raise TransitionError("event " + event + " not allowed in state " + self.state)
        previous = self.state
        self.state = target
        if target == LIVE or previous == LIVE:
            self.last_live_at = now  # last moment the data was known to be live
        self.log_event(event, now, delay=delay, reason=reason, previous=previous, **extra)
        self.hooks.link_status(now)

    def log_event(self, event, now, delay=None, reason=None, previous=None, **extra):
        since = None
        if self.last_message_at is not None:
            since = int(now - self.last_message_at)
        record = {
            "event": event,
            "state": PUBLIC[self.state],
            "attempt": self.attempt,
            "delayMs": delay,
            "closeCode": self.close_code,
            "reason": reason,
            "sinceLastMessageMs": since,
            "recovered": None,
            "hidden": self.hidden,
            "at": now,
        }
        if previous is not None:
            record["from"] = PUBLIC[previous]
        for key in extra:
            record[key] = extra[key]
        self.out.append(("log", record))

    # ------------------------------------------------------------------ inputs
    def start(self, now):
        """Begin connecting (ignored unless idle or auth-required). Then drain the outbox."""
        if self.state not in (IDLE, AUTH_REQUIRED):
            return
        if self.state == IDLE and not self.online:
            self._fire(GO_OFFLINE, now, reason="browser offline")
            return
        self._dial(now, START)

    def stop(self, now):
        """Close with 1000 and stay idle: no reconnect until start()."""
        if self.state == IDLE:
            return
        was_live = self.state == LIVE
        self._close_socket(CLOSE_NORMAL, "client stop")
        self._clear_timers()
        self.retry_at = None
        self.attempt = 0
        self.close_code = CLOSE_NORMAL
        if was_live:
            self.hooks.link_lost(now)
        self._fire(STOP, now, reason="client stop")

    def socket_opened(self, sid, now):
        if sid != self.sid or self.sid is None:
            return
        self.opened = True
        self.last_message_at = now
        self.log_event("open", now)

    def socket_message(self, sid, text, now):
        """A text frame. Stale sockets are ignored; pings answered; the rest goes to the owner."""
        if sid != self.sid or self.sid is None:
            return
        self.last_message_at = now
        self.probe_deadline = None
        self.stats.messages += 1
        msg = wire.parse(text)
        if msg is None:
            self.stats.bad_frames += 1
            self.log_event("bad-frame", now, reason="malformed frame")
            return
        kind = msg["type"]
        if kind == "ping":
            self.out.append(("send", self.sid, wire.pong()))
            if self.state == LIVE:
                self._ping(now, False)  # one of ours per heartbeat: its pong measures the round trip
                self.hooks.link_message(now, msg)  # the heartbeat paces retried subscribes
            return
        if kind == "pong":
            if self.pings_sent:
                self.rtt_ms = now - self.pings_sent.pop(0)
            return
        if kind == "restart":
            window = msg.get("reconnectWithinMs")
            if isinstance(window, bool) or not isinstance(window, (int, float)) or window < 0:
                window = self.config.restart_window_ms
            self.restart_window = window
            self.log_event("restart-hint", now, delay=window)
            return
        if kind == "connected":
            if self.state in DIALING:
                self._connected(now, msg)
            return
        if kind == "batch":  # dashboard.v2: unpacked here, before anything else sees it
            events = wire.batch_events(msg)
            if events is None:
                self.stats.bad_frames += 1
                self.log_event("bad-frame", now, reason="malformed batch")
            elif self.state == LIVE:
                self.hooks.link_batch(now, events)
            return
        if self.state != LIVE:
            if kind == "error":
                self.log_event("server-error", now, reason=str(msg.get("error")) + ": " + str(msg.get("message")))
            return
        self.hooks.link_message(now, msg)

    def socket_closed(self, sid, code, reason, now):
        """The browser reported close for socket `sid`; apply the close-code policy."""
        if sid != self.sid or self.sid is None:
            return
        self.sid = None
        self.opened = False
        self.log_event("closed", now, reason=reason or None, closeCode=code)
        kind = close_policy(code)
        if self.restart_window is not None and kind != AUTH:
            kind = RESTART
        self._lost(now, kind, code, reason or None)

    def visibility_changed(self, visible, now):
        hidden = not visible
        if hidden == self.hidden:
            return
        self.hidden = hidden
        self.log_event("hidden" if hidden else "visible", now)
        if hidden:
            return
        self.watch_base = now  # timers were throttled while hidden: give the socket a fresh window
        if self.state in (WAITING, SUSPENDED):
            self._dial(now, DIAL)
        elif self.state == LIVE and self.probe_deadline is None and now - self.last_message_at > self.heartbeat_ms:
            self._ping(now, True)
            self.probe_deadline = now + self.config.probe_timeout_ms
            self.log_event("probe", now, delay=self.config.probe_timeout_ms)

    def network_changed(self, online, now):
        online = bool(online)
        if online == self.online:
            return
        self.online = online
        if not online:
            if self.state in DIALING or self.state == LIVE:
                was_live = self.state == LIVE
                self._close_socket(CLOSE_OFFLINE, "browser offline")
                self._clear_timers()
                if was_live:
                    self.dropped_at = now
                    self.stats.drops += 1
                    self.hooks.link_lost(now)
                self.retry_at = None
                self._fire(GO_OFFLINE, now, reason="browser offline")
            elif self.state in (WAITING, SUSPENDED, FROZEN):
                self.retry_at = None
                self._fire(GO_OFFLINE, now, reason="browser offline")
            return
        if self.state == OFFLINE:
            self.attempt = 0
            if self.hidden:
                self.retry_at = now
                self.deferred = True
                self._fire(SCHEDULE, now, delay=0, reason="online while hidden")
            else:
                self._dial(now, self._redial_event())
        elif self.state in (WAITING, SUSPENDED):
            if self.hidden:
                self.retry_at = now
                self.deferred = True
            else:
                self._dial(now, DIAL)

    def lifecycle_changed(self, frozen, now):
        """The page is frozen or kept in the back/forward cache (`frozen`: `freeze`, `pagehide`), or it runs
        again (`resume`, `pageshow` with `persisted`).

        Frozen: close the socket with 4001 so the server frees it at once (a frozen page cannot answer
        pings) and cancel every timer; offline, signed-out and idle pages are left as they are. Running
        again: dial at once with the attempts reset; `connected` resubscribes with `since`, so the server
        replays what was missed. Then drain the outbox.
        """
        if frozen:
            if self.state not in DIALING and self.state not in (LIVE, WAITING, SUSPENDED):
                return
            was_live = self.state == LIVE
            self._close_socket(CLOSE_GOING_AWAY, "page frozen")
            self._clear_timers()
            self.retry_at = None
            self.deferred = False
            self.resuming = False
            self.close_code = CLOSE_GOING_AWAY
            if was_live:
                self.live_since = None
                self.hooks.link_lost(now)
            self._fire(FREEZE, now, reason="page frozen")
        elif self.state == FROZEN:
            self.attempt = 0
            self._dial(now, RESUME)
            self.resuming = self.state == CONNECTING

    def retry_now(self, now):
        """User asked to retry: reset attempts and dial at once (from reconnecting/suspended/offline/auth-required)."""
        if self.state in (WAITING, SUSPENDED, OFFLINE):
            self.attempt = 0
            self._dial(now, self._redial_event())
        elif self.state == AUTH_REQUIRED:
            self.attempt = 0
            self._dial(now, START)

    def auth_failed(self, now, reason):
        """A REST call said 401: drop the socket and wait for a new token (retry_now/start)."""
        if not self.allows(AUTH_FAILED):
            return
        was_live = self.state == LIVE
        self._close_socket(CLOSE_NORMAL, "auth required")
        self._clear_timers()
        self.retry_at = None
        if was_live:
            self.dropped_at = now
            self.hooks.link_lost(now)
        self._fire(AUTH_FAILED, now, reason=reason)

    def handle_timer(self, now):
        """Run whatever is due at `now` (calling early or twice is harmless)."""
        if self.state in DIALING:
            if self.connect_deadline is not None and now >= self.connect_deadline:
                self._close_socket(CLOSE_CONNECT_TIMEOUT, "connect timeout")
                self._lost(now, BACKOFF, None, "connect timeout")
            return
        if self.state == LIVE:
            if self.stable_at is not None and now >= self.stable_at:
                self.stable_at = None
                self.attempt = 0
                self.log_event("stable", now)
                self.hooks.link_status(now)
            if self.probe_deadline is not None and now >= self.probe_deadline:
                self._close_socket(CLOSE_PROBE_TIMEOUT, "probe timeout")
                self._lost(now, NOW, None, "probe timeout")
                return
            deadline = self.watchdog_deadline()
            if deadline is not None and not self.hidden and now >= deadline:
                self._close_socket(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
                self._lost(now, BACKOFF, None, "heartbeat timeout")
            return
        if self.state in (WAITING, SUSPENDED) and self.retry_at is not None and now >= self.retry_at:
            if self.hidden:
                if not self.deferred:
                    self.deferred = True
                    self.log_event("retry-deferred", now, reason="tab hidden")
                return
            self._dial(now, DIAL)

    # ------------------------------------------------------------------ outputs
    def watchdog_deadline(self):
        if self.state != LIVE or self.last_message_at is None:
            return None
        base = self.last_message_at
        if self.watch_base is not None and self.watch_base > base:
            base = self.watch_base
        return base + self.heartbeat_ms * self.config.heartbeat_misses + self.config.grace_ms(self.heartbeat_ms)

    def get_timer(self):
        """Absolute deadline (ms) of the next handle_timer() call, or None."""
        candidates = []
        if self.state in DIALING:
            candidates.append(self.connect_deadline)
        elif self.state == LIVE:
            candidates.append(self.stable_at)
            candidates.append(self.probe_deadline)
            if not self.hidden:
                candidates.append(self.watchdog_deadline())
        elif self.state in (WAITING, SUSPENDED) and not self.hidden:
            candidates.append(self.retry_at)
        best = None
        for value in candidates:
            if value is not None and (best is None or value < best):
                best = value
        return best

    # ------------------------------------------------------------------ internals
    def _redial_event(self):
        # leaving offline before the first live session still reads as "connecting"
        return START if self.state == OFFLINE and not self.ever_live else DIAL

    def _dial(self, now, event):
        try:
            token = self.token_provider()
        except Exception:
            token = None
        wall = None
        if self.wall_clock is not None:
            wall = self.wall_clock()
        verdict = tokens.check(token, wall)
        self.retry_at = None
        self.deferred = False
        if verdict != tokens.OK:
            self.close_code = None
            self._fire(NO_TOKEN, now, reason="token " + verdict)
            return
        self._next_sid += 1
        self.sid = "s" + str(self._next_sid)
        self.opened = False
        self.connect_deadline = now + self.config.connect_timeout_ms
        self.pings_sent = []
        self.restart_window = None
        self.last_delay = None
        self._fire(event, now)
        self.out.append(("open", self.sid, self.url, wire.protocols(token)))

    def _connected(self, now, msg):
        hb = msg.get("heartbeatMs")
        if isinstance(hb, bool) or not isinstance(hb, (int, float)) or hb <= 0:
            hb = self.config.heartbeat_ms
        self.heartbeat_ms = hb
        self.connect_deadline = None
        self.stable_at = now + self.config.stable_after_ms
        self.watch_base = now
        self.live_since = now
        self.close_code = None
        self.restart_until = None
        self.stats.connects += 1
        reconnect = self.ever_live and not self.resuming  # coming back from a freeze is not an outage
        if self.resuming:
            self.resuming = False
            self.stats.resumes += 1
        downtime = None
        if reconnect and self.dropped_at is not None:
            downtime = int(now - self.dropped_at)
            self.stats.reconnects += 1
            self.stats.last_reconnect_ms = downtime
            self.stats.total_reconnect_ms += downtime
            if downtime > self.stats.max_reconnect_ms:
                self.stats.max_reconnect_ms = downtime
        self.ever_live = True
        client_id = msg.get("clientId")
        self.client_id = client_id if isinstance(client_id, str) else None
        info = {"reconnect": reconnect, "attempts": self.attempt, "downtimeMs": downtime}
        self._fire(CONNECTED, now, downtimeMs=downtime)
        self.hooks.link_connected(now, msg, info)

    def _ping(self, now, always):
        """Send our own ping and note when; the matching pong sets `rtt_ms`. Unless `always` (the visibility
        probe), no new ping while MAX_PINGS_IN_FLIGHT are unanswered."""
        if len(self.pings_sent) >= MAX_PINGS_IN_FLIGHT:
            if not always:
                return
        else:
            self.pings_sent.append(now)
        self.out.append(("send", self.sid, wire.ping()))

    def _close_socket(self, code, reason):
        if self.sid is not None:
            self.out.append(("close", self.sid, code, reason))
        self.sid = None
        self.opened = False

    def _clear_timers(self):
        self.connect_deadline = None
        self.probe_deadline = None
        self.stable_at = None

    def _lost(self, now, kind, code, reason):
        """The socket is gone (already closed or closed by us): decide what comes next."""
        was_live = self.state == LIVE
        self._clear_timers()
        self.close_code = code
        self.close_reason = reason
        if was_live:
            self.dropped_at = now
            self.stats.drops += 1
            self.live_since = None
            self.hooks.link_lost(now)
        else:
            self.stats.failed_attempts += 1
        if self.resuming:  # the dial made on coming back failed: an outage starts now
            self.resuming = False
            self.dropped_at = now
        if kind == AUTH:
            self.retry_at = None
            self._fire(AUTH_FAILED, now, reason=reason)
            return
        if not self.online:  # e.g. a manual retry while the browser says offline: wait for `online`
            self.retry_at = None
            self._fire(GO_OFFLINE, now, reason=reason)
            return
        tries = self.config.reconnect_max_attempts
        if not self.config.reconnect:  # no timed retries: wait for Retry, `online` or the tab becoming visible
            self.retry_at = None
            self.last_delay = None
            self._fire(EXHAUSTED, now, reason=reason, maxAttempts=tries)
            return
        self.attempt += 1
        if self.attempt > tries:
            delay = self.backoff.around(self.config.suspended_retry_ms)
            self.retry_at = now + delay
            self.last_delay = delay
            self._fire(EXHAUSTED, now, delay=delay, reason=reason, maxAttempts=tries, retryEveryMs=self.config.suspended_retry_ms)
            return
        if kind == RESTART:
            window = self.restart_window if self.restart_window is not None else self.config.restart_window_ms
            delay = self.backoff.window_delay(window)
            self.restart_until = now + window
        elif kind == LONG:
            delay = self.backoff.long_delay()
        elif kind == NOW:
            delay = 0
        else:
            delay = self.backoff.delay(self.attempt - 1)
            if self.restart_until is not None and self.restart_until > now:
                # a dial inside the restart window failed (the new server is not up yet): the retry stays spread
                # over what is left of the window, not bunched one backoff after the server's return
                delay = max(delay, self.backoff.window_delay(self.restart_until - now))
        self.restart_window = None
        self.retry_at = now + delay
        self.last_delay = delay
        self._fire(FAIL, now, delay=delay, reason=reason, maxAttempts=tries)
        if delay == 0 and not self.hidden:
            self._dial(now, DIAL)

    def status(self):
        """Plain dict for the UI (see Runtime.status)."""
        next_retry = None
        if self.state in (WAITING, SUSPENDED):
            next_retry = self.retry_at
        attempt = self.attempt
        if self.state == SUSPENDED:  # the fast phase is over: report how many retries it made
            attempt = min(attempt, self.config.reconnect_max_attempts)
        return {
            "state": PUBLIC[self.state],
            "attempt": attempt,
            "nextRetryAt": next_retry,
            "lastLiveAt": self.last_live_at,
            "closeCode": self.close_code,
            "reason": self.close_reason,
            "phase": self.state,
            "hidden": self.hidden,
            "online": self.online,
            "deferred": self.deferred,
        }
