"""PostgreSQL going away and coming back: calls fail with `Unavailable` (REST answers 503) while it is down, and
the same store works again once it is back, without reopening it."""

from __future__ import annotations

import asyncio
import time

import pytest

from backend.store import Store, Unavailable, engine_for
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.anyio


async def test_the_store_recovers_by_itself_after_a_postgres_restart(postgres: PostgresServer) -> None:
    store = Store(engine_for(postgres.fresh_database(), max_size=3))
    await store.open()
    try:
        await store.add_project("apollo", "Apollo")
        for _ in range(3):  # fill the pool with connections that will go stale
            await asyncio.gather(*(store.get_project("apollo") for _ in range(3)))
        postgres.kill()
        with pytest.raises(Unavailable):
            await store.get_project("apollo")
        with pytest.raises(Unavailable):
            await store.ping()
        postgres.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                project = await store.get_project("apollo")
                break
            except Unavailable:
                assert time.monotonic() < deadline, "the store did not recover"
                await asyncio.sleep(0.1)
        assert project is not None and project["name"] == "Apollo"
        # every pooled connection works again (at most one failed call per stale connection, then none)
        for _ in range(3):
            assert len(await asyncio.gather(*(store.get_project("apollo") for _ in range(3)))) == 3
    finally:
        await store.close()
