"""`Outbox`: one connection's bounded queue of pre-serialised frames, drained by the endpoint's writer task.

Live events go through `offer()` (False when `send_queue_size` live frames are already waiting: the client
is too slow). Replies and replayed events go through `push()`, whose volume is bounded elsewhere (rate limit,
history size). `close(code)` asks the writer to send a close frame; `next_frame()` returns `None` then.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Outbox:
    """Frames waiting for one client. Not thread-safe: used from the event loop only."""

    __slots__ = (
        "client_id",
        "user_id",
        "close_code",
        "close_reason",
        "closing",
        "_frames",
        "_live",
        "_limit",
        "_wakeup",
    )

    def __init__(self, client_id: str, user_id: str, limit: int) -> None:
        self.client_id = client_id
        self.user_id = user_id
        self.close_code: int | None = None
        self.close_reason = ""
        self.closing = asyncio.Event()
        self._frames: deque[tuple[str, bool]] = deque()
        self._live = 0
        self._limit = max(limit, 1)
        self._wakeup = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    def offer(self, frame: str) -> bool:
        """Queue a live event frame; False (and nothing queued) if the live backlog is full."""
        if self.close_code is not None:
            return True  # closing anyway: drop silently, this is not an overflow
        if self._live >= self._limit:
            return False
        self._frames.append((frame, True))
        self._live += 1
        self._wakeup.set()
        return True

    def push(self, frame: str) -> None:
        """Queue a reply or a replayed event; never refused while the connection is open."""
        if self.close_code is None:
            self._frames.append((frame, False))
            self._wakeup.set()

    def close(self, code: int, reason: str = "", *, frame: str | None = None, flush: bool = False) -> bool:
        """Ask the writer to close with `code`, after `frame` (and the queued frames if `flush`).

        Returns False if a close was already requested (the first code wins).
        """
        if self.close_code is not None:
            return False
        if not flush:
            self._frames.clear()
            self._live = 0
        if frame is not None:
            self._frames.append((frame, False))
        self.close_code = code
        self.close_reason = reason
        self.closing.set()
        self._wakeup.set()
        return True

    async def next_frame(self) -> str | None:
        """The next frame to send, waiting if none; `None` once the queue is empty and a close was requested."""
        while True:
            if self._frames:
                frame, live = self._frames.popleft()
                if live:
                    self._live -= 1
                return frame
            if self.close_code is not None:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
