"""Units of work: one transaction written once, run by either engine.

A unit of work is a generator that yields SQL requests and receives their results:

    def rename(project_id, name):
        row = yield one("UPDATE projects SET name = $2 WHERE id = $1 RETURNING *", project_id, name)
        return dict(row) if row else None

`await store.transact(rename("apollo", "Apollo 11"))` runs it in one transaction: the SQLite engine drives it
synchronously in its database thread (`BEGIN IMMEDIATE` … `COMMIT`), the PostgreSQL engine awaits each request on
one pooled connection inside `conn.transaction()`. Any exception rolls the whole transaction back; a unit of work cannot catch a failed request (it ends there). SQL uses
PostgreSQL's `$1` placeholders; the SQLite engine rewrites them to `?1`. Constraint violations of either engine
arrive as `IntegrityError`, a lost connection or an unreachable server as `Unavailable`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator
from typing import Any

ONE = "one"  # the first row, or None
ALL = "all"  # every row
VALUE = "value"  # the first column of the first row, or None
EXEC = "exec"  # no result; returns the number of rows changed


class IntegrityError(Exception):
    """A unique, foreign-key or check constraint refused the statement."""


class Unavailable(Exception):
    """The database cannot be reached (or the connection was lost mid-request)."""


class Request:
    __slots__ = ("kind", "sql", "args")

    def __init__(self, kind: str, sql: str, args: tuple[Any, ...]) -> None:
        self.kind = kind
        self.sql = sql
        self.args = args

    def __repr__(self) -> str:
        return f"Request({self.kind}, {self.sql[:60]!r})"


def one(sql: str, *args: Any) -> Request:
    return Request(ONE, sql, args)


def all_rows(sql: str, *args: Any) -> Request:
    return Request(ALL, sql, args)


def value(sql: str, *args: Any) -> Request:
    return Request(VALUE, sql, args)


def execute(sql: str, *args: Any) -> Request:
    return Request(EXEC, sql, args)


Work = Generator[Request, Any, Any]

_PLACEHOLDER = re.compile(r"\$(\d+)")
_sqlite_cache: dict[str, str] = {}


def sqlite_sql(sql: str) -> str:
    """`$1` → `?1` (SQLite's numbered parameters), cached."""
    converted = _sqlite_cache.get(sql)
    if converted is None:
        converted = _sqlite_cache[sql] = _PLACEHOLDER.sub(r"?\1", sql)
    return converted


def drive(work: Work, run: Callable[[Request], Any]) -> Any:
    """Run a unit of work synchronously: each yielded request goes to `run`, its result is sent back."""
    try:
        request = next(work)
        while True:
            request = work.send(run(request))
    except StopIteration as stop:
        return stop.value
    finally:
        work.close()  # a failed request ends the unit of work: it never sees engine errors (PostgreSQL aborts the
        # transaction after one, SQLite would not; not letting it catch them keeps both engines alike)
