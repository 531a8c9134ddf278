"""Redis-only behaviour: the epoch lives in Redis (survives node restarts, changes when history is lost),
events cross nodes, and a reader that fell behind fills the gap from the history."""

from __future__ import annotations

import asyncio

import pytest

from backend.bus import Event
from backend.bus.redis import RedisBus
from backend.settings import Settings
from redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    redis_server.flushall()
    return redis_server.url


async def _started(url: str, **settings: object) -> RedisBus:
    bus = RedisBus(url, Settings().with_overrides(**settings))
    await bus.start()
    return bus


async def test_epoch_survives_a_node_restart(redis_url: str) -> None:
    node = await _started(redis_url)
    published = [await node.publish("apollo", "x", {"n": n}) for n in range(5)]
    await node.stop()
    restarted = await _started(redis_url)
    try:
        assert await restarted.position("apollo") == (published[0].epoch, 5)
        assert await restarted.replay("apollo", published[0].epoch, 2) == published[2:]
    finally:
        await restarted.stop()


async def test_epoch_changes_when_the_history_is_lost(redis_url: str, redis_server: RedisServer) -> None:
    node = await _started(redis_url)
    try:
        before = await node.publish("apollo", "x", {})
        await node.publish("apollo", "x", {})
        await node.redis.delete("{dashboard}:stream:apollo")  # e.g. evicted
        epoch, seq = await node.position("apollo")
        assert epoch != before.epoch and seq == 0
        assert await node.replay("apollo", before.epoch, 1) is None
        after = await node.publish("apollo", "x", {})
        assert (after.epoch, after.seq) == (epoch, 1)  # the announced epoch is kept by the next event
        redis_server.flushall()  # everything gone
        again = await node.publish("apollo", "x", {})
        assert again.epoch not in (before.epoch, after.epoch) and again.seq == 1
    finally:
        await node.stop()


async def test_event_published_on_one_node_reaches_listeners_on_the_other(redis_url: str) -> None:
    a, b = await _started(redis_url), await _started(redis_url)
    received: list[Event] = []
    got_all = asyncio.Event()

    def listener(event: Event) -> None:
        received.append(event)
        if len(received) == 3:
            got_all.set()

    b.listen(listener)
    try:
        sent = [await a.publish("apollo", "story.created", {"n": n}) for n in range(3)]
        await asyncio.wait_for(got_all.wait(), 5)
        assert [e.frame for e in received] == [e.frame for e in sent]
    finally:
        await a.stop()
        await b.stop()


async def test_reader_fills_a_gap_from_the_history(redis_url: str) -> None:
    node = await _started(redis_url)
    received: list[int] = []
    node.listen(lambda event: received.append(event.seq))
    try:
        published = [await node.publish("apollo", "x", {"n": n}) for n in range(6)]
        async with asyncio.timeout(5):
            while len(received) < 6:
                await asyncio.sleep(0.01)
        # As if the fan-out stream had been trimmed past seq 3..5 while this node was away:
        node._last_seen["apollo"] = (published[0].epoch, 2)  # noqa: SLF001
        received.clear()
        await node._deliver(published[5])  # noqa: SLF001
        assert received == [3, 4, 5, 6]
    finally:
        await node.stop()


async def test_unreachable_redis_fails_fast_at_start() -> None:
    from redis_server import free_port

    bus = RedisBus(f"redis://127.0.0.1:{free_port()}/0", Settings())
    with pytest.raises(Exception):
        await bus.start()
    await bus.stop()


async def test_reader_survives_a_redis_restart() -> None:
    # A private server: restarting the shared one would disturb other tests.
    with RedisServer() as server:
        node = await _started(server.url)
        received: list[Event] = []
        arrived = asyncio.Event()

        def listener(event: Event) -> None:
            received.append(event)
            arrived.set()

        node.listen(listener)
        try:
            before = await node.publish("apollo", "x", {})
            await asyncio.wait_for(arrived.wait(), 5)
            server.restart()  # all data lost: the project gets a new epoch
            arrived.clear()
            async with asyncio.timeout(10):
                while True:  # the pool reconnects; the first commands may still hit the dead connection
                    try:
                        after = await node.publish("apollo", "x", {})
                        break
                    except Exception:
                        await asyncio.sleep(0.05)
            await asyncio.wait_for(arrived.wait(), 5)
            assert received[-1].frame == after.frame
            assert after.epoch != before.epoch and after.seq == 1
        finally:
            await node.stop()


async def test_a_burst_larger_than_the_connection_pool_waits_instead_of_failing(redis_url: str) -> None:
    from backend.bus.redis import REDIS_MAX_CONNECTIONS

    node = await _started(redis_url)
    try:
        burst = 3 * REDIS_MAX_CONNECTIONS  # e.g. a reconnect storm re-subscribing while REST writes publish
        calls = [node.position(f"p{n % 7}") for n in range(burst)]
        calls += [node.publish("apollo", "x", {"n": n}) for n in range(burst)]
        results = await asyncio.wait_for(asyncio.gather(*calls), 30)
        published = [r for r in results if isinstance(r, Event)]
        assert sorted(e.seq for e in published) == list(range(1, burst + 1))
    finally:
        await node.stop()
