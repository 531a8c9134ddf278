"""Bench-only experiments on our server, to measure a proposed change before anyone makes it.

`bench.server --kind app --variant direct` calls `install_direct_fanout()` before building the app. It is an
experiment, not product code: it patches `Hub._on_event`, `Outbox.next_frame` and `_Connection.__init__` of
the running process only.

`lean`: the memory change proposed in docs/performance.md. `_Connection.run` reads in the endpoint's own task
(no reader task), drives the heartbeat from one `loop.call_later` handle (no heartbeat task), and replaces the
task that waited for `outbox.closing` (and the `asyncio.Event` itself) with a flag that calls back. The writer
task stays. Not handled: the CLOSE_TIMEOUT_S guard cancels the endpoint's task instead of a child task.

`gc`: after start-up, `gc.freeze()` moves everything alive into the permanent generation and the generation-0
threshold goes from 700 to 50 000 allocations, so the cyclic GC runs far less often and never rescans the
long-lived connection objects (the knob the server could set in `backend.cli.serve`).

`redispool`: `RedisBus` gets a `BlockingConnectionPool` (callers wait for a free connection) instead of
redis-py's default pool, which raises `MaxConnectionsError` beyond 100 concurrent commands.

`direct`: the fast path proposed in docs/performance.md. For each event, subscribers whose outbox is empty and
whose writer task is parked get the frame from ONE sender task per event (`await ws.send_text(frame)` in a loop,
like the bare endpoint) instead of waking one writer task per subscriber. Clients that are behind still go
through `Outbox.offer()` (bounded queue, 4008 on overflow). Order per connection is kept: an outbox is marked
busy until the sender task has written to it, and its writer holds any later frame until then.
Not handled (fine for the benchmark, not for production): control frames pushed while a direct send is
pending may overtake it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


def install_direct_fanout() -> None:
    from backend.realtime import endpoint, hub as hubmod, outbox as outboxmod

    sockets: dict[Any, Any] = {}  # Outbox -> starlette WebSocket
    busy: set[Any] = set()
    waiters: dict[Any, asyncio.Future[None]] = {}

    original_init = endpoint._Connection.__init__

    def init(self: Any, websocket: Any, settings: Any, hub: Any, metrics: Any, store: Any, session: Any,
             outbox: Any) -> None:
        original_init(self, websocket, settings, hub, metrics, store, session, outbox)
        sockets[outbox] = websocket

    original_disconnect = hubmod.Hub.disconnect

    def disconnect(self: Any, outbox: Any) -> None:
        sockets.pop(outbox, None)
        original_disconnect(self, outbox)

    def release(outbox: Any) -> None:
        busy.discard(outbox)
        fut = waiters.pop(outbox, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def send_all(pairs: list[tuple[Any, Any]], frame: str) -> None:
        for outbox, ws in pairs:
            try:
                if outbox.close_code is None:
                    await ws.send_text(frame)
            except Exception:  # noqa: BLE001 - the reader sees the disconnect
                pass
            finally:
                release(outbox)

    original_next = outboxmod.Outbox.next_frame

    async def next_frame(self: Any) -> str | None:
        frame = await original_next(self)
        while self in busy:  # a direct send of an earlier event is still pending: keep the order
            fut = waiters.get(self)
            if fut is None:
                fut = waiters[self] = asyncio.get_running_loop().create_future()
            await fut
        return frame

    def on_event(self: Any, event: Any) -> None:
        subs = self._subscriptions.get(event.project_id)
        if not subs:
            return
        started = time.perf_counter()
        delivered = 0
        direct: list[tuple[Any, Any]] = []
        for sub in tuple(subs.values()):
            ob = sub.outbox
            if (sub.pending is None and ob.close_code is None and not ob._frames and ob._wakeup._waiters
                    and ob not in busy and sub.is_new(event)):
                ws = sockets.get(ob)
                if ws is not None:
                    busy.add(ob)
                    direct.append((ob, ws))
                    sub.epoch, sub.seq = event.epoch, event.seq
                    delivered += 1
                    continue
            delivered += self._deliver(event.project_id, sub, event)
        if direct:
            asyncio.get_running_loop().create_task(send_all(direct, event.frame))
        if delivered:
            self.metrics.events_delivered.inc(delivered)
        self.metrics.broadcast_duration.observe(time.perf_counter() - started)

    endpoint._Connection.__init__ = init  # type: ignore[method-assign]
    hubmod.Hub.disconnect = disconnect  # type: ignore[method-assign]
    hubmod.Hub._on_event = on_event  # type: ignore[method-assign]
    outboxmod.Outbox.next_frame = next_frame  # type: ignore[method-assign]


class _Flag:
    """Stands in for `Outbox.closing` (an asyncio.Event nobody needs to wait on): `set()` calls back."""

    __slots__ = ("value", "callback")

    def __init__(self) -> None:
        self.value = False
        self.callback: Any = None

    def set(self) -> None:
        if not self.value:
            self.value = True
            if self.callback is not None:
                self.callback()

    def is_set(self) -> bool:
        return self.value


def install_lean_connection() -> None:
    from backend.realtime import endpoint, frames, outbox as outboxmod
    from backend.realtime.session import SEND_PING, TIMED_OUT, TOKEN_EXPIRED

    original_outbox_init = outboxmod.Outbox.__init__

    def outbox_init(self: Any, client_id: str, user_id: str, limit: int) -> None:
        original_outbox_init(self, client_id, user_id, limit)
        self.closing = _Flag()

    async def run(self: Any) -> None:
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        session, outbox = self.session, self.outbox
        writer = loop.create_task(self._write())
        handle: list[Any] = [None]

        def beat() -> None:
            handle[0] = None
            if outbox.close_code is not None:
                return
            for action in session.handle_timer(time.monotonic()):
                if action == SEND_PING:
                    outbox.push(frames.PING)
                elif action == TIMED_OUT:
                    if outbox.close(frames.HEARTBEAT_TIMEOUT, "heartbeat timeout"):
                        self.metrics.heartbeat_failures.inc()
                    return
                elif action == TOKEN_EXPIRED:
                    outbox.close(frames.AUTH_FAILED, "token expired",
                                 frame=frames.error("Authentication failed", "token expired"))
                    return
            handle[0] = loop.call_later(max(0.0, session.get_timer() - time.monotonic()), beat)

        def on_close() -> None:
            def guard() -> None:
                if me is not None and not me.done():
                    me.cancel()

            loop.call_later(endpoint.CLOSE_TIMEOUT_S + 1, guard)

        handle[0] = loop.call_later(max(0.0, session.get_timer() - time.monotonic()), beat)
        outbox.closing.callback = on_close
        if outbox.closing.is_set():
            on_close()
        try:
            await self._read()
            if outbox.close_code is not None:
                await asyncio.wait((writer,), timeout=endpoint.CLOSE_TIMEOUT_S)
        finally:
            if handle[0] is not None:
                handle[0].cancel()
            writer.cancel()
            await asyncio.wait((writer,))

    outboxmod.Outbox.__init__ = outbox_init  # type: ignore[method-assign]
    endpoint._Connection.run = run  # type: ignore[method-assign]


def install_blocking_redis_pool() -> None:
    import types

    import redis.asyncio as aioredis

    from backend.bus import redis as busredis

    def from_url(url: str, **kwargs: Any) -> Any:
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=100, timeout=20, **kwargs)
        return aioredis.Redis(connection_pool=pool)

    proxy = types.SimpleNamespace(**{k: getattr(aioredis, k) for k in dir(aioredis) if not k.startswith("__")})
    proxy.from_url = from_url
    busredis.aioredis = proxy  # type: ignore[assignment]


def install_gc_tuning() -> None:
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


VARIANTS = {"gc": install_gc_tuning, "direct": install_direct_fanout, "lean": install_lean_connection, "redispool": install_blocking_redis_pool}
