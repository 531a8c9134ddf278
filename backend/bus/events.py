"""`Event` (one published change, with its wire frame serialised once) and `ListenerSet` (callback registry).

Buses build events with `Event.create(...)`; the `Hub` sends `event.frame` to every subscriber unchanged.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..logs import log_event


def new_epoch() -> str:
    """A fresh random epoch: marks one incarnation of a project's history."""
    return secrets.token_hex(6)


def now_ms() -> int:
    return int(time.time() * 1000)


def _encode(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Event:
    """One change of one project. `frame` is the JSON text sent on the wire, built once in `__post_init__`."""

    project_id: str
    event_type: str
    seq: int
    epoch: str
    timestamp: int
    data: dict[str, Any]
    frame: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "frame",
            _encode(
                {
                    "type": "event",
                    "eventType": self.event_type,
                    "projectId": self.project_id,
                    "seq": self.seq,
                    "epoch": self.epoch,
                    "timestamp": self.timestamp,
                    "data": self.data,
                }
            ),
        )

    @classmethod
    def from_frame(cls, frame: str) -> Event:
        """Rebuild an event from its wire text (the Redis bus stores frames)."""
        raw = json.loads(frame)
        return cls(
            project_id=raw["projectId"],
            event_type=raw["eventType"],
            seq=int(raw["seq"]),
            epoch=raw["epoch"],
            timestamp=int(raw["timestamp"]),
            data=raw["data"],
        )


class OutboxGap(Exception):
    """`publish(pseq=n)` refused: the bus has taken outbox numbers up to `last` only, so `n` would skip some.
    The relay publishes the missing ones first (or, when they are gone, starts a new epoch)."""

    def __init__(self, project_id: str, last: int) -> None:
        super().__init__(f"{project_id}: outbox numbers taken up to {last}")
        self.project_id = project_id
        self.last = last


Listener = Callable[[Event], None]
Unsubscribe = Callable[[], None]


class ListenerSet:
    """The callbacks of one bus. `add()` returns the function that removes the callback again."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def add(self, callback: Listener) -> Unsubscribe:
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def dispatch(self, event: Event) -> None:
        """Call every listener; a failing listener is logged and does not stop the others."""
        for callback in tuple(self._listeners):
            try:
                callback(event)
            except Exception:  # a listener bug must not break delivery to the rest
                log_event("bus.listener_error", logging.ERROR, project_id=event.project_id, seq=event.seq)
                logging.getLogger("dashboard").exception("listener failed")

    def __len__(self) -> int:
        return len(self._listeners)
