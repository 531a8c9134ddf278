"""`Store`: every read and plain write of the dashboard's data, async, on either engine.

Build it with `open_store(settings)` (or `Store(engine)`), `await store.open()` (connects and applies the
migrations), use the methods below, `await store.close()` at shutdown. Changes that subscribers must see go through
`backend.changes` (row + outbox events in one transaction); the methods here that write (`add_user`,
`add_project`, `seed_story`…) are for seeding and administration and publish nothing.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from ..auth import hash_password, verify_password
from . import rows
from .sql import IntegrityError, Request, Work, all_rows, execute, one, value

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
USER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_ID = 2**63 - 1  # the largest id either engine stores (SQLite INTEGER, PostgreSQL BIGINT)


class NotFound(LookupError):
    """The story, escalation, project or user does not exist."""


def now_ms() -> int:
    return int(time.time() * 1000)


@functools.cache
def _dummy_hash() -> str:
    """A valid hash nobody's password matches: checking it costs as much as a real check, so an unknown username
    takes as long to refuse as a wrong password."""
    return hash_password(secrets.token_urlsafe(16))


class OutboxRow:
    """One event waiting in (or published from) the outbox."""

    __slots__ = ("id", "project_id", "pseq", "event_type", "data", "created_at")

    def __init__(self, id: int, project_id: str, pseq: int, event_type: str, data: dict[str, Any], created_at: int) -> None:
        self.id = id
        self.project_id = project_id
        self.pseq = pseq
        self.event_type = event_type
        self.data = data
        self.created_at = created_at

    @classmethod
    def from_row(cls, row: Any) -> OutboxRow:
        return cls(int(row["id"]), row["project_id"], int(row["pseq"]), row["event_type"], json.loads(row["data"]),
                   int(row["created_at"]))

    def __repr__(self) -> str:
        return f"OutboxRow({self.project_id}#{self.pseq} {self.event_type})"


def _valid_id(value_: object) -> bool:
    return isinstance(value_, int) and not isinstance(value_, bool) and 0 < value_ <= MAX_ID


class Store:
    """The async store over one engine (`SqliteEngine` or `PostgresEngine`). `clock()` gives epoch ms."""

    def __init__(self, engine: Any, *, clock: Callable[[], int] = now_ms) -> None:
        self.engine = engine
        self.clock = clock

    @property
    def kind(self) -> str:
        """`sqlite` or `postgres`."""
        return str(self.engine.name)

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        """Connect and (by default) apply missing migrations. Idempotent."""
        await self.engine.open()
        if migrate:
            await self.engine.migrate()

    async def migrate(self) -> list[int]:
        """Apply the missing migrations; returns the versions applied (empty when up to date)."""
        return list(await self.engine.migrate())

    async def schema_version(self) -> int:
        return int(await self.engine.schema_version())

    async def close(self) -> None:
        await self.engine.close()

    async def ping(self) -> None:
        """Raise `Unavailable` unless the database answers."""
        await self.engine.ping()

    async def transact(self, work: Work) -> Any:
        """Run a unit of work (`backend.store.sql`) in one transaction."""
        return await self.engine.transact(work)

    async def _run(self, request: Request) -> Any:
        return await self.engine.run(request)

    async def _read(self, work: Work) -> Any:
        """A read-only unit of work of one request, without a write transaction."""
        request = next(work)
        try:
            work.send(await self.engine.run(request))
        except StopIteration as stop:
            return stop.value
        raise RuntimeError("a read helper must make exactly one request")

    async def is_empty(self) -> bool:
        """True when there is neither a user nor a project (then `demo.seed_if_empty` seeds)."""
        count = await self._run(value("SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM projects)"))
        return not count

    # -- users and memberships ------------------------------------------------------------------

    async def add_user(self, user_id: str, name: str, password: str | None = None, *, password_hash: str | None = None) -> dict[str, Any]:
        """Create a user from a password (hashed with scrypt, off the loop) or a ready `password_hash`."""
        if not USER_ID_RE.match(user_id):
            raise ValueError(f"invalid user id: {user_id!r}")
        if (password is None) == (password_hash is None):
            raise ValueError("give exactly one of password and password_hash")
        stored = password_hash if password_hash is not None else await asyncio.to_thread(hash_password, password or "")
        try:
            await self._run(execute("INSERT INTO users (id, name, password_hash) VALUES ($1, $2, $3)", user_id, name, stored))
        except IntegrityError:
            raise ValueError(f"user {user_id!r} already exists") from None
        user = await self.user(user_id)
        assert user is not None
        return user

    async def password_hash(self, user_id: str) -> str | None:
        return await self._run(value("SELECT password_hash FROM users WHERE id = $1", user_id))  # type: ignore[no-any-return]

    async def authenticate(self, username: str, password: str) -> dict[str, Any] | None:
        """The user for a correct username and password, else None. One scrypt either way, in a worker thread
        (callers that bound concurrent checks use `password_hash` + `auth.verify_password` themselves)."""
        stored = await self.password_hash(username)
        ok = await asyncio.to_thread(verify_password, password, stored if stored is not None else _dummy_hash())
        if stored is None or not ok:
            return None
        return await self.user(username)

    async def user(self, user_id: str) -> dict[str, Any] | None:
        if not isinstance(user_id, str):
            return None
        row = await self._run(one("SELECT id, name FROM users WHERE id = $1", user_id))
        if row is None:
            return None
        return {"id": row["id"], "name": row["name"], "projects": await self.project_ids_for(user_id)}

    async def has_user(self, user_id: str) -> bool:
        return await self._run(value("SELECT 1 FROM users WHERE id = $1", user_id)) is not None

    async def add_member(self, user_id: str, project_id: str) -> None:
        """Make `user_id` a member of `project_id` (idempotent). Raises `NotFound` for unknown ids."""
        try:
            await self._run(execute(
                "INSERT INTO memberships (user_id, project_id) VALUES ($1, $2) ON CONFLICT DO NOTHING", user_id, project_id
            ))
        except IntegrityError:
            raise NotFound(f"unknown user {user_id!r} or project {project_id!r}") from None

    async def remove_member(self, user_id: str, project_id: str) -> bool:
        """End a membership; True when there was one."""
        changed = await self._run(execute("DELETE FROM memberships WHERE user_id = $1 AND project_id = $2", user_id, project_id))
        return bool(changed)

    async def is_member(self, user_id: str, project_id: str) -> bool:
        """One primary-key lookup; called on every REST request and WebSocket subscribe."""
        if not isinstance(user_id, str) or not isinstance(project_id, str):
            return False
        found = await self._run(value("SELECT 1 FROM memberships WHERE user_id = $1 AND project_id = $2", user_id, project_id))
        return found is not None

    async def project_ids_for(self, user_id: str) -> list[str]:
        found = await self._run(all_rows("SELECT project_id FROM memberships WHERE user_id = $1 ORDER BY project_id", user_id))
        return [row[0] for row in found]

    # -- projects -------------------------------------------------------------------------------

    async def add_project(self, project_id: str, name: str, description: str = "") -> dict[str, Any]:
        if not SLUG_RE.match(project_id):
            raise ValueError(f"invalid project id (a short lower-case slug): {project_id!r}")
        try:
            await self._run(execute(
                "INSERT INTO projects (id, name, description, updated_at) VALUES ($1, $2, $3, $4)",
                project_id, name, description, self.clock(),
            ))
        except IntegrityError:
            raise ValueError(f"project {project_id!r} already exists") from None
        project = await self.get_project(project_id)
        assert project is not None
        return project

    async def list_projects(self, user_id: str) -> list[dict[str, Any]]:
        """The projects `user_id` is a member of, by id."""
        found = await self._run(all_rows(
            rows.PROJECT_SELECT + " WHERE p.id IN (SELECT project_id FROM memberships WHERE user_id = $1) ORDER BY p.id",
            user_id,
        ))
        return [rows.project(row) for row in found]

    async def all_project_ids(self) -> list[str]:
        return list(await self._read(rows.project_ids()))

    async def get_project(self, project_id: str) -> dict[str, Any] | None:
        return await self._read(rows.get_project(project_id))  # type: ignore[no-any-return]

    # -- stories and escalations ----------------------------------------------------------------

    async def list_stories(self, project_id: str) -> list[dict[str, Any]]:
        found = await self._run(all_rows("SELECT * FROM stories WHERE project_id = $1 ORDER BY id", project_id))
        return [rows.story(row) for row in found]

    async def get_story(self, story_id: int) -> dict[str, Any] | None:
        if not _valid_id(story_id):
            return None
        return await self._read(rows.get_story(story_id))  # type: ignore[no-any-return]

    async def list_escalations(self, project_id: str) -> list[dict[str, Any]]:
        found = await self._run(all_rows("SELECT * FROM escalations WHERE project_id = $1 ORDER BY id", project_id))
        return [rows.escalation(row) for row in found]

    async def get_escalation(self, escalation_id: int) -> dict[str, Any] | None:
        if not _valid_id(escalation_id):
            return None
        return await self._read(rows.get_escalation(escalation_id))  # type: ignore[no-any-return]

    async def seed_story(self, project_id: str, title: str, *, status: str = "todo", assignee: str | None = None) -> dict[str, Any]:
        """Insert a story without publishing anything (seeding). Raises `NotFound` or `ValueError`."""
        if status not in rows.STORY_STATUSES:
            raise ValueError(f"unknown story status: {status!r}")
        at = self.clock()

        def work() -> Work:
            if (yield from rows.touch("UPDATE projects SET updated_at = $2 WHERE id = $1", project_id, at)) == 0:
                raise NotFound(f"unknown project {project_id!r}")
            return (yield from rows.insert_story(project_id, title, status, assignee, at))

        return await self.transact(work())  # type: ignore[no-any-return]

    async def seed_escalation(self, project_id: str, title: str, created_by: str, *, resolved: bool = False) -> dict[str, Any]:
        """Insert an escalation (open, or already resolved) without publishing anything (seeding)."""
        at = self.clock()

        def work() -> Work:
            if (yield from rows.touch("UPDATE projects SET updated_at = $2 WHERE id = $1", project_id, at)) == 0:
                raise NotFound(f"unknown project {project_id!r}")
            escalation = yield from rows.insert_escalation(project_id, title, created_by, at)
            if resolved:
                escalation = yield from rows.resolve_escalation(escalation["id"], at)
            return escalation

        return await self.transact(work())  # type: ignore[no-any-return]

    # -- outbox (read by the relay) -------------------------------------------------------------

    async def unsent(self, *, project_id: str | None = None, limit: int = 500) -> list[OutboxRow]:
        """Events not yet published, by project and `pseq` (one project's only, if given)."""
        if project_id is None:
            found = await self._run(all_rows(
                "SELECT * FROM outbox WHERE sent_at IS NULL ORDER BY project_id, pseq LIMIT $1", limit
            ))
        else:
            found = await self._run(all_rows(
                "SELECT * FROM outbox WHERE sent_at IS NULL AND project_id = $1 ORDER BY pseq LIMIT $2", project_id, limit
            ))
        return [OutboxRow.from_row(row) for row in found]

    async def mark_sent(self, project_id: str, up_to_pseq: int) -> int:
        """Mark every unsent event of `project_id` up to `up_to_pseq` as published; returns how many."""
        changed = await self._run(execute(
            "UPDATE outbox SET sent_at = $3 WHERE project_id = $1 AND pseq <= $2 AND sent_at IS NULL",
            project_id, up_to_pseq, self.clock(),
        ))
        return int(changed)

    async def last_sent_pseq(self, project_id: str) -> int:
        """The newest `pseq` of `project_id` already published (0 when none)."""
        row = await self._run(one(
            "SELECT p.outbox_seq, (SELECT MIN(pseq) FROM outbox o WHERE o.project_id = p.id AND o.sent_at IS NULL) AS u"
            " FROM projects p WHERE p.id = $1",
            project_id,
        ))
        if row is None:
            return 0
        return int(row["u"]) - 1 if row["u"] is not None else int(row["outbox_seq"])

    async def allocated_pseq(self, project_id: str) -> int:
        """The newest `pseq` of `project_id` committed (published or not; 0 when none)."""
        value_ = await self._run(value("SELECT outbox_seq FROM projects WHERE id = $1", project_id))
        return int(value_ or 0)

    async def outbox_backlog(self) -> tuple[int, int | None]:
        """`(unsent events, created_at of the oldest)`: what `/readyz` and the relay metrics report."""
        row = await self._run(one("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE sent_at IS NULL"))
        return int(row["n"]), None if row["oldest"] is None else int(row["oldest"])

    async def prune(self, *, sent_before: int, idempotency_before: int, sessions_before: int) -> dict[str, int]:
        """Delete published outbox rows, idempotency records and ended sessions older than the given times."""
        outbox = await self._run(execute("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1", sent_before))
        idem = await self._run(execute("DELETE FROM idempotency WHERE created_at < $1", idempotency_before))
        sessions = await self._run(execute(
            "DELETE FROM auth_sessions WHERE max_expires_at < $1 OR expires_at < $1 OR revoked_at < $1", sessions_before
        ))
        return {"outbox": int(outbox), "idempotency": int(idem), "sessions": int(sessions)}

    # -- sign-in sessions (backend.sessions) ----------------------------------------------------

    async def create_session(self, user_id: str, sid: str, refresh_hash: str, *, expires_at: int, max_expires_at: int) -> None:
        """A new sign-in session with its first refresh value (stored hashed)."""
        now = self.clock()

        def work() -> Work:
            yield execute(
                "INSERT INTO auth_sessions (id, user_id, created_at, max_expires_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
                sid, user_id, now, max_expires_at, expires_at,
            )
            yield execute("INSERT INTO refresh_tokens (hash, session_id, created_at) VALUES ($1, $2, $3)", refresh_hash, sid, now)

        await self.transact(work())

    async def rotate_refresh(self, refresh_hash: str, new_hash: str, *, refresh_ttl_ms: int) -> tuple[str, str | None, str | None]:
        """Exchange a refresh value for a new one: `(result, session id, user id)`, result one of `ok`, `invalid`
        (unknown value), `expired`, `revoked`, `reused` (an already exchanged value: the session is revoked now)."""
        now = self.clock()

        def work() -> Work:
            token = yield one("SELECT session_id, rotated_at FROM refresh_tokens WHERE hash = $1", refresh_hash)
            if token is None:
                return "invalid", None, None
            sid = token["session_id"]
            session = yield one(
                "UPDATE auth_sessions SET expires_at = expires_at WHERE id = $1"
                " RETURNING user_id, revoked_at, expires_at, max_expires_at",
                sid,
            )
            if session is None:
                return "invalid", None, None
            user_id = session["user_id"]
            if session["revoked_at"] is not None:
                return "revoked", sid, user_id
            if token["rotated_at"] is not None:  # a stolen copy, or a replay: end the whole session
                yield execute(
                    "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = 'refresh reused' WHERE id = $1", sid, now
                )
                return "reused", sid, user_id
            if now >= session["expires_at"] or now >= session["max_expires_at"]:
                return "expired", sid, user_id
            yield execute("UPDATE refresh_tokens SET rotated_at = $2 WHERE hash = $1", refresh_hash, now)
            yield execute("INSERT INTO refresh_tokens (hash, session_id, created_at) VALUES ($1, $2, $3)", new_hash, sid, now)
            expires = min(now + refresh_ttl_ms, int(session["max_expires_at"]))
            yield execute("UPDATE auth_sessions SET expires_at = $2 WHERE id = $1", sid, expires)
            return "ok", sid, user_id

        return await self.transact(work())  # type: ignore[no-any-return]

    async def revoke_session(self, sid: str, reason: str) -> bool:
        """End a session now (its refresh values and access tokens stop working); True if it was live."""
        changed = await self._run(execute(
            "UPDATE auth_sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL",
            sid, self.clock(), reason,
        ))
        return bool(changed)

    async def session_live(self, sid: str, user_id: str | None = None) -> bool | None:
        """True while the session exists and is not revoked (nor past its maximum age); None if unknown. With
        `user_id`, the session must also be that user's and the user must still exist (one query: a connection's
        whole identity check)."""
        if user_id is None:
            row = await self._run(one("SELECT revoked_at, max_expires_at FROM auth_sessions WHERE id = $1", sid))
        else:
            row = await self._run(one(
                "SELECT s.revoked_at, s.max_expires_at FROM auth_sessions s JOIN users u ON u.id = s.user_id"
                " WHERE s.id = $1 AND s.user_id = $2", sid, user_id,
            ))
        if row is None:
            return None
        return row["revoked_at"] is None and self.clock() < int(row["max_expires_at"])
