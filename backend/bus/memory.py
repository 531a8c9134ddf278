"""`MemoryBus`: the in-process bus (`memory://`), the default for a single server process.

History is bounded per project by `settings.history_size` events and `settings.history_ttl_s` seconds.
The epoch is random per bus instance, so after a restart every client's position is unrecoverable and it
gets `recovered:false` (it refetches over REST).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from ..settings import Settings
from .events import Event, Listener, ListenerSet, Unsubscribe, new_epoch, now_ms


class _History:
    """One project's counter and its bounded, time-limited event history."""

    __slots__ = ("events", "seq")

    def __init__(self, size: int) -> None:
        self.seq = 0
        self.events: deque[Event] = deque(maxlen=max(size, 0))


class MemoryBus:
    """In-process `EventBus`. `clock` returns epoch milliseconds (tests inject one to exercise the TTL)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], int] = now_ms, epoch: str | None = None) -> None:
        self.settings = settings
        self.epoch = epoch or new_epoch()
        self._clock = clock
        self._projects: dict[str, _History] = {}
        self._listeners = ListenerSet()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def listen(self, callback: Listener) -> Unsubscribe:
        return self._listeners.add(callback)

    def _history(self, project_id: str) -> _History:
        history = self._projects.get(project_id)
        if history is None:
            history = self._projects[project_id] = _History(self.settings.history_size)
        return history

    def _expire(self, history: _History, now: int) -> None:
        cutoff = now - int(self.settings.history_ttl_s * 1000)
        while history.events and history.events[0].timestamp < cutoff:
            history.events.popleft()

    async def publish(self, project_id: str, event_type: str, data: dict[str, Any]) -> Event:
        # No await between numbering and dispatch: per-project order is the order of publish() calls.
        history = self._history(project_id)
        now = self._clock()
        history.seq += 1
        event = Event(project_id, event_type, history.seq, self.epoch, now, data)
        self._expire(history, now)
        history.events.append(event)
        self._listeners.dispatch(event)
        return event

    async def replay(self, project_id: str, epoch: str, seq: int) -> list[Event] | None:
        if epoch != self.epoch:
            return None
        history = self._projects.get(project_id)
        current = history.seq if history else 0
        if seq < 0 or seq > current:
            return None
        if seq == current:
            return []
        assert history is not None
        self._expire(history, self._clock())
        if not history.events or history.events[0].seq > seq + 1:
            return None  # some of the missed events are gone: never replay a part
        return [event for event in history.events if event.seq > seq]

    async def position(self, project_id: str) -> tuple[str, int]:
        history = self._projects.get(project_id)
        return self.epoch, history.seq if history else 0
