"""The store: one async interface (`Store`), two engines.

Call `open_store(settings)` (or `engine_for(url)`) to build it from `DASHBOARD_DATABASE_URL`:
- `sqlite:///var/dashboard.db` (the default, embedded; `sqlite:///:memory:` for throw-away runs): `SqliteEngine`,
  one connection in one dedicated thread;
- `postgresql://user:pass@host:port/db`: `PostgresEngine`, an asyncpg pool.
Then `await store.open()` (connects, applies migrations), the methods of `Store`, and `await store.close()`.
Changes that must reach subscribers are units of work in `backend.changes` (rows + outbox in one transaction).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .rows import ESCALATION_STATUSES, STORY_STATUSES
from .sql import IntegrityError, Unavailable
from .store import MAX_ID, NotFound, OutboxRow, Store, now_ms

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "ESCALATION_STATUSES", "MAX_ID", "STORY_STATUSES", "IntegrityError", "NotFound", "OutboxRow", "Store",
    "Unavailable", "engine_for", "now_ms", "open_store", "sqlite_path",
]


def sqlite_path(url: str) -> str | None:
    """The file path of a `sqlite:///…` URL (`:memory:` kept as is), or None for another scheme."""
    if not url.lower().startswith("sqlite://"):
        return None
    rest = url[len("sqlite://"):]
    if not rest.startswith("/"):
        raise ValueError("a SQLite URL has three slashes: sqlite:///relative/path or sqlite:////absolute/path")
    path = rest[1:]
    if not path:
        raise ValueError("the SQLite URL names no file")
    return path


def engine_for(url: str, **options: Any) -> Any:
    """The engine for a database URL (`sqlite:///…`, `postgresql://…`)."""
    path = sqlite_path(url)
    if path is not None:
        from .sqlite import SqliteEngine

        return SqliteEngine(path)
    scheme = url.partition("://")[0].lower()
    if scheme in ("postgresql", "postgres"):
        from .postgres import PostgresEngine  # lazy: asyncpg is only imported when used

        return PostgresEngine(url, **options)
    raise ValueError(f"unsupported database URL scheme: {scheme!r} (use sqlite:/// or postgresql://)")


def open_store(settings: Settings, **options: Any) -> Store:
    """The store named by `settings.database_url` (not yet opened: `await store.open()`)."""
    return Store(engine_for(settings.resolved_database_url, **options))
