"""The store contract runs against both engines: `store` is an open, empty store on SQLite (in memory) and on a
real PostgreSQL (one server per test session, a fresh database per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from backend.store import Store, engine_for
from tests.postgres_server import INITDB, SKIP_REASON, PostgresServer


class Clock:
    """Epoch milliseconds a test sets by hand."""

    def __init__(self, start: int = 1_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if not INITDB:
        pytest.fail(SKIP_REASON)
    with PostgresServer() as server:
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return "sqlite:///:memory:"
    return str(request.getfixturevalue("postgres").fresh_database())


@pytest.fixture
async def store(database_url: str, clock: Clock) -> AsyncIterator[Store]:
    s = Store(engine_for(database_url), clock=clock)
    await s.open()
    yield s
    await s.close()
