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


class _BrokenConnection:
    """What the pool handed out once after a PostgreSQL restart: a connection stuck mid-operation."""

    async def fetchval(self, *args: object) -> object:
        import asyncpg

        raise asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation (2) is in progress")


class _Acquired:
    async def __aenter__(self) -> _BrokenConnection:
        return _BrokenConnection()

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Pool:
    def acquire(self, timeout: float | None = None) -> _Acquired:
        return _Acquired()


async def test_a_connection_left_mid_operation_by_a_restart_is_unavailable_not_a_server_error() -> None:
    from backend.store.postgres import PostgresEngine
    from backend.store.sql import VALUE, Request

    engine = PostgresEngine("postgresql://unused/db")
    engine._pool = _Pool()  # type: ignore[assignment]
    with pytest.raises(Unavailable):  # REST answers 503 (retry), not 500
        await engine.run(Request(VALUE, "SELECT 1", ()))
