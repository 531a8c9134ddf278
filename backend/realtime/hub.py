"""`Hub`: fan-out of bus events to WebSocket clients, per project, without ever awaiting a client.

Build it with `Hub(settings, bus, metrics, store)`, `await hub.start()` (it listens on the bus), then for each
connection: `hub.connect(client_id, user_id)` → `Outbox` (or a refusal), `await hub.subscribe(outbox, …)`,
`hub.unsubscribe(…)`, and finally `hub.disconnect(outbox)`. On SIGTERM call `await hub.drain()`; on shutdown
`await hub.stop()`.

Ordering and resume: a new subscription is registered *before* the bus is asked for the replay/position, and
collects live events in a pending list meanwhile. When the replay is in, the replayed events, the
`subscribed` reply and then the pending events newer than the replay are queued in one synchronous step, so
no event is delivered twice or out of order across the replay/live boundary.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from ..bus import Event, EventBus, Unsubscribe
from ..logs import log_event
from ..metrics import Metrics
from ..settings import Settings
from . import frames
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


class Subscription:
    """One client's subscription to one project: the last `(epoch, seq)` queued to it."""

    __slots__ = ("outbox", "epoch", "seq", "start_seq", "pending")

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.epoch = ""
        self.seq = 0
        self.start_seq = 0
        self.pending: list[Event] | None = []  # live events that arrive while the replay is in progress


class Hub:
    """Connections, subscriptions and fan-out of one server process."""

    def __init__(self, settings: Settings, bus: EventBus, metrics: Metrics, store: Any) -> None:
        self.settings = settings
        self.bus = bus
        self.metrics = metrics
        self.store = store
        self.draining = False
        self._subscriptions: dict[str, dict[Outbox, Subscription]] = {}
        self._clients: set[Outbox] = set()
        self._per_user: Counter[str] = Counter()
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
        for outbox in tuple(self._clients):
            self._drop_subscriptions(outbox)
            outbox.close(frames.GOING_AWAY, "server stopping")
        await self.wait_empty(2.0)
        self.deadlines.close()

    async def drain(self, wait_s: float = 2.0) -> int:
        """Graceful shutdown: refuse new connections, tell every client to reconnect within
        `restart_window_ms` and close it with 1012. Waits up to `wait_s` for the closes; returns the count."""
        self.draining = True
        restart = frames.restart(self.settings.restart_window_ms)
        closing = tuple(self._clients)
        for outbox in closing:
            self._drop_subscriptions(outbox)
            outbox.close(frames.SERVICE_RESTART, "service restart", frame=restart, flush=True)
        log_event("server.drain", connections=len(closing), reconnect_within_ms=self.settings.restart_window_ms)
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

    def connect(self, client_id: str, user_id: str) -> Outbox:
        """Admit one authenticated connection or raise `Refused` (draining, per-user cap)."""
        if self.draining:
            raise Refused(frames.SERVICE_RESTART, "Service restarting", "server is restarting")
        cap = self.settings.max_connections_per_user
        if cap and self._per_user[user_id] >= cap:
            raise Refused(frames.TOO_MANY_CONNECTIONS, "Too many connections", f"at most {cap} connections per user")
        outbox = Outbox(client_id, user_id, self.settings.send_queue_size, flusher=self.flusher)
        self._clients.add(outbox)
        self._per_user[user_id] += 1
        self._empty.clear()
        self.metrics.active_connections.inc()
        return outbox

    def disconnect(self, outbox: Outbox) -> None:
        """Forget a connection and all its subscriptions (idempotent)."""
        self._drop_subscriptions(outbox)
        if outbox in self._clients:
            self._clients.discard(outbox)
            self._per_user[outbox.user_id] -= 1
            if self._per_user[outbox.user_id] <= 0:
                del self._per_user[outbox.user_id]
            self.metrics.active_connections.dec()
        if not self._clients:
            self._empty.set()

    # -- subscriptions --------------------------------------------------------------------------

    def is_subscribed(self, outbox: Outbox, project_id: str) -> bool:
        return outbox in self._subscriptions.get(project_id, ())

    def subscriber_count(self, project_id: str) -> int:
        return len(self._subscriptions.get(project_id, ()))

    async def subscribe(self, outbox: Outbox, project_id: str, since: Since | None) -> str:
        """Subscribe `outbox` to `project_id` (authorization is the caller's job) and queue, in this order:
        the replayed events (if `since` is recoverable), the `subscribed` reply, then live events.
        Returns the `subscribed` frame (already queued)."""
        subs = self._subscriptions.setdefault(project_id, {})
        existing = subs.get(outbox)
        if existing is not None:
            return self._resubscribe(outbox, project_id, existing, since)
        sub = Subscription(outbox)
        subs[outbox] = sub  # before any await: live events from now on land in sub.pending
        self.metrics.active_subscriptions.inc()
        try:
            replayed = await self.bus.replay(project_id, since.epoch, since.seq) if since else None
            if replayed is None:
                epoch, seq = await self.bus.position(project_id)
            else:
                epoch, seq = since.epoch, replayed[-1].seq if replayed else since.seq  # type: ignore[union-attr]
        except BaseException:
            self._remove(project_id, outbox)
            raise
        if subs.get(outbox) is not sub:  # the connection went away during the await
            return ""
        # From here on, no await: replay, reply and pending events are queued atomically.
        for event in replayed or ():
            outbox.push(event.frame)
        recovered = since is not None and replayed is not None
        if since is not None:
            self.metrics.recoveries.labels(result="recovered" if recovered else "failed").inc()
            if replayed:
                self.metrics.events_replayed.inc(len(replayed))
                self.metrics.events_delivered.inc(len(replayed))
        sub.epoch, sub.seq, sub.start_seq = epoch, seq, seq
        reply = frames.subscribed(project_id, recovered=recovered, replayed=len(replayed or ()), seq=seq, epoch=epoch)
        outbox.push(reply)
        pending, sub.pending = sub.pending or [], None
        delivered = sum(self._deliver((sub,), event) for event in pending)
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
        )
        return reply

    def _resubscribe(self, outbox: Outbox, project_id: str, sub: Subscription, since: Since | None) -> str:
        """A repeated subscribe: keep the one subscription, answer `subscribed` again, replay nothing.
        It counts as recovered when every event after `since` is (or will be) delivered on this connection."""
        recovered = since is not None and since.epoch == sub.epoch and since.seq >= sub.start_seq
        reply = frames.subscribed(project_id, recovered=recovered, replayed=0, seq=sub.seq, epoch=sub.epoch)
        outbox.push(reply)
        return reply

    def unsubscribe(self, outbox: Outbox, project_id: str) -> bool:
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
        """Bus listener: queue `event.frame` for every subscriber of its project. Never awaits; the outboxes
        send in one flusher callback at the next loop iteration."""
        subs = self._subscriptions.get(event.project_id)
        if not subs:
            return
        started = time.perf_counter()
        delivered = self._deliver(tuple(subs.values()), event)
        if delivered:
            self.metrics.events_delivered.inc(delivered)
        self.metrics.broadcast_duration.observe(time.perf_counter() - started)

    def _deliver(self, subs: tuple[Subscription, ...], event: Event) -> int:
        """Queue `event` for each of `subs` that has not seen it (or park it while their replay runs); returns
        how many were queued. This loop runs once per subscriber per event: keep it flat."""
        delivered = 0
        epoch, seq, frame = event.epoch, event.seq, event.frame
        for sub in subs:
            if sub.pending is not None:
                sub.pending.append(event)
            elif epoch == sub.epoch and seq <= sub.seq:
                continue  # already replayed, or older than the position reported in `subscribed`
            elif sub.outbox.offer(frame):
                sub.epoch, sub.seq = epoch, seq
                delivered += 1
            else:
                self._overflow(sub.outbox)
        return delivered

    def _overflow(self, outbox: Outbox) -> None:
        """The client cannot keep up: close it with 4008 (it resumes with `since`); others are unaffected."""
        self._drop_subscriptions(outbox)
        if outbox.close(frames.SLOW_CONSUMER, "slow consumer"):
            self.metrics.queue_overflows.inc()
            log_event("ws.slow_consumer", client_id=outbox.client_id, user_id=outbox.user_id, queued=len(outbox))
