"""One contract for every bus backend (memory and redis): numbering, delivery order, bounded history,
never-partial replay, epochs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from backend.bus import Event, EventBus, OutboxGap, from_url
from backend.bus.memory import MemoryBus
from backend.settings import Settings

pytestmark = pytest.mark.anyio


class Collector:
    """A bus listener that lets a test await the n-th event (with a timeout)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[Event]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.events


def test_event_frame_is_the_wire_message_built_once() -> None:
    event = Event("apollo", "story.created", 42, "e1", 1764095000123, {"story": {"id": 7, "title": "é"}})
    assert json.loads(event.frame) == {
        "type": "event",
        "eventType": "story.created",
        "projectId": "apollo",
        "seq": 42,
        "epoch": "e1",
        "timestamp": 1764095000123,
        "data": {"story": {"id": 7, "title": "é"}},
    }
    assert event.frame is event.frame
    assert Event.from_frame(event.frame) == event


def test_from_url_rejects_unknown_schemes() -> None:
    with pytest.raises(ValueError, match="unsupported bus URL"):
        from_url("kafka://x", Settings())
    assert isinstance(from_url("memory://", Settings()), MemoryBus)


async def test_seq_is_per_project_and_events_reach_listeners_in_order(bus_factory: Callable[..., Any]) -> None:
    bus: EventBus = await bus_factory()
    seen = Collector()
    bus.listen(seen)
    published = []
    for n in range(6):
        published.append(await bus.publish("apollo" if n % 3 else "borealis", "story.created", {"n": n}))
    assert [(e.project_id, e.seq) for e in published] == [
        ("borealis", 1), ("apollo", 1), ("apollo", 2), ("borealis", 2), ("apollo", 3), ("apollo", 4),
    ]
    events = await seen.wait_for(6)
    assert [(e.project_id, e.seq, e.data["n"]) for e in events] == [
        (e.project_id, e.seq, e.data["n"]) for e in published
    ]
    assert [e.frame for e in events] == [e.frame for e in published]
    assert await bus.position("apollo") == (published[-1].epoch, 4)


async def test_unsubscribed_listener_gets_nothing_more(bus_factory: Callable[..., Any]) -> None:
    bus: EventBus = await bus_factory()
    stopped, running = Collector(), Collector()
    unsubscribe = bus.listen(stopped)
    bus.listen(running)
    await bus.publish("apollo", "x", {})
    await stopped.wait_for(1)
    unsubscribe()
    await bus.publish("apollo", "x", {})
    await running.wait_for(2)
    assert len(stopped.events) == 1


async def test_position_of_a_quiet_project(bus_factory: Callable[..., Any]) -> None:
    bus: EventBus = await bus_factory()
    epoch, seq = await bus.position("quiet")
    assert seq == 0 and epoch
    assert await bus.position("quiet") == (epoch, 0)
    event = await bus.publish("quiet", "x", {})
    assert (event.epoch, event.seq) == (epoch, 1)  # the first event keeps the announced epoch
    assert await bus.replay("quiet", epoch, 0) == [event]


async def test_replay_returns_exactly_the_missed_events(bus_factory: Callable[..., Any]) -> None:
    bus: EventBus = await bus_factory(history_size=100)
    published = [await bus.publish("apollo", "x", {"n": n}) for n in range(10)]
    epoch = published[0].epoch
    replayed = await bus.replay("apollo", epoch, 4)
    assert replayed == published[4:]
    assert [e.frame for e in replayed or ()] == [e.frame for e in published[4:]]
    assert await bus.replay("apollo", epoch, 10) == []
    assert await bus.replay("apollo", epoch, 0) == published


@pytest.mark.parametrize(("epoch", "seq"), [("other-epoch", 3), (None, 11), (None, -1)])
async def test_replay_refuses_unknown_positions(bus_factory: Callable[..., Any], epoch: str | None, seq: int) -> None:
    bus: EventBus = await bus_factory()
    published = [await bus.publish("apollo", "x", {}) for _ in range(10)]
    assert await bus.replay("apollo", epoch or published[0].epoch, seq) is None


async def test_history_is_bounded_and_replay_is_never_partial(bus_factory: Callable[..., Any]) -> None:
    bus: EventBus = await bus_factory(history_size=5)
    published = [await bus.publish("apollo", "x", {"n": n}) for n in range(12)]
    epoch = published[0].epoch
    assert await bus.replay("apollo", epoch, 7) == published[7:]  # 5 missed: still held
    assert await bus.replay("apollo", epoch, 6) is None  # 6 missed: more than the history holds
    assert await bus.replay("apollo", epoch, 0) is None


async def test_concurrent_publishers_get_distinct_consecutive_seqs(bus_factory: Callable[..., Any]) -> None:
    first: EventBus = await bus_factory()
    # Two Redis buses act as two server nodes; the memory bus is one process, so it publishes to itself.
    second: EventBus = first if isinstance(first, MemoryBus) else await bus_factory()
    seen = Collector()
    second.listen(seen)
    results = await asyncio.gather(*(bus.publish("apollo", "x", {"i": i}) for i in range(20) for bus in (first, second)))
    assert sorted(e.seq for e in results) == list(range(1, 41))
    events = await seen.wait_for(40)
    assert [e.seq for e in events] == list(range(1, 41))


async def test_memory_history_ttl() -> None:
    now = [1_000_000]
    bus = MemoryBus(Settings(history_size=100, history_ttl_s=10), clock=lambda: now[0])
    old = await bus.publish("apollo", "x", {})
    now[0] += 5_000
    recent = await bus.publish("apollo", "x", {})
    assert await bus.replay("apollo", bus.epoch, 0) == [old, recent]
    now[0] += 6_000  # `old` is now 11 s old
    assert await bus.replay("apollo", bus.epoch, 0) is None
    assert await bus.replay("apollo", bus.epoch, 1) == [recent]


async def test_memory_epoch_is_new_per_instance() -> None:
    first, second = MemoryBus(Settings()), MemoryBus(Settings())
    event = await first.publish("apollo", "x", {})
    await second.publish("apollo", "x", {})
    assert first.epoch != second.epoch
    assert await second.replay("apollo", event.epoch, 0) is None


async def test_an_outbox_number_is_taken_once_and_in_order(bus_factory: Callable[..., Any]) -> None:
    bus: EventBus = await bus_factory()
    seen = Collector()
    bus.listen(seen)
    assert await bus.last_pseq("apollo") is None
    first = await bus.publish("apollo", "story.created", {"n": 1}, pseq=1)
    assert first is not None and first.seq == 1
    assert await bus.publish("apollo", "story.created", {"n": 1}, pseq=1) is None  # a relay retrying: not twice
    with pytest.raises(OutboxGap) as gap:
        await bus.publish("apollo", "story.created", {"n": 3}, pseq=3)
    assert gap.value.last == 1
    second = await bus.publish("apollo", "story.created", {"n": 2}, pseq=2)
    assert second is not None and second.seq == 2
    assert await bus.last_pseq("apollo") == 2
    events = await seen.wait_for(2)
    await asyncio.sleep(0.2)  # nothing else may arrive (a duplicate would come from the reader task)
    assert [(e.seq, e.data["n"]) for e in events] == [(1, 1), (2, 2)]


async def test_a_fresh_epoch_accepts_a_gap_and_makes_old_positions_unrecoverable(bus_factory: Callable[..., Any]) -> None:
    bus: EventBus = await bus_factory()
    await bus.publish("apollo", "a", {}, pseq=1)
    old_epoch, old_seq = await bus.position("apollo")
    event = await bus.publish("apollo", "b", {}, pseq=5, fresh_epoch=True)
    assert event is not None and event.seq == 1 and event.epoch != old_epoch
    assert await bus.replay("apollo", old_epoch, old_seq) is None
    assert await bus.replay("apollo", event.epoch, 0) is not None
    assert await bus.publish("apollo", "c", {}, pseq=5, fresh_epoch=True) is None  # still never twice
    epoch = await bus.restart_epoch("apollo", 9)
    assert epoch != event.epoch and await bus.position("apollo") == (epoch, 0)
    assert await bus.last_pseq("apollo") == 9
    other = await bus.position("borealis")  # other projects keep theirs
    assert other[1] == 0
