"""Fixtures for the server tests: settings, a store, the in-process bus with an event recorder, and the
demo-seeded app under Starlette's TestClient (`api`). Helpers live in server_fixtures.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from server_fixtures import Api, Recorder, TestClient, make_settings

from backend.app import create_app
from backend.bus.memory import MemoryBus
from backend.metrics import Metrics
from backend.settings import Settings
from backend.store import Store
from backend.store.sqlite import SqliteEngine


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    """An open, empty in-memory store (async tests: `pytestmark = pytest.mark.anyio`)."""
    s = Store(SqliteEngine(":memory:"))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def bus(settings: Settings) -> MemoryBus:
    return MemoryBus(settings)


@pytest.fixture
def recorder(bus: MemoryBus) -> Recorder:
    return Recorder(bus)


@pytest.fixture
def api(settings: Settings, bus: MemoryBus) -> Iterator[Api]:
    """The demo-seeded app (alice: apollo + borealis, bob: cassini) on an in-memory database."""
    with TestClient(create_app(settings, bus=bus)) as client:
        yield Api(client, settings)
