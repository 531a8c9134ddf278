"""`Deadlines`: many per-connection deadlines on ONE event-loop timer (a binary heap, lazily cancelled).

The hub owns one; each connection calls `add(when, callback)` with its session's next deadline
(`Session.get_timer()`, on the `time.monotonic()` clock) and gets an entry back to `cancel()`. When a
deadline is due the callback runs with `now` and returns the next deadline (or None to stop). One timer
handle for 5000 connections instead of 5000 sleeping tasks or handles.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable

_log = logging.getLogger("dashboard")
Callback = Callable[[float], "float | None"]


class Deadline:
    """One scheduled callback; `cancel()` forgets it (its heap slot is skipped when it comes up)."""

    __slots__ = ("when", "order", "callback")

    def __init__(self, when: float, order: int, callback: Callback | None) -> None:
        self.when = when
        self.order = order
        self.callback = callback

    def __lt__(self, other: Deadline) -> bool:
        return (self.when, self.order) < (other.when, other.order)

    def cancel(self) -> None:
        self.callback = None


class Deadlines:
    """A min-heap of `Deadline`s driven by one `loop.call_later` handle for the earliest."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._heap: list[Deadline] = []
        self._order = itertools.count()
        self._clock = clock
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for: float | None = None

    def __len__(self) -> int:
        return sum(1 for d in self._heap if d.callback is not None)

    def add(self, when: float, callback: Callback) -> Deadline:
        """Run `callback(now)` at `when` (monotonic seconds); it returns its next deadline or None."""
        entry = Deadline(when, next(self._order), callback)
        heapq.heappush(self._heap, entry)
        if self._armed_for is None or when < self._armed_for:
            self._arm(when)
        return entry

    def close(self) -> None:
        """Cancel the loop timer and forget every entry."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._armed_for = None
        self._heap.clear()

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_for = when
        self._handle = asyncio.get_running_loop().call_later(max(0.0, when - self._clock()), self._fire)

    def _fire(self) -> None:
        self._handle = self._armed_for = None
        heap = self._heap
        now = self._clock()
        due: list[Deadline] = []
        while heap and (heap[0].callback is None or heap[0].when <= now):
            entry = heapq.heappop(heap)
            if entry.callback is not None:
                due.append(entry)
        for entry in due:
            callback = entry.callback
            if callback is None:  # cancelled by an earlier callback of this round
                continue
            try:
                nxt = callback(now)
            except Exception:  # one connection's bug must not stop the others' heartbeats
                _log.exception("deadline callback failed")
                nxt = None
            if nxt is not None and entry.callback is not None:
                entry.when = max(nxt, now)
                entry.order = next(self._order)
                heapq.heappush(heap, entry)
        if heap and (self._armed_for is None or heap[0].when < self._armed_for):
            self._arm(heap[0].when)
