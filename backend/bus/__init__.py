"""The event bus: every change is published here and fanned out to WebSocket clients by the `Hub`.

Call `from_url(settings.bus_url, settings)` to get a bus, `await bus.start()`, then
`await bus.publish(project_id, event_type, data)`; the bus assigns the per-project `seq` and the `epoch`.
Listeners registered with `bus.listen(callback)` see every event, in per-project order. On re-subscribe,
`await bus.replay(project_id, epoch, seq)` returns the missed events, or `None` when they cannot all be
recovered (never a partial list).

Backends: `memory://` (`MemoryBus`, one process) and `redis://host:port/db` (`RedisBus`, Redis Streams,
for several server processes; needs the `redis` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .events import Event, Listener, ListenerSet, OutboxGap, Unsubscribe, new_epoch

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["Event", "EventBus", "Listener", "ListenerSet", "OutboxGap", "Unsubscribe", "from_url", "new_epoch"]


@runtime_checkable
class EventBus(Protocol):
    """What the rest of the server needs from a bus (see `MemoryBus` for the reference behaviour)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(
        self, project_id: str, event_type: str, data: dict[str, object], *, pseq: int | None = None,
        fresh_epoch: bool = False,
    ) -> Event | None:
        """Assign the next `seq` of `project_id`, store the event in the bounded history, deliver it to listeners.

        `pseq` is the event's outbox number (contiguous per project, `backend.relay`): the bus takes each number
        once and in order, so a relay that crashed after publishing and before marking the row sent cannot deliver
        it twice. A number already taken returns None (nothing published); one beyond the next raises `OutboxGap`.
        `fresh_epoch` starts a new epoch for the project first (clients resuming across it get `recovered:false`)
        and accepts a gap."""
        ...

    async def last_pseq(self, project_id: str) -> int | None:
        """The last outbox number the bus took for `project_id`; None when it has no record (new, or lost)."""
        ...

    async def restart_epoch(self, project_id: str, pseq: int | None) -> str:
        """Start a new epoch for `project_id` (its history is dropped) and set its last outbox number; returns it."""
        ...

    def listen(self, callback: Listener) -> Unsubscribe:
        """Call `callback(event)` for every event (from any node); returns a function that stops it."""
        ...

    async def replay(self, project_id: str, epoch: str, seq: int) -> list[Event] | None:
        """Every event of `project_id` after `seq`, in order, if `epoch` is current and all are still held; else None."""
        ...

    async def position(self, project_id: str) -> tuple[str, int]:
        """`(epoch, last seq)` of `project_id`; seq 0 when nothing was published yet."""
        ...


def from_url(url: str, settings: Settings) -> EventBus:
    """Build the bus named by `url`: `memory://` or `redis://…` (`rediss://`, `unix://` too)."""
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        from .memory import MemoryBus

        return MemoryBus(settings)
    if scheme in {"redis", "rediss", "unix"}:
        from .redis import RedisBus  # lazy: `redis` is an optional dependency

        return RedisBus(url, settings)
    raise ValueError(f"unsupported bus URL scheme: {scheme!r} (use memory:// or redis://)")
