"""Property test of the hub's ordering guarantee: whatever the interleaving of publishes, (re)subscribes with or
without `since`, drops and slow replays, every client sees each project's events exactly once, in seq order, with
no gap after its `subscribed` reply (and a replay that ends exactly at the reply's seq)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.bus import Event
from backend.bus.memory import MemoryBus
from backend.metrics import Metrics
from backend.realtime.hub import Hub
from backend.realtime.outbox import Outbox
from backend.realtime.session import Since

from realtime_harness import FakeStore, make_settings

PROJECTS = ("apollo", "borealis")


class YieldingBus(MemoryBus):
    """Replay and position yield to the loop a chosen number of times before and after taking their snapshot."""

    def __init__(self, delays: list[int]) -> None:
        super().__init__(make_settings(history_size=8))
        self.delays = delays or [0]
        self.calls = 0

    async def _pause(self) -> None:
        self.calls += 1
        for _ in range(self.delays[self.calls % len(self.delays)]):
            await asyncio.sleep(0)

    async def replay(self, project_id: str, epoch: str, seq: int) -> list[Event] | None:
        await self._pause()  # events published now are both held live and part of the snapshot
        result = await super().replay(project_id, epoch, seq)
        await self._pause()  # events published now are only held live
        return result

    async def position(self, project_id: str) -> tuple[str, int]:
        await self._pause()
        result = await super().position(project_id)
        await self._pause()
        return result


operation = st.one_of(
    st.tuples(st.just("publish"), st.sampled_from(PROJECTS), st.integers(1, 4)),
    st.tuples(st.just("subscribe"), st.integers(0, 2), st.sampled_from(PROJECTS)),
    st.tuples(st.just("drop"), st.integers(0, 2), st.just("")),
)


class Client:
    """One client's view: its current connection and the last (epoch, seq) it applied per project."""

    def __init__(self, hub: Hub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.outbox: Outbox | None = None
        self.positions: dict[str, tuple[str, int]] = {}
        self.expect: dict[str, int | None] = {}  # next seq expected live (None: waiting for `subscribed`)
        self.generation = 0
        self.busy: asyncio.Task[Any] | None = None

    def connection(self) -> Outbox:
        if self.outbox is None:
            self.generation += 1
            self.outbox = self.hub.connect(f"{self.name}-{self.generation}", "alice")
            self.expect = {}
        return self.outbox

    def drop(self) -> None:
        if self.outbox is not None:
            self.check()
            self.hub.disconnect(self.outbox)
            self.outbox = None

    def check(self) -> None:
        """Consume the frames queued so far and assert the ordering rules."""
        outbox = self.outbox
        if outbox is None:
            return
        replay: dict[str, list[int]] = {}
        for frame in outbox.take():
            message = json.loads(frame)
            project = message.get("projectId")
            if message["type"] == "event":
                expected = self.expect.get(project)
                if expected is None:  # before `subscribed`: a replayed event
                    replay.setdefault(project, []).append(message["seq"])
                else:
                    assert message["seq"] == expected, (self.name, project, message["seq"], expected)
                    self.expect[project] = expected + 1
                self.positions[project] = (message["epoch"], message["seq"])
            elif message["type"] == "subscribed":
                replayed = replay.pop(project, [])
                if message["recovered"] and replayed:
                    assert replayed == list(range(replayed[0], message["seq"] + 1)), (replayed, message)
                    assert message["replayed"] == len(replayed)
                else:
                    assert replayed == []
                if self.expect.get(project) is None:
                    self.expect[project] = message["seq"] + 1
                self.positions[project] = (message["epoch"], message["seq"])
        assert not replay, replay


async def scenario(ops: list[tuple[str, Any, Any]], delays: list[int]) -> None:
    bus = YieldingBus(delays)
    hub = Hub(make_settings(send_queue_size=10_000), bus, Metrics(), FakeStore())
    await hub.start()
    clients = [Client(hub, f"c{i}") for i in range(3)]
    pending: list[asyncio.Task[Any]] = []
    for op, a, b in ops:
        if op == "publish":
            for _ in range(b):
                await bus.publish(a, "x", {})
        elif op == "subscribe":
            client = clients[a]
            outbox = client.connection()
            position = client.positions.get(b)
            since = Since(*position) if position else None
            if not hub.is_subscribed(outbox, b):
                client.expect.pop(b, None)
            previous = client.busy

            async def subscribe_after(previous: asyncio.Task[Any] | None = previous, outbox: Outbox = outbox,
                                      project: str = b, since: Since | None = since) -> None:
                if previous is not None:  # one connection handles its messages one after the other
                    await previous
                await hub.subscribe(outbox, project, since)

            client.busy = asyncio.create_task(subscribe_after())
            pending.append(client.busy)
            await asyncio.sleep(0)  # let it start; later operations overlap with its replay
        else:
            await asyncio.gather(*pending)
            pending.clear()
            clients[a].busy = None
            clients[a].drop()
        await asyncio.sleep(0)
    await asyncio.gather(*pending)
    for project in PROJECTS:
        await bus.publish(project, "x", {})
    for client in clients:
        client.check()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, max_size=30), delays=st.lists(st.integers(0, 5), max_size=5))
def test_every_client_sees_each_event_once_and_in_order(ops: list[tuple[str, Any, Any]], delays: list[int]) -> None:
    asyncio.run(scenario(ops, delays))
