"""`SqliteEngine`: the embedded default (`sqlite:///var/dashboard.db`), one connection in one dedicated thread.

Every request and every unit of work runs in that thread, one at a time, so nothing blocks the event loop and
writes never interleave (`BEGIN IMMEDIATE` … `COMMIT` around each unit of work). Files use WAL; `:memory:` is for
tests. Used through `backend.store.Store`; `open()` applies the migrations.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import migrations
from .sql import ALL, EXEC, ONE, VALUE, IntegrityError, Request, Unavailable, Work, drive, sqlite_sql

BUSY_TIMEOUT_MS = 5000


def _run(conn: sqlite3.Connection, request: Request) -> Any:
    try:
        cursor = conn.execute(sqlite_sql(request.sql), request.args)
    except sqlite3.IntegrityError as exc:
        raise IntegrityError(str(exc)) from None
    except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk I/O
        raise Unavailable(f"sqlite: {exc}") from None
    kind = request.kind
    if kind == ONE:
        return cursor.fetchone()
    if kind == ALL:
        return cursor.fetchall()
    if kind == VALUE:
        row = cursor.fetchone()
        return None if row is None else row[0]
    if kind == EXEC:
        return cursor.rowcount
    raise ValueError(f"unknown request kind {kind!r}")


class SqliteEngine:
    name = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def in_memory(self) -> bool:
        return self.path == ":memory:" or self.path.startswith("file::memory:")

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise RuntimeError("Store.open() has not been called")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        try:
            await self._call(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _open(self) -> None:
        if not self.in_memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if not self.in_memory:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
        self._conn = conn

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, self._close)
        executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        """The raw connection (tests only; use it from the engine thread or while nothing else runs)."""
        if self._conn is None:
            raise RuntimeError("Store.open() has not been called")
        return self._conn

    # -- requests -------------------------------------------------------------------------------

    async def run(self, request: Request) -> Any:
        return await self._call(_run_checked, self, request)

    async def transact(self, work: Work) -> Any:
        return await self._call(self._transact, work)

    def _transact(self, work: Work) -> Any:
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            work.close()
            raise Unavailable(f"sqlite: {exc}") from None
        try:
            result = drive(work, lambda request: _run(conn, request))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def ping(self) -> None:
        await self.run(Request(VALUE, "SELECT 1", ()))

    # -- migrations -----------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        return list(await self._call(self._migrate))

    def _migrate(self) -> list[int]:
        conn = self.conn
        steps = migrations.load(self.name)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at INTEGER NOT NULL)"
        )
        applied: list[int] = []
        for version, name, script in steps:
            conn.execute("BEGIN IMMEDIATE")
            try:
                done = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0
                if done > len(steps):
                    raise RuntimeError(f"database {self.path} has schema {done}, newer than {len(steps)}")
                if version <= done:
                    conn.execute("ROLLBACK")
                    continue
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (version, name, int(time.time() * 1000)),
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            applied.append(version)
        done = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0
        if done > len(steps):
            raise RuntimeError(f"database {self.path} has schema {done}, newer than {len(steps)}")
        conn.execute(f"PRAGMA user_version = {done}")
        return applied

    async def schema_version(self) -> int:
        return int(await self.run(Request(VALUE, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", ())) or 0)


def _run_checked(engine: SqliteEngine, request: Request) -> Any:
    return _run(engine.conn, request)


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (`sqlite3.complete_statement` knows about strings and triggers)."""
    statements: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements
