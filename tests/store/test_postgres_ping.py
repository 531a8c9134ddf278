"""Readiness must not mistake a busy pool for a database that is down: `ping()` answers at once while every pooled
connection is taken (a reconnect storm's queries queue there), fails while PostgreSQL is down, and recovers."""

from __future__ import annotations

import asyncio
import time

import pytest

from backend.store import Store, Unavailable, engine_for
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.anyio


async def test_ping_answers_while_the_pool_is_exhausted_and_follows_the_server(postgres: PostgresServer) -> None:
    store = Store(engine_for(postgres.fresh_database(), max_size=2))
    await store.open()
    try:
        pool = store.engine.pool
        held = [await pool.acquire(), await pool.acquire()]  # every pooled connection busy
        try:
            await asyncio.wait_for(store.ping(), 1.0)
        finally:
            for conn in held:
                await pool.release(conn)
        postgres.kill()
        with pytest.raises(Unavailable):
            await store.ping()
        postgres.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                await store.ping()
                break
            except Unavailable:
                assert time.monotonic() < deadline, "ping never recovered"
                await asyncio.sleep(0.1)
    finally:
        await store.close()
