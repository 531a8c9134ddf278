"""SQL of the domain, as unit-of-work steps (`yield from rows.get_story(7)`), and the JSON shapes of rows.

Shapes (the REST and event payloads of docs/protocol.md):
- user `{id, name, projects: [project ids]}`
- project `{id, name, description, updatedAt, counts: {todo, in_progress, review, done, blocked, openEscalations}}`
- story `{id, projectId, title, status, assignee, updatedAt}`
- escalation `{id, projectId, title, status, createdBy, createdAt, resolvedAt}`

`backend.store.Store` runs these for reads and plain writes; `backend.changes` composes them with the outbox in one
transaction. Every statement is valid for both engines (`$1` placeholders, `RETURNING`, no engine-only functions).
"""

from __future__ import annotations

from typing import Any

from .sql import Work, all_rows, execute, one, value

STORY_STATUSES: tuple[str, ...] = ("todo", "in_progress", "review", "done", "blocked")
ESCALATION_STATUSES: tuple[str, ...] = ("open", "resolved")

_COUNTS = ", ".join(
    [f"(SELECT COUNT(*) FROM stories s WHERE s.project_id = p.id AND s.status = '{s}') AS c_{s}" for s in STORY_STATUSES]
    + ["(SELECT COUNT(*) FROM escalations e WHERE e.project_id = p.id AND e.status = 'open') AS c_open"]
)
PROJECT_SELECT = f"SELECT p.id, p.name, p.description, p.updated_at, {_COUNTS} FROM projects p"


def story(row: Any) -> dict[str, Any]:
    return {
        "id": int(row["id"]),
        "projectId": row["project_id"],
        "title": row["title"],
        "status": row["status"],
        "assignee": row["assignee"],
        "updatedAt": int(row["updated_at"]),
    }


def escalation(row: Any) -> dict[str, Any]:
    resolved = row["resolved_at"]
    return {
        "id": int(row["id"]),
        "projectId": row["project_id"],
        "title": row["title"],
        "status": row["status"],
        "createdBy": row["created_by"],
        "createdAt": int(row["created_at"]),
        "resolvedAt": None if resolved is None else int(resolved),
    }


def project(row: Any) -> dict[str, Any]:
    counts = {s: int(row[f"c_{s}"]) for s in STORY_STATUSES}
    counts["openEscalations"] = int(row["c_open"])
    return {
        "id": row["id"],
        "name": row["name"],
        "description": row["description"],
        "updatedAt": int(row["updated_at"]),
        "counts": counts,
    }


# -- projects -------------------------------------------------------------------------------------


def get_project(project_id: str) -> Work:
    row = yield one(PROJECT_SELECT + " WHERE p.id = $1", project_id)
    return project(row) if row is not None else None


def lock_project(project_id: str, at: int, events: int) -> Work:
    """Bump `updated_at` and reserve `events` outbox numbers; returns the first, or None for an unknown project.
    The row stays locked until commit, so the changes of one project (and their outbox numbers) are ordered."""
    last = yield value(
        "UPDATE projects SET updated_at = $2, outbox_seq = outbox_seq + $3 WHERE id = $1 RETURNING outbox_seq",
        project_id, at, events,
    )
    return None if last is None else int(last) - events + 1


# -- stories --------------------------------------------------------------------------------------


def get_story(story_id: int) -> Work:
    row = yield one("SELECT * FROM stories WHERE id = $1", story_id)
    return story(row) if row is not None else None


def insert_story(project_id: str, title: str, status: str, assignee: str | None, at: int) -> Work:
    row = yield one(
        "INSERT INTO stories (project_id, title, status, assignee, updated_at) VALUES ($1, $2, $3, $4, $5) RETURNING *",
        project_id, title, status, assignee, at,
    )
    return story(row)


def set_story_status(story_id: int, status: str, at: int) -> Work:
    row = yield one("UPDATE stories SET status = $2, updated_at = $3 WHERE id = $1 RETURNING *", story_id, status, at)
    return story(row) if row is not None else None


# -- escalations ----------------------------------------------------------------------------------


def get_escalation(escalation_id: int) -> Work:
    row = yield one("SELECT * FROM escalations WHERE id = $1", escalation_id)
    return escalation(row) if row is not None else None


def insert_escalation(project_id: str, title: str, created_by: str, at: int) -> Work:
    row = yield one(
        "INSERT INTO escalations (project_id, title, status, created_by, created_at) VALUES ($1, $2, 'open', $3, $4)"
        " RETURNING *",
        project_id, title, created_by, at,
    )
    return escalation(row)


def resolve_escalation(escalation_id: int, at: int) -> Work:
    row = yield one(
        "UPDATE escalations SET status = 'resolved', resolved_at = $2 WHERE id = $1 AND status = 'open' RETURNING *",
        escalation_id, at,
    )
    return escalation(row) if row is not None else None


# -- outbox ---------------------------------------------------------------------------------------


def append_outbox(project_id: str, pseq: int, event_type: str, data_json: str, at: int) -> Work:
    outbox_id = yield value(
        "INSERT INTO outbox (project_id, pseq, event_type, data, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        project_id, pseq, event_type, data_json, at,
    )
    return int(outbox_id)


def project_ids() -> Work:
    rows = yield all_rows("SELECT id FROM projects ORDER BY id")
    return [row[0] for row in rows]


def touch(sql: str, *args: Any) -> Work:
    changed = yield execute(sql, *args)
    return int(changed)
