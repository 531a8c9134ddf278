"""The per-user socket cap counted across nodes (`backend.realtime.leases`), against a real redis-server: shared by
every node, given back on close, aged out when a node dies, and never in the way when Redis is down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from realtime_harness import LiveServer, make_settings, open_ws, recv, recv_type, token_for
from redis_server import RedisServer
from websockets.exceptions import ConnectionClosed

from backend.realtime.leases import CALL_TIMEOUT_S, UserLeases

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def nodes(redis: RedisServer) -> AsyncIterator[Callable[..., Any]]:
    """`await nodes(cap, **options)` → a started `UserLeases` on its own Redis client, like one per node."""
    made: list[tuple[UserLeases, Any]] = []

    async def make(cap: int, **options: Any) -> UserLeases:
        client = aioredis.Redis.from_url(redis.url, decode_responses=True, socket_timeout=2)
        leases = UserLeases(client, cap, **options)
        await leases.start()
        made.append((leases, client))
        return leases

    yield make
    for leases, client in made:
        await leases.stop()
        await client.aclose()


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_the_cap_counts_the_connections_of_every_node(nodes: Callable[..., Any], redis: RedisServer) -> None:
    a, b = await nodes(3), await nodes(3)
    assert [await a.acquire("alice", "c1"), await a.acquire("alice", "c2"), await b.acquire("alice", "c3")] == [True] * 3
    assert not await b.acquire("alice", "c4"), "a fourth socket on the other node is over the cap of 3"
    assert not await a.acquire("alice", "c5")
    assert await b.acquire("bob", "c6"), "another user has a cap of their own"
    a.release("alice", "c1")
    probe = aioredis.Redis.from_url(redis.url, decode_responses=True)
    try:
        await until(lambda: _card(probe, a.key("alice"), 2), "the released lease to leave Redis")
    finally:
        await probe.aclose()
    assert await b.acquire("alice", "c4"), "a closed socket gives its place back on every node"
    assert a.held() == 1 and b.held() == 3  # alice c3, c4 and bob c6


async def _card(client: Any, key: str, expected: int) -> bool:
    return int(await client.zcard(key)) == expected


async def test_a_crashed_nodes_connections_stop_counting_after_the_lease(nodes: Callable[..., Any]) -> None:
    a = await nodes(2, lease_s=0.6, refresh_s=0.1)
    b = await nodes(2, lease_s=0.6, refresh_s=0.1)
    assert await a.acquire("alice", "c1") and await b.acquire("alice", "c2")
    assert a._task is not None
    a._task.cancel()  # node a dies: nothing renews or releases its lease any more
    started = time.monotonic()
    assert not await b.acquire("alice", "c3"), "right after the crash the lease still counts"
    while not await b.acquire("alice", "c3"):
        assert time.monotonic() - started < 5, "the crashed node's lease never expired"
        await asyncio.sleep(0.05)
    assert time.monotonic() - started >= 0.3
    await asyncio.sleep(1.5)  # more than twice the lease: b's own leases are renewed, so the user is still full
    assert not await b.acquire("alice", "c4")


async def test_with_redis_down_each_node_decides_and_the_counts_come_back(nodes: Callable[..., Any],
                                                                          redis: RedisServer) -> None:
    a = await nodes(1, refresh_s=0.2)
    assert await a.acquire("alice", "c1")
    redis.kill()
    started = time.monotonic()
    assert await a.acquire("alice", "c2"), "Redis down: admitted (the node's own cap still applies)"
    assert time.monotonic() - started < CALL_TIMEOUT_S + 1
    redis.start()  # empty: no persistence
    probe = aioredis.Redis.from_url(redis.url, decode_responses=True)
    try:
        await until(lambda: _card(probe, a.key("alice"), 2), "the renewal to put this node's leases back")
    finally:
        await probe.aclose()
    assert not await a.acquire("alice", "c3")


async def test_a_paused_redis_holds_a_handshake_at_most_the_call_timeout(nodes: Callable[..., Any],
                                                                          redis: RedisServer) -> None:
    a = await nodes(5)
    await a.acquire("alice", "warm")
    redis.pause()
    try:
        started = time.monotonic()
        assert await a.acquire("alice", "c1")
        assert time.monotonic() - started < CALL_TIMEOUT_S + 0.5
    finally:
        redis.resume()


async def test_two_servers_on_one_redis_share_the_per_user_cap(redis: RedisServer) -> None:
    """The endpoint seam: a third socket of a user with a cap of 2 is refused with 4409 by the other server."""
    settings = make_settings(bus_url=redis.url, max_connections_per_user=2)
    token = token_for(settings)
    with LiveServer(settings) as first, LiveServer(settings) as second:
        async with open_ws(first, token) as ws1, open_ws(first, token) as ws2:
            await recv_type(ws1, "connected")
            await recv_type(ws2, "connected")
            async with open_ws(second, token) as ws3:
                refused = await recv(ws3)
                assert refused["type"] == "error" and refused["error"] == "Too many connections", refused
                with pytest.raises(ConnectionClosed) as closed:
                    await recv(ws3)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
            await ws1.close()
            deadline = time.monotonic() + 10
            while True:  # the close reaches the first server, which gives the lease back
                async with open_ws(second, token) as ws4:
                    frame = await recv(ws4)
                    if frame["type"] == "connected":
                        break
                assert time.monotonic() < deadline, "the freed place never reached the other server"
                await asyncio.sleep(0.05)
        assert second.app.state.user_leases is not None
