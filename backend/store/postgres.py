"""`PostgresEngine`: `postgresql://user:pass@host:port/db` through an asyncpg connection pool.

Each unit of work runs on one pooled connection inside `conn.transaction()` (READ COMMITTED; changes lock their
project's row first, which orders the writes of one project). Migrations run under a transaction-scoped advisory
lock, so nodes starting together apply each step once. Used through `backend.store.Store`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from . import migrations
from .sql import ALL, EXEC, ONE, VALUE, IntegrityError, Request, Unavailable, Work

MIGRATION_LOCK = 7_215_004_311  # pg_advisory_xact_lock key of the migration step
CONNECT_TIMEOUT_S = 5.0
COMMAND_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 2.0

_UNAVAILABLE = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    # A pooled connection left mid-operation by a server restart ("cannot switch to state …; another operation is in
    # progress"): unusable now, replaced by the pool; the caller retries.
    asyncpg.exceptions.InternalClientError,
    TimeoutError,
)


def _count(status: str) -> int:
    """Rows changed, from a command tag such as `UPDATE 1`."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


async def _run(conn: Any, request: Request) -> Any:
    kind = request.kind
    if kind == ONE:
        return await conn.fetchrow(request.sql, *request.args)
    if kind == ALL:
        return await conn.fetch(request.sql, *request.args)
    if kind == VALUE:
        return await conn.fetchval(request.sql, *request.args)
    if kind == EXEC:
        return _count(await conn.execute(request.sql, *request.args))
    raise ValueError(f"unknown request kind {kind!r}")


class PostgresEngine:
    name = "postgres"

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._ping_conn: Any = None  # readiness has a connection of its own (see `ping`)
        self._ping_lock: asyncio.Lock | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Store.open() has not been called")
        return self._pool

    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=self.min_size, max_size=self.max_size, timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
            )
        except _UNAVAILABLE as exc:
            raise Unavailable(f"postgres: {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        await self._drop_ping()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def run(self, request: Request) -> Any:
        try:
            async with self.pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn:
                return await _run(conn, request)
        except asyncpg.exceptions.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from None
        except _UNAVAILABLE as exc:
            raise Unavailable(f"postgres: {type(exc).__name__}") from None

    async def transact(self, work: Work) -> Any:
        try:
            async with self.pool.acquire(timeout=CONNECT_TIMEOUT_S) as conn, conn.transaction():
                try:
                    request = next(work)
                    while True:
                        request = work.send(await _run(conn, request))
                except StopIteration as stop:
                    return stop.value
                finally:
                    work.close()
        except asyncpg.exceptions.IntegrityConstraintViolationError as exc:
            raise IntegrityError(str(exc)) from None
        except _UNAVAILABLE as exc:
            raise Unavailable(f"postgres: {type(exc).__name__}") from None

    async def ping(self) -> None:
        """Readiness: `SELECT 1` on a connection outside the pool, so that a pool queue (a reconnect storm's
        membership checks) never makes a reachable database look down; reconnected after a failure."""
        if self._ping_lock is None:
            self._ping_lock = asyncio.Lock()
        async with self._ping_lock:
            try:
                if self._ping_conn is None or self._ping_conn.is_closed():
                    self._ping_conn = await asyncpg.connect(self.dsn, timeout=CONNECT_TIMEOUT_S)
                await self._ping_conn.fetchval("SELECT 1", timeout=PING_TIMEOUT_S)
            except (*_UNAVAILABLE, asyncpg.exceptions.PostgresError) as exc:
                await self._drop_ping()
                raise Unavailable(f"postgres: {type(exc).__name__}") from None

    async def _drop_ping(self) -> None:
        conn, self._ping_conn = self._ping_conn, None
        if conn is not None:
            conn.terminate()

    async def migrate(self) -> list[int]:
        steps = migrations.load(self.name)
        applied: list[int] = []
        async with self.pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at BIGINT NOT NULL)"
            )
            for version, name, script in steps:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                    done = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                    if done > len(steps):
                        raise RuntimeError(f"database has schema {done}, newer than {len(steps)}")
                    if version <= done:
                        continue
                    await conn.execute(script)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                        version, name, int(time.time() * 1000),
                    )
                    applied.append(version)
            done = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
            if done > len(steps):
                raise RuntimeError(f"database has schema {done}, newer than {len(steps)}")
        return applied

    async def schema_version(self) -> int:
        return int(await self.run(Request(VALUE, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", ())) or 0)
