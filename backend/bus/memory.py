"""`MemoryBus`: the in-process bus (`memory://`), the default for a single server process.

History is bounded per project by `settings.history_size` events and `settings.history_ttl_s` seconds.
Each project's epoch starts as the bus instance's random epoch, so after a restart every client's position is
unrecoverable and it gets `recovered:false` (it refetches over REST); `restart_epoch` (or `fresh_epoch=True`) gives a
project a new one. `publish(..., pseq=n)` takes outbox number `n` once, in order (see `EventBus.publish`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from ..settings import Settings
from .events import Event, Listener, ListenerSet, OutboxGap, Unsubscribe, new_epoch, now_ms


class _History:
    """One project's epoch, counter, last outbox number taken, and its bounded, time-limited event history."""

    __slots__ = ("epoch", "events", "pseq", "seq")

    def __init__(self, size: int, epoch: str) -> None:
        self.epoch = epoch
        self.seq = 0
        self.pseq: int | None = None
        self.events: deque[Event] = deque(maxlen=max(size, 0))

    def restart(self, epoch: str) -> None:
        self.epoch = epoch
        self.seq = 0
        self.events.clear()


class MemoryBus:
    """In-process `EventBus`. `clock` returns epoch milliseconds (tests inject one to exercise the TTL)."""

    def __init__(self, settings: Settings, *, clock: Callable[[], int] = now_ms, epoch: str | None = None) -> None:
        self.settings = settings
        self.epoch = epoch or new_epoch()
        self._clock = clock
        self._projects: dict[str, _History] = {}
        self._listeners = ListenerSet()
        self._control: list[Callable[[dict[str, Any]], None]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    def listen(self, callback: Listener) -> Unsubscribe:
        return self._listeners.add(callback)

    def on_control(self, callback: Callable[[dict[str, Any]], None]) -> None:
        self._control.append(callback)

    async def send_control(self, message: dict[str, Any]) -> None:
        for callback in list(self._control):
            callback(message)

    def _history(self, project_id: str) -> _History:
        history = self._projects.get(project_id)
        if history is None:
            history = self._projects[project_id] = _History(self.settings.history_size, self.epoch)
        return history

    def _expire(self, history: _History, now: int) -> None:
        cutoff = now - int(self.settings.history_ttl_s * 1000)
        while history.events and history.events[0].timestamp < cutoff:
            history.events.popleft()

    async def publish(
        self, project_id: str, event_type: str, data: dict[str, Any], *, pseq: int | None = None, fresh_epoch: bool = False
    ) -> Event | None:
        # No await between numbering and dispatch: per-project order is the order of publish() calls.
        history = self._history(project_id)
        if pseq is not None and history.pseq is not None:
            if pseq <= history.pseq:
                return None  # already numbered (a relay retrying after a crash): never deliver twice
            if pseq > history.pseq + 1 and not fresh_epoch:
                raise OutboxGap(project_id, history.pseq)
        if fresh_epoch:
            history.restart(new_epoch())
        if pseq is not None:
            history.pseq = pseq
        now = self._clock()
        history.seq += 1
        event = Event(project_id, event_type, history.seq, history.epoch, now, data)
        self._expire(history, now)
        history.events.append(event)
        self._listeners.dispatch(event)
        return event

    async def last_pseq(self, project_id: str) -> int | None:
        history = self._projects.get(project_id)
        return history.pseq if history else None

    async def restart_epoch(self, project_id: str, pseq: int | None) -> str:
        history = self._history(project_id)
        history.restart(new_epoch())
        history.pseq = pseq
        return history.epoch

    async def replay(self, project_id: str, epoch: str, seq: int) -> list[Event] | None:
        history = self._projects.get(project_id)
        if epoch != (history.epoch if history else self.epoch):
            return None
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
        return (history.epoch, history.seq) if history else (self.epoch, 0)
