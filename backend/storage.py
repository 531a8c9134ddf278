"""SQLite storage for users, projects, memberships, stories and escalations.

Build `Store(path)` (a file path or ":memory:"), call `open()` once (it creates the schema if missing),
then use the read and write methods below; `close()` at shutdown. Every method is synchronous and
thread-safe: one connection guarded by a lock. Writes that must reach subscribers go through
`backend.changes`, which calls the write methods here and then publishes the matching event.

Shapes returned (the REST and event payloads of docs/protocol.md):
- user `{id, name, projects: [project ids]}`
- project `{id, name, description, updatedAt, counts: {todo, in_progress, review, done, blocked, openEscalations}}`
- story `{id, projectId, title, status, assignee, updatedAt}`
- escalation `{id, projectId, title, status, createdBy, createdAt, resolvedAt}`

User ids are usernames ("alice"), project ids are slugs ("apollo"), story and escalation ids are
integers, and every time is epoch milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .auth import hash_password, verify_password

STORY_STATUSES: tuple[str, ...] = ("todo", "in_progress", "review", "done", "blocked")
ESCALATION_STATUSES: tuple[str, ...] = ("open", "resolved")
SCHEMA_VERSION = 1
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
USER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")



@functools.cache
def _dummy_hash() -> str:
    """A valid hash nobody's password matches: checking it costs as much as a real check, so an
    unknown username takes as long to refuse as a wrong password."""
    return hash_password(secrets.token_urlsafe(16))

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS users (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS projects (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    updated_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS memberships (
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    PRIMARY KEY (user_id, project_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stories (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    title      TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in STORY_STATUSES)})),
    assignee   TEXT,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS stories_by_project ON stories(project_id, status);
CREATE TABLE IF NOT EXISTS escalations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id  TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    title       TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    created_by  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    resolved_at INTEGER,
    CHECK ((status = 'resolved') = (resolved_at IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS escalations_by_project ON escalations(project_id, status);
"""


class NotFound(LookupError):
    """The story, escalation, project or user does not exist."""


def now_ms() -> int:
    return int(time.time() * 1000)


def _story(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "projectId": row["project_id"],
        "title": row["title"],
        "status": row["status"],
        "assignee": row["assignee"],
        "updatedAt": row["updated_at"],
    }


def _escalation(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "projectId": row["project_id"],
        "title": row["title"],
        "status": row["status"],
        "createdBy": row["created_by"],
        "createdAt": row["created_at"],
        "resolvedAt": row["resolved_at"],
    }


def _empty_counts() -> dict[str, int]:
    counts = {status: 0 for status in STORY_STATUSES}
    counts["openEscalations"] = 0
    return counts


class Store:
    """One SQLite connection (WAL for files, foreign keys on) behind a lock. Call `open()` first."""

    def __init__(self, path: str, *, clock: Callable[[], int] = now_ms) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def open(self) -> None:
        """Connect and create the schema if missing. Idempotent."""
        with self._lock:
            if self._conn is not None:
                return
            in_memory = self.path == ":memory:" or self.path.startswith("file::memory:")
            if not in_memory:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 5000")
            if not in_memory:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.close()
                raise RuntimeError(f"database {self.path} has schema {version}, newer than {SCHEMA_VERSION}")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._conn = conn

    def close(self) -> None:
        """Close the connection. Idempotent; `open()` may be called again afterwards."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("Store.open() has not been called")
        return self._conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one write transaction (`BEGIN IMMEDIATE`), committed on success."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.conn.execute(sql, tuple(params)).fetchall()

    def _one(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self.conn.execute(sql, tuple(params)).fetchone()
            return row

    def is_empty(self) -> bool:
        """True when there is neither a user nor a project (then `demo.seed_if_empty` seeds)."""
        row = self._one("SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM projects)")
        return row is None or row[0] == 0

    # -- users and memberships ------------------------------------------------------------------

    def add_user(self, user_id: str, name: str, password: str | None = None, *, password_hash: str | None = None) -> dict[str, Any]:
        """Create a user from a password (hashed with scrypt here) or a ready `password_hash`."""
        if not USER_ID_RE.match(user_id):
            raise ValueError(f"invalid user id: {user_id!r}")
        if (password is None) == (password_hash is None):
            raise ValueError("give exactly one of password and password_hash")
        stored = password_hash if password_hash is not None else hash_password(password or "")
        try:
            with self._tx() as conn:
                conn.execute("INSERT INTO users (id, name, password_hash) VALUES (?, ?, ?)", (user_id, name, stored))
        except sqlite3.IntegrityError:
            raise ValueError(f"user {user_id!r} already exists") from None
        user = self.user(user_id)
        assert user is not None
        return user

    def authenticate(self, username: str, password: str) -> dict[str, Any] | None:
        """The user for a correct username and password, else None. Costs one scrypt either way,
        so run it off the event loop (`run_in_threadpool`)."""
        row = self._one("SELECT password_hash FROM users WHERE id = ?", (username,))
        stored = row["password_hash"] if row is not None else _dummy_hash()
        ok = verify_password(password, stored)  # outside the lock: scrypt is slow
        if row is None or not ok:
            return None
        return self.user(username)

    def user(self, user_id: str) -> dict[str, Any] | None:
        row = self._one("SELECT id, name FROM users WHERE id = ?", (user_id,))
        if row is None:
            return None
        return {"id": row["id"], "name": row["name"], "projects": self.project_ids_for(user_id)}

    def has_user(self, user_id: str) -> bool:
        return self._one("SELECT 1 FROM users WHERE id = ?", (user_id,)) is not None

    def add_member(self, user_id: str, project_id: str) -> None:
        """Make `user_id` a member of `project_id` (idempotent). Raises `NotFound` for unknown ids."""
        with self._lock:
            try:
                with self._tx() as conn:
                    conn.execute(
                        "INSERT OR IGNORE INTO memberships (user_id, project_id) VALUES (?, ?)", (user_id, project_id)
                    )
            except sqlite3.IntegrityError:
                raise NotFound(f"unknown user {user_id!r} or project {project_id!r}") from None

    def remove_member(self, user_id: str, project_id: str) -> bool:
        """End a membership; True when there was one."""
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM memberships WHERE user_id = ? AND project_id = ?", (user_id, project_id))
            return cur.rowcount > 0

    def is_member(self, user_id: str, project_id: str) -> bool:
        """One primary-key lookup; called on every REST request and WebSocket subscribe."""
        if not isinstance(user_id, str) or not isinstance(project_id, str):
            return False
        return self._one(
            "SELECT 1 FROM memberships WHERE user_id = ? AND project_id = ?", (user_id, project_id)
        ) is not None

    def project_ids_for(self, user_id: str) -> list[str]:
        rows = self._query("SELECT project_id FROM memberships WHERE user_id = ? ORDER BY project_id", (user_id,))
        return [row[0] for row in rows]

    # -- projects -------------------------------------------------------------------------------

    def add_project(self, project_id: str, name: str, description: str = "") -> dict[str, Any]:
        if not SLUG_RE.match(project_id):
            raise ValueError(f"invalid project id (a short lower-case slug): {project_id!r}")
        try:
            with self._tx() as conn:
                conn.execute(
                    "INSERT INTO projects (id, name, description, updated_at) VALUES (?, ?, ?, ?)",
                    (project_id, name, description, self._clock()),
                )
        except sqlite3.IntegrityError:
            raise ValueError(f"project {project_id!r} already exists") from None
        project = self.get_project(project_id)
        assert project is not None
        return project

    def update_project(self, project_id: str, *, name: str | None = None, description: str | None = None) -> dict[str, Any]:
        """Change the name and/or description and bump `updatedAt`. Raises `NotFound`."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE projects SET name = COALESCE(?, name), description = COALESCE(?, description), updated_at = ?"
                " WHERE id = ?",
                (name, description, self._clock(), project_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"unknown project {project_id!r}")
        project = self.get_project(project_id)
        assert project is not None
        return project

    def _projects(self, where: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        with self._lock:
            rows = self.conn.execute(
                f"SELECT id, name, description, updated_at FROM projects WHERE {where} ORDER BY id", params
            ).fetchall()
            ids = [row["id"] for row in rows]
            counts = {pid: _empty_counts() for pid in ids}
            if ids:
                marks = ",".join("?" * len(ids))
                for pid, status, n in self.conn.execute(
                    f"SELECT project_id, status, COUNT(*) FROM stories WHERE project_id IN ({marks})"
                    " GROUP BY project_id, status",
                    ids,
                ):
                    counts[pid][status] = n
                for pid, n in self.conn.execute(
                    f"SELECT project_id, COUNT(*) FROM escalations WHERE status = 'open' AND project_id IN ({marks})"
                    " GROUP BY project_id",
                    ids,
                ):
                    counts[pid]["openEscalations"] = n
        return [
            {
                "id": row["id"],
                "name": row["name"],
                "description": row["description"],
                "updatedAt": row["updated_at"],
                "counts": counts[row["id"]],
            }
            for row in rows
        ]

    def list_projects(self, user_id: str) -> list[dict[str, Any]]:
        """The projects `user_id` is a member of, by id."""
        return self._projects("id IN (SELECT project_id FROM memberships WHERE user_id = ?)", (user_id,))

    def all_project_ids(self) -> list[str]:
        return [row[0] for row in self._query("SELECT id FROM projects ORDER BY id")]

    def get_project(self, project_id: str) -> dict[str, Any] | None:
        found = self._projects("id = ?", (project_id,))
        return found[0] if found else None

    def _touch_project(self, project_id: str, at: int) -> None:
        self.conn.execute("UPDATE projects SET updated_at = ? WHERE id = ?", (at, project_id))

    # -- stories --------------------------------------------------------------------------------

    def list_stories(self, project_id: str) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM stories WHERE project_id = ? ORDER BY id", (project_id,))
        return [_story(row) for row in rows]

    def get_story(self, story_id: int) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM stories WHERE id = ?", (story_id,))
        return _story(row) if row is not None else None

    def create_story(
        self, project_id: str, title: str, *, status: str = "todo", assignee: str | None = None
    ) -> dict[str, Any]:
        """Insert a story and bump the project's `updatedAt`. Raises `NotFound` or `ValueError`."""
        if status not in STORY_STATUSES:
            raise ValueError(f"unknown story status: {status!r}")
        at = self._clock()
        with self._lock:
            try:
                with self._tx() as conn:
                    row = conn.execute(
                        "INSERT INTO stories (project_id, title, status, assignee, updated_at)"
                        " VALUES (?, ?, ?, ?, ?) RETURNING *",
                        (project_id, title, status, assignee, at),
                    ).fetchone()
                    self._touch_project(project_id, at)
            except sqlite3.IntegrityError:
                raise NotFound(f"unknown project {project_id!r}") from None
        return _story(row)

    def update_story_status(self, story_id: int, status: str) -> tuple[str, dict[str, Any]]:
        """Set a story's status; return `(old_status, story)`. Setting the current status again
        changes nothing (not even `updatedAt`). Raises `NotFound` or `ValueError`."""
        if status not in STORY_STATUSES:
            raise ValueError(f"unknown story status: {status!r}")
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM stories WHERE id = ?", (story_id,)).fetchone()
            if row is None:
                raise NotFound(f"unknown story {story_id!r}")
            old = row["status"]
            if old == status:
                return old, _story(row)
            at = self._clock()
            row = conn.execute(
                "UPDATE stories SET status = ?, updated_at = ? WHERE id = ? RETURNING *", (status, at, story_id)
            ).fetchone()
            self._touch_project(row["project_id"], at)
        return old, _story(row)

    # -- escalations ----------------------------------------------------------------------------

    def list_escalations(self, project_id: str) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM escalations WHERE project_id = ? ORDER BY id", (project_id,))
        return [_escalation(row) for row in rows]

    def get_escalation(self, escalation_id: int) -> dict[str, Any] | None:
        row = self._one("SELECT * FROM escalations WHERE id = ?", (escalation_id,))
        return _escalation(row) if row is not None else None

    def create_escalation(self, project_id: str, title: str, created_by: str) -> dict[str, Any]:
        """Insert an open escalation and bump the project's `updatedAt`. Raises `NotFound`."""
        at = self._clock()
        with self._lock:
            try:
                with self._tx() as conn:
                    row = conn.execute(
                        "INSERT INTO escalations (project_id, title, status, created_by, created_at)"
                        " VALUES (?, ?, 'open', ?, ?) RETURNING *",
                        (project_id, title, created_by, at),
                    ).fetchone()
                    self._touch_project(project_id, at)
            except sqlite3.IntegrityError:
                raise NotFound(f"unknown project {project_id!r}") from None
        return _escalation(row)

    def resolve_escalation(self, escalation_id: int) -> tuple[str, dict[str, Any]]:
        """Resolve an escalation; return `(old_status, escalation)`. Resolving a resolved one changes
        nothing. Raises `NotFound`."""
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM escalations WHERE id = ?", (escalation_id,)).fetchone()
            if row is None:
                raise NotFound(f"unknown escalation {escalation_id!r}")
            old = row["status"]
            if old == "resolved":
                return old, _escalation(row)
            at = self._clock()
            row = conn.execute(
                "UPDATE escalations SET status = 'resolved', resolved_at = ? WHERE id = ? RETURNING *",
                (at, escalation_id),
            ).fetchone()
            self._touch_project(row["project_id"], at)
        return old, _escalation(row)
