"""`Outbox`: one connection's writer: a bounded queue of pre-serialised frames and the code that sends them.

Live events go through `offer()` (one `dashboard.v1` event frame) or `offer_frame()` (a shared `dashboard.v2`
`Frame`, merged into the queued tail while the client is behind); replies through `push()`; replayed events
through `push(…, replay=True)` / `push_frame()` after the hub checked `room()`. Every queued frame counts
against the connection's budget: at most `limit` live frames and replies (`DASHBOARD_SEND_QUEUE_SIZE`) and
`byte_limit` characters of JSON text in all (`DASHBOARD_SEND_QUEUE_BYTES`, replays included). Going over calls
`on_overflow(outbox)` once (the hub closes it with 4008). `close(code)` sends a close frame after what is
queued (or instead of it).

Nothing is sent until the endpoint calls `attach(websocket, on_done)`. From then on there is no task per
connection: queued outboxes are written by one `Flusher` callback per event-loop iteration, and each send
is started *eagerly* (stepped by hand): when the transport is writable, uvicorn's `send()` completes without
suspending, so a fan-out to 5000 clients costs one loop callback, not 5000 task wake-ups. Only a send that
does suspend (the transport is paused: the client reads slower than we write) gets a task, which finishes
that send and drains the queue, then ends. `on_done()` is called once the close frame is out, the peer is
gone, or a close could not be sent within `close_timeout_s`; `detach()` cancels whatever is left.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol

from starlette.websockets import WebSocketDisconnect

from .batches import Frame, Merge, merged

_CLOSE = object()  # queue marker: send the close frame here
# What a queued item is, for the budget: a replayed frame counts bytes only; a reply or live frame counts both;
# a live `dashboard.v2` frame can also take later live frames merged into it.
REPLAY, COUNTED, MERGEABLE = 0, 1, 2
DEFAULT_BYTE_LIMIT = 1 << 20
SEND_ERRORS = (WebSocketDisconnect, RuntimeError, OSError)  # the peer is gone (uvicorn's ClientDisconnected is an OSError)
_log = logging.getLogger("dashboard")


class Sender(Protocol):
    """What an outbox writes to: Starlette's `WebSocket` (tests pass a fake)."""

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Flusher:
    """Sends, in one loop callback, the frames handed to it since the last loop iteration: `add(outbox,
    frame)` for an idle outbox's next frame (no queue needed), `add(outbox, None)` to flush its queue.
    `call_first(callback)` runs `callback()` at the start of that same callback, before the sends (the hub
    fans out the events collected during the tick there, so they leave in the same pass)."""

    __slots__ = ("_dirty", "_first", "_scheduled")

    def __init__(self) -> None:
        self._dirty: list[tuple[Outbox, str | None]] = []
        self._first: list[Callable[[], None]] = []
        self._scheduled = False

    def add(self, outbox: Outbox, frame: str | None) -> None:
        self._dirty.append((outbox, frame))
        self._schedule()

    def call_first(self, callback: Callable[[], None]) -> None:
        if callback not in self._first:
            self._first.append(callback)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        first, self._first = self._first, []
        for callback in first:  # still "scheduled": what they hand over is sent below, in this pass
            try:
                callback()
            except Exception:  # noqa: BLE001 - a fan-out bug must not stop the sends
                _log.exception("flusher callback failed")
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for outbox, frame in dirty:
            outbox._flush(frame)


class _Resume:
    """Awaitable that finishes a coroutine which was started by hand and suspended on `first` (what it
    yielded): the task awaiting this waits for each yielded future in turn, as if it awaited the coroutine."""

    __slots__ = ("_coro", "_first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first

    def __await__(self) -> Generator[Any, None, None]:
        coro, yielded = self._coro, self._first
        while True:
            try:
                yield yielded
            except BaseException as exc:  # cancelled while waiting: let the coroutine see it (and clean up)
                try:
                    yielded = coro.throw(exc)
                except StopIteration:
                    return
                continue
            try:
                yielded = coro.send(None)
            except StopIteration:
                return


class Outbox:
    """Frames waiting for one client, and their sending. Not thread-safe: used from the event loop only.

    `batched` is True for a `dashboard.v2` client (live frames may be batches); `session_id` is the `sid` claim
    of its token (for closing every connection of a revoked sign-in session)."""

    __slots__ = (
        "client_id",
        "user_id",
        "session_id",
        "batched",
        "close_code",
        "close_reason",
        "_frames",
        "_count",
        "_bytes",
        "_limit",
        "_byte_limit",
        "_on_overflow",
        "_flusher",
        "_sender",
        "_on_done",
        "_task",
        "_busy",
        "_done",
        "_guard",
        "_close_timeout_s",
    )

    def __init__(
        self,
        client_id: str,
        user_id: str,
        limit: int,
        *,
        byte_limit: int = DEFAULT_BYTE_LIMIT,
        batched: bool = False,
        session_id: str | None = None,
        on_overflow: Callable[[Outbox], None] | None = None,
        flusher: Flusher | None = None,
        close_timeout_s: float = 5.0,
    ) -> None:
        self.client_id = client_id
        self.user_id = user_id
        self.session_id = session_id
        self.batched = batched
        self.close_code: int | None = None
        self.close_reason = ""
        self._frames: deque[tuple[Any, int]] | None = None  # frames behind the one being sent; allocated on demand
        self._count = 0  # live frames and replies in `_frames`
        self._bytes = 0  # characters of every frame in `_frames`
        self._limit = max(limit, 1)
        self._byte_limit = max(byte_limit, 1)
        self._on_overflow = on_overflow
        self._flusher = flusher if flusher is not None else Flusher()
        self._sender: Sender | None = None
        self._on_done: Callable[[], None] | None = None
        self._task: asyncio.Task[None] | None = None  # only while a send is suspended (transport paused)
        self._busy = False  # handed to the flusher, or a task is draining: new frames queue behind
        self._done = False
        self._guard: asyncio.TimerHandle | None = None
        self._close_timeout_s = close_timeout_s

    def __len__(self) -> int:
        return len(self._frames) if self._frames else 0

    @property
    def backlogged(self) -> bool:
        """True while a send is waiting for the client to read (its transport is paused)."""
        return self._task is not None

    @property
    def queued_bytes(self) -> int:
        """Characters of JSON text queued behind the frame being sent."""
        return self._bytes

    def room(self, size: int) -> bool:
        """May `size` more characters of replayed events be queued? Not while the client is behind (backlogged)
        nor beyond the byte budget: the hub then answers the subscribe without a replay."""
        return self._task is None and self._bytes + size <= self._byte_limit

    # -- queueing -------------------------------------------------------------------------------

    def offer(self, frame: str) -> bool:
        """Queue a live `dashboard.v1` event frame; False (nothing queued, overflow reported) over the budget."""
        if self.close_code is not None:
            return True  # closing anyway: drop silently, this is not an overflow
        if not self._busy and self._sender is not None:  # idle: straight to the flusher, no queue
            self._busy = True
            self._flusher.add(self, frame)
            return True
        return self._queue(frame, COUNTED, len(frame))

    def offer_frame(self, frame: Frame) -> bool:
        """Queue a live `dashboard.v2` frame (shared, never modified). Behind a backlog it is merged into the
        queued tail while that stays within a frame's bounds. False (overflow reported) over the budget."""
        if self.close_code is not None:
            return True
        if not self._busy and self._sender is not None:
            self._busy = True
            self._flusher.add(self, frame.text)
            return True
        frames = self._frames
        if frames:
            tail, kind = frames[-1]
            if kind == MERGEABLE:
                if self._bytes + frame.size > self._byte_limit:
                    self._overflowed()
                    return False
                before = tail.size
                merge = merged(tail, frame)
                if merge is not None:
                    if merge is not tail:
                        frames[-1] = (merge, MERGEABLE)
                    self._bytes += merge.size - before
                    return True
        return self._queue(frame, MERGEABLE, frame.size)

    def push(self, frame: str, *, replay: bool = False) -> bool:
        """Queue a reply (or, with `replay`, a replayed event frame the hub made `room()` for).
        False (nothing queued, overflow reported) over the budget."""
        if self.close_code is not None:
            return True
        if not self._busy and self._sender is not None:
            self._busy = True
            self._flusher.add(self, frame)
            return True
        return self._queue(frame, REPLAY if replay else COUNTED, len(frame))

    def push_frame(self, frame: Frame) -> bool:
        """Queue a replayed `dashboard.v2` frame (see `room()`)."""
        if self.close_code is not None:
            return True
        if not self._busy and self._sender is not None:
            self._busy = True
            self._flusher.add(self, frame.text)
            return True
        return self._queue(frame, REPLAY, frame.size)

    def close(self, code: int, reason: str = "", *, frame: str | None = None, flush: bool = False) -> bool:
        """Send a close frame with `code`, after `frame` (and the frames already queued if `flush`; a frame
        already handed to the flusher goes out in any case).

        Returns False if a close was already requested (the first code wins).
        """
        if self.close_code is not None:
            return False
        if not flush and self._frames:
            self._frames.clear()
            self._count = self._bytes = 0
        self.close_code = code
        self.close_reason = reason
        if frame is not None:
            self._bytes += len(frame)
            self._enqueue(frame, REPLAY)
        self._enqueue(_CLOSE, REPLAY)
        if self._sender is not None and not self._done:
            self._guard = asyncio.get_running_loop().call_later(self._close_timeout_s, self._give_up)
        return True

    def take(self) -> list[str]:
        """Remove and return the queued frames' text without sending them (an outbox with no sender: tests, tools)."""
        frames = [_text(f) for f, _ in self._frames or () if f is not _CLOSE]
        self._frames = None
        self._count = self._bytes = 0
        return frames

    def _queue(self, item: Any, kind: int, size: int) -> bool:
        if (kind != REPLAY and self._count >= self._limit) or self._bytes + size > self._byte_limit:
            self._overflowed()
            return False
        if kind != REPLAY:
            self._count += 1
        self._bytes += size
        self._enqueue(item, kind)
        return True

    def _overflowed(self) -> None:
        """Over the budget: the client reads slower than it is sent to (or asks for more than it reads)."""
        if self._on_overflow is not None:
            self._on_overflow(self)
        else:
            self.close(4008, "slow consumer")

    def _enqueue(self, frame: Any, kind: int) -> None:
        if self._frames is None:
            self._frames = deque()
        self._frames.append((frame, kind))
        if not self._busy and self._sender is not None:
            self._busy = True
            self._flusher.add(self, None)

    # -- sending --------------------------------------------------------------------------------

    def attach(self, sender: Sender, on_done: Callable[[], None]) -> None:
        """Start sending to `sender` (what is queued goes out at the next loop iteration)."""
        self._sender = sender
        self._on_done = on_done
        if self.close_code is not None and self._guard is None:
            self._guard = asyncio.get_running_loop().call_later(self._close_timeout_s, self._give_up)
        if self._frames and not self._busy:
            self._busy = True
            self._flusher.add(self, None)

    def detach(self) -> None:
        """Stop sending and drop what is queued (the connection is over); idempotent. `on_done` is not called."""
        self._sender = None
        self._on_done = None
        self._finish()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._frames = None
        self._count = self._bytes = 0

    def _coroutine(self, frame: Any) -> Coroutine[Any, Any, None]:
        sender = self._sender
        assert sender is not None
        if type(frame) is str:
            return sender.send_text(frame)
        if frame is _CLOSE:
            return sender.close(self.close_code or 1000, self.close_reason)
        return sender.send_text(frame.text)

    def _pop(self) -> Any:
        """The next queued frame, or None (and the queue released) if there is none."""
        frames = self._frames
        if not frames:
            self._frames = None
            return None
        frame, kind = frames.popleft()
        if kind != REPLAY:
            self._count -= 1
        if frame is not _CLOSE:
            self._bytes -= len(frame) if type(frame) is str else frame.size
        return frame

    def _flush(self, frame: Any) -> None:
        """Flusher callback: send `frame` (if any), then the queue, while each send completes at once; hand over
        to a task when one suspends."""
        while True:
            if self._sender is None or self._done:
                self._busy = False
                return
            if frame is None:
                frame = self._pop()
                if frame is None:
                    self._busy = False
                    return
            coro = self._coroutine(frame)
            try:
                yielded = coro.send(None)
            except StopIteration:
                if frame is _CLOSE:
                    self._finish()  # the close frame is out
                frame = None
                continue
            except Exception as exc:  # noqa: BLE001 - one client's failure must not stop the others' flush
                self._failed(exc)
                return
            # The send is waiting (transport paused): a task finishes it and drains the queue; _busy stays True.
            self._task = asyncio.get_running_loop().create_task(self._drain(_Resume(coro, yielded), frame is _CLOSE))
            return

    async def _drain(self, pending: _Resume, closing: bool) -> None:
        """The slow path: finish the suspended send, then send the rest of the queue one by one."""
        try:
            await pending
            while not closing and self._sender is not None:
                frame = self._pop()
                if frame is None:
                    break
                closing = frame is _CLOSE
                await self._coroutine(frame)
        except Exception as exc:  # noqa: BLE001
            self._task = None
            self._failed(exc)
            return
        self._task = None
        self._busy = False
        if closing:
            self._finish()
        elif self._frames and self._sender is not None:  # defensive: never leave frames behind
            self._busy = True
            self._flusher.add(self, None)

    def _failed(self, exc: Exception) -> None:
        """A send raised: the client is gone (the reader sees the disconnect), or a bug, which is logged."""
        if not isinstance(exc, SEND_ERRORS):
            _log.error("sending to %s failed", self.client_id, exc_info=exc)
        self._frames = None
        self._count = self._bytes = 0
        self._busy = False
        self._finish()

    def _give_up(self) -> None:
        """The close frame could not be sent in time (the client does not read): stop trying."""
        self._guard = None
        if not self._done:
            if self._task is not None:
                self._task.cancel()
                self._task = None
            self._finish()

    def _finish(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None
        if not self._done:
            self._done = True
            on_done, self._on_done = self._on_done, None
            if on_done is not None:
                on_done()


def _text(frame: str | Frame | Merge) -> str:
    return frame if type(frame) is str else frame.text  # type: ignore[union-attr]
