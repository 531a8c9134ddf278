"""`Hub`: fan-out of bus events to WebSocket clients, per project, without ever awaiting a client.

Build it with `Hub(settings, bus, metrics, store)`, `await hub.start()` (it listens on the bus), then for each
connection: `hub.admit_address(ip)` (per-IP cap), `hub.connect(client_id, user_id, …)` → `Outbox` (or a
refusal), `await hub.subscribe(outbox, …)` (or `hub.retry_subscribe(…)` after the bus failed), `hub.unsubscribe(…)`,
and finally `hub.disconnect(outbox)` and `hub.release_address(ip)`. `close_session(sid)` / `close_user(user_id)`
close every connection of a revoked sign-in session or of a user with 4401. On SIGTERM call
`await hub.drain()`; on shutdown `await hub.stop()`.

Ticks: the events of one project handed over by the bus during one loop iteration are fanned out together, at
the start of the next flusher pass (`Flusher.call_first`): a `dashboard.v2` subscriber gets them as one shared
frame (`batches.frames_for`), a `dashboard.v1` subscriber one frame per event as before. A project whose last
event opened a change (`batches.opens_change`) is held until the change's closing event arrives, at most
`change_hold_s`, so a change's events share a frame even when the bus awaits between them.

Ordering and resume: a new subscription is registered *before* the bus is asked for the replay/position, and
collects live events in a pending list meanwhile. When the replay is in, the replayed events, the
`subscribed` reply and then the pending events newer than the replay are queued in one synchronous step, so
no event is delivered twice or out of order across the replay/live boundary.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..bus import Event, EventBus, Unsubscribe
from ..logs import log_event
from ..metrics import Metrics
from ..settings import Settings
from . import batches, frames
from .outbox import Flusher, Outbox
from .session import Since
from .timers import Deadlines


class Refused(Exception):
    """`Hub.connect` refuses a connection: `code` is the close code, `error`/`message` go in the error frame."""

    def __init__(self, code: int, error: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.error = error
        self.message = message


MAX_SAFE_SEQ = 2**53 - 1  # a larger `since.seq` cannot be a real position (nor a JavaScript number)
CHANGE_HOLD_S = 0.05  # longest wait for the rest of a change whose first event arrived
RETRY_BASE_S = 0.25  # a subscribe the bus failed is retried after this, doubling, ±20 %…
RETRY_MAX_S = 5.0  # …up to this


class Subscription:
    """One client's subscription to one project: the last `(epoch, seq)` queued to it."""

    __slots__ = ("outbox", "epoch", "seq", "start_seq", "pending")

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.epoch = ""
        self.seq = 0
        self.start_seq = 0
        self.pending: list[Event] | None = []  # live events that arrive while the replay is in progress



def restart_window(settings: Settings, connections: int) -> int:
    """The `reconnectWithinMs` a draining node hints: `restart_window_ms`, stretched so that its `connections`
    come back at no more than `restart_rate` handshakes per second (what one node can re-admit), e.g.
    5000 sockets at 500/s: 10 s."""
    window = settings.restart_window_ms
    if settings.restart_rate > 0:
        window = max(window, -(-connections * 1000 // settings.restart_rate))
    return window

class Hub:
    """Connections, subscriptions and fan-out of one server process."""

    def __init__(self, settings: Settings, bus: EventBus, metrics: Metrics, store: Any) -> None:
        self.settings = settings
        self.bus = bus
        self.metrics = metrics
        self.store = store
        self.draining = False
        self.restart_hint_ms = settings.restart_window_ms  # the window a draining node hints (`restart_window`)
        self.change_hold_s = CHANGE_HOLD_S
        self.retry_base_s = RETRY_BASE_S
        self.retry_max_s = RETRY_MAX_S
        self._subscriptions: dict[str, dict[Outbox, Subscription]] = {}
        self._clients: set[Outbox] = set()
        self._per_user: Counter[str] = Counter()
        self._per_address: Counter[str] = Counter()
        self._retries: dict[Outbox, dict[str, asyncio.Task[None]]] = {}
        self._tick: dict[str, list[Event]] = {}  # project → events not yet fanned out
        self._open_changes: dict[str, float] = {}  # project → when its unfinished change began (loop time)
        self._hold: asyncio.TimerHandle | None = None
        self._unlisten: Unsubscribe | None = None
        self._empty = asyncio.Event()
        self._empty.set()
        self.flusher = Flusher()  # writes every outbox that got frames, once per loop iteration
        self.deadlines = Deadlines()  # every connection's heartbeat/expiry deadline, on one loop timer

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._unlisten = self.bus.listen(self._on_event)

    async def stop(self) -> None:
        """Stop listening and close any connection still open with 1001."""
        if self._unlisten:
            self._unlisten()
            self._unlisten = None
        if self._hold is not None:
            self._hold.cancel()
            self._hold = None
        for outbox in tuple(self._clients):
            self._drop_subscriptions(outbox)
            outbox.close(frames.GOING_AWAY, "server stopping")
        await self.wait_empty(2.0)
        self.deadlines.close()

    async def drain(self, wait_s: float = 2.0) -> int:
        """Graceful shutdown: refuse new connections, tell every client to reconnect within the restart window
        (`restart_window`) and close it with 1012. Waits up to `wait_s` for the closes; returns the count."""
        self.draining = True
        closing = tuple(self._clients)
        window_ms = self.restart_hint_ms = restart_window(self.settings, len(closing))
        restart = frames.restart(window_ms)
        for outbox in closing:
            self._drop_subscriptions(outbox)
            outbox.close(frames.SERVICE_RESTART, "service restart", frame=restart, flush=True)
        log_event("server.drain", connections=len(closing), reconnect_within_ms=window_ms)
        await self.wait_empty(wait_s)
        return len(closing)

    async def wait_empty(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._empty.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- connections ----------------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self._clients)

    def connections_of(self, user_id: str) -> int:
        return self._per_user[user_id]

    def admit_address(self, address: str) -> bool:
        """Count one more open WebSocket from `address`; False (nothing counted) over
        `max_connections_per_ip`. Every True must be matched by one `release_address(address)`."""
        cap = self.settings.max_connections_per_ip
        if cap and self._per_address[address] >= cap:
            return False
        self._per_address[address] += 1
        return True

    def release_address(self, address: str) -> None:
        self._per_address[address] -= 1
        if self._per_address[address] <= 0:
            del self._per_address[address]

    def connect(self, client_id: str, user_id: str, *, batched: bool = False, session_id: str | None = None) -> Outbox:
        """Admit one authenticated connection or raise `Refused` (draining, per-user cap). `batched`: the client
        speaks `dashboard.v2`; `session_id`: its token's `sid` claim."""
        if self.draining:
            raise Refused(frames.SERVICE_RESTART, "Service restarting", "server is restarting")
        cap = self.settings.max_connections_per_user
        if cap and self._per_user[user_id] >= cap:
            raise Refused(frames.TOO_MANY_CONNECTIONS, "Too many connections", f"at most {cap} connections per user")
        outbox = Outbox(
            client_id, user_id, self.settings.send_queue_size, byte_limit=self.settings.send_queue_bytes,
            batched=batched, session_id=session_id, on_overflow=self._overflow, flusher=self.flusher,
        )
        self._clients.add(outbox)
        self._per_user[user_id] += 1
        self._empty.clear()
        self.metrics.active_connections.inc()
        return outbox

    def disconnect(self, outbox: Outbox) -> None:
        """Forget a connection, all its subscriptions and retries (idempotent)."""
        for task in self._retries.pop(outbox, {}).values():
            task.cancel()
        self._drop_subscriptions(outbox)
        if outbox in self._clients:
            self._clients.discard(outbox)
            self._per_user[outbox.user_id] -= 1
            if self._per_user[outbox.user_id] <= 0:
                del self._per_user[outbox.user_id]
            self.metrics.active_connections.dec()
        if not self._clients:
            self._empty.set()

    def close_session(self, session_id: str, *, error: str = "session_revoked") -> int:
        """Close every connection whose token belongs to sign-in session `session_id`: the error frame
        `{"type":"error","error":error}`, then 4401. Returns how many were closed."""
        return self._close_where(lambda outbox: outbox.session_id == session_id, error, "session revoked")

    def close_user(self, user_id: str, *, error: str = "session_revoked") -> int:
        """Close every connection of `user_id` like `close_session`. Returns how many were closed."""
        return self._close_where(lambda outbox: outbox.user_id == user_id, error, "signed out")

    def _close_where(self, chosen: Callable[[Outbox], bool], error: str, message: str) -> int:
        closed = 0
        for outbox in [o for o in self._clients if chosen(o)]:
            self._drop_subscriptions(outbox)
            if outbox.close(frames.AUTH_FAILED, message, frame=frames.error(error, message)):
                closed += 1
                log_event("ws.session_closed", client_id=outbox.client_id, user_id=outbox.user_id, error=error)
        return closed

    # -- subscriptions --------------------------------------------------------------------------

    def is_subscribed(self, outbox: Outbox, project_id: str) -> bool:
        return outbox in self._subscriptions.get(project_id, ())

    def subscriber_count(self, project_id: str) -> int:
        return len(self._subscriptions.get(project_id, ()))

    def is_retrying(self, outbox: Outbox, project_id: str) -> bool:
        return project_id in self._retries.get(outbox, ())

    def retry_count(self, outbox: Outbox) -> int:
        return len(self._retries.get(outbox, ()))

    async def subscribe(self, outbox: Outbox, project_id: str, since: Since | None) -> str:
        """Subscribe `outbox` to `project_id` (authorization is the caller's job) and queue, in this order:
        the replayed events (if `since` is recoverable and the client has room for them), the `subscribed`
        reply, then live events. A background retry of the same subscribe is cancelled first.
        Returns the `subscribed` frame (already queued); raises what the bus raised."""
        await self._cancel_retry(outbox, project_id)
        return await self._subscribe(outbox, project_id, since)

    async def _subscribe(self, outbox: Outbox, project_id: str, since: Since | None) -> str:
        subs = self._subscriptions.setdefault(project_id, {})
        existing = subs.get(outbox)
        if existing is not None:
            return self._resubscribe(outbox, project_id, existing, since)
        sub = Subscription(outbox)
        subs[outbox] = sub  # before any await: live events from now on land in sub.pending
        self.metrics.active_subscriptions.inc()
        if since is not None and since.seq > MAX_SAFE_SEQ:
            since = Since(since.epoch, -1)  # no position of ours: answered like an unknown epoch
        try:
            replayed = await self.bus.replay(project_id, since.epoch, since.seq) if since and since.seq >= 0 else None
            if replayed is None:
                epoch, seq = await self.bus.position(project_id)
            else:
                epoch, seq = since.epoch, replayed[-1].seq if replayed else since.seq  # type: ignore[union-attr]
        except BaseException:
            if subs.get(outbox) is sub:  # not a newer subscription made meanwhile (after an unsubscribe)
                self._remove(project_id, outbox)
            raise
        if subs.get(outbox) is not sub:  # the connection went away during the await
            return ""
        # From here on, no await: replay, reply and pending events are queued atomically.
        backlogged = False
        if replayed:
            size = sum(len(event.frame) for event in replayed)
            if not outbox.room(size):  # the client is behind already: no replay (it refetches); `seq` is current
                backlogged = True
                replayed = None
            elif outbox.batched:
                for frame in batches.frames_for(replayed):
                    outbox.push_frame(frame)
            else:
                for event in replayed:
                    outbox.push(event.frame, replay=True)
        recovered = since is not None and replayed is not None
        if since is not None:
            result = "recovered" if recovered else "backlogged" if backlogged else "failed"
            self.metrics.recoveries.labels(result=result).inc()
            if replayed:
                self.metrics.events_replayed.inc(len(replayed))
                self.metrics.events_delivered.inc(len(replayed))
        sub.epoch, sub.seq, sub.start_seq = epoch, seq, seq
        extra = {"reason": "backlogged"} if backlogged else {}
        reply = frames.subscribed(project_id, recovered=recovered, replayed=len(replayed or ()), seq=seq, epoch=epoch, **extra)
        outbox.push(reply)
        pending, sub.pending = sub.pending or [], None
        delivered = self._deliver(sub, pending) if pending else 0
        if delivered:
            self.metrics.events_delivered.inc(delivered)
        log_event(
            "ws.subscribe",
            client_id=outbox.client_id,
            user_id=outbox.user_id,
            project_id=project_id,
            since_seq=since.seq if since else None,
            recovered=recovered,
            replayed=len(replayed or ()),
            seq=seq,
            backlogged=backlogged or None,
        )
        return reply

    def _resubscribe(self, outbox: Outbox, project_id: str, sub: Subscription, since: Since | None) -> str:
        """A repeated subscribe: keep the one subscription, answer `subscribed` again, replay nothing.
        It counts as recovered when every event after `since` is (or will be) delivered on this connection."""
        recovered = since is not None and since.epoch == sub.epoch and since.seq >= sub.start_seq
        reply = frames.subscribed(project_id, recovered=recovered, replayed=0, seq=sub.seq, epoch=sub.epoch)
        outbox.push(reply)
        return reply

    def retry_subscribe(
        self, outbox: Outbox, project_id: str, since: Since | None, on_subscribed: Callable[[str], None]
    ) -> bool:
        """After `subscribe` failed because the bus is unavailable: try again in the background with bounded
        backoff until it succeeds (then `on_subscribed(project_id)` runs and the `subscribed` reply is queued),
        or the client unsubscribes, subscribes again itself, or goes away. False if already retrying."""
        retries = self._retries.setdefault(outbox, {})
        if project_id in retries or outbox not in self._clients:
            return False
        task = asyncio.get_running_loop().create_task(self._retry(outbox, project_id, since, on_subscribed))
        retries[project_id] = task
        return True

    async def _retry(
        self, outbox: Outbox, project_id: str, since: Since | None, on_subscribed: Callable[[str], None]
    ) -> None:
        delay = self.retry_base_s
        attempt = 0
        try:
            while outbox.close_code is None and outbox in self._clients:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                attempt += 1
                try:
                    await self._subscribe(outbox, project_id, since)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # still unavailable: wait longer
                    log_event("ws.subscribe_retry", logging.WARNING, client_id=outbox.client_id, project_id=project_id,
                              attempt=attempt, error=type(exc).__name__)
                    delay = min(delay * 2, self.retry_max_s)
                    continue
                if self.is_subscribed(outbox, project_id):
                    on_subscribed(project_id)
                return
        finally:
            retries = self._retries.get(outbox)
            if retries is not None and retries.get(project_id) is asyncio.current_task():
                del retries[project_id]

    async def _cancel_retry(self, outbox: Outbox, project_id: str) -> None:
        task = self._retries.get(outbox, {}).pop(project_id, None)
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    def unsubscribe(self, outbox: Outbox, project_id: str) -> bool:
        """Drop the subscription (and a background retry of it); True if there was a subscription."""
        task = self._retries.get(outbox, {}).pop(project_id, None)
        if task is not None:
            task.cancel()
        return self._remove(project_id, outbox)

    def _remove(self, project_id: str, outbox: Outbox) -> bool:
        subs = self._subscriptions.get(project_id)
        if not subs or outbox not in subs:
            return False
        del subs[outbox]
        if not subs:
            del self._subscriptions[project_id]
        self.metrics.active_subscriptions.dec()
        return True

    def _drop_subscriptions(self, outbox: Outbox) -> None:
        for project_id in [p for p, subs in self._subscriptions.items() if outbox in subs]:
            self._remove(project_id, outbox)

    # -- fan-out --------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Bus listener: collect `event` for its project's tick; the flusher fans the tick out at the start of
        its next pass. Never awaits a client."""
        project_id = event.project_id
        if project_id not in self._subscriptions:
            return
        events = self._tick.get(project_id)
        if events is None:
            self._tick[project_id] = [event]
        else:
            events.append(event)
        if batches.opens_change(event):
            self._open_changes.setdefault(project_id, asyncio.get_running_loop().time())
        else:
            self._open_changes.pop(project_id, None)
        self.flusher.call_first(self._flush_tick)

    def _flush_tick(self) -> None:
        """Fan out every project's collected events, except a project whose change is still open (held until
        it closes or for `change_hold_s`)."""
        now = asyncio.get_running_loop().time()
        held: float | None = None
        for project_id in list(self._tick):
            opened = self._open_changes.get(project_id)
            if opened is not None and now - opened < self.change_hold_s - 0.001:  # a timer may fire a hair early
                held = opened if held is None else min(held, opened)
                continue
            events = self._tick.pop(project_id)
            self._open_changes.pop(project_id, None)
            self._fan_out(project_id, events)
        if held is not None and self._hold is None:
            self._hold = asyncio.get_running_loop().call_at(held + self.change_hold_s, self._hold_over)

    def _hold_over(self) -> None:
        self._hold = None
        self.flusher.call_first(self._flush_tick)

    def _fan_out(self, project_id: str, events: list[Event]) -> None:
        subs = self._subscriptions.get(project_id)
        if not subs:
            return
        started = time.perf_counter()
        delivered = 0
        shared: list[batches.Frame] | None = None
        for sub in tuple(subs.values()):
            if sub.pending is not None:
                sub.pending.extend(events)
                continue
            outbox = sub.outbox
            if not outbox.batched:
                delivered += self._deliver(sub, events)
                continue
            if shared is None:
                shared = batches.frames_for(events)
                epoch, first_seq, last_seq = shared[0].epoch, events[0].seq, events[-1].seq
                if any(frame.epoch != epoch for frame in shared):
                    epoch = None
            if epoch is None or (sub.epoch == epoch and sub.seq >= first_seq):
                delivered += self._deliver(sub, events)  # not all of them are new to it: its own frames
                continue
            for frame in shared:
                if not outbox.offer_frame(frame):
                    break
            else:
                sub.epoch, sub.seq = epoch, last_seq
                delivered += len(events)
        if delivered:
            self.metrics.events_delivered.inc(delivered)
        elapsed = time.perf_counter() - started  # every event of the tick was queued for everyone within it
        observe = self.metrics.broadcast_duration.observe
        for _ in events:
            observe(elapsed)

    def _deliver(self, sub: Subscription, events: list[Event]) -> int:
        """Queue to `sub` those of `events` it has not seen, in order (own frames for a v2 client); returns how
        many were queued. An overflow closes the client (`_overflow`) and stops."""
        outbox = sub.outbox
        if outbox.batched:
            fresh = [e for e in events if not (e.epoch == sub.epoch and e.seq <= sub.seq)]
            if not fresh:
                return 0
            for frame in batches.frames_for(fresh):
                if not outbox.offer_frame(frame):
                    return 0
            sub.epoch, sub.seq = fresh[-1].epoch, fresh[-1].seq
            return len(fresh)
        delivered = 0
        for event in events:
            if event.epoch == sub.epoch and event.seq <= sub.seq:
                continue  # already replayed, or older than the position reported in `subscribed`
            if not outbox.offer(event.frame):
                return delivered
            sub.epoch, sub.seq = event.epoch, event.seq
            delivered += 1
        return delivered

    def _overflow(self, outbox: Outbox) -> None:
        """The client cannot keep up (its send budget is spent): close it with 4008 (it resumes with `since`);
        others are unaffected."""
        self._drop_subscriptions(outbox)
        queued = len(outbox)
        if outbox.close(frames.SLOW_CONSUMER, "slow consumer"):
            self.metrics.queue_overflows.inc()
            log_event("ws.slow_consumer", client_id=outbox.client_id, user_id=outbox.user_id, queued=queued)
