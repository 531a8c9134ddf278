"""Fixtures for the bus contract tests: `bus_factory` builds a started bus of the parametrised kind
(memory, or redis against a throw-away `redis-server` started here)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from backend.bus import EventBus, from_url
from backend.settings import Settings
from redis_server import REDIS_BINARY, SKIP_REASON, RedisServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if not REDIS_BINARY:
        pytest.skip(SKIP_REASON)
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def bus_factory(backend_kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Callable[..., Any]]:
    """`await bus_factory(**settings)` → a started bus; all are stopped after the test."""
    url = "memory://"
    if backend_kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flushall()
        url = server.url
    started: list[EventBus] = []

    async def make(**overrides: Any) -> EventBus:
        bus = from_url(url, Settings().with_overrides(**overrides))
        await bus.start()
        started.append(bus)
        return bus

    yield make
    for bus in started:
        await bus.stop()
