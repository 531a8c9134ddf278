"""Every change to projects, stories and escalations: one transaction holding the rows, the change's events (the
outbox) and the idempotency record; then `relay.committed(...)` publishes the events. Never waits on the bus.

The REST API (`backend.api`) and the demo activity (`backend.demo`) both call these coroutines, so a change always
produces the same events, in the same order:

| call | events (data) |
|---|---|
| `move_story` | `story.status.changed` `{storyId, from, to, story, clientMutationId?}`, then `project.updated` `{project}` |
| `create_story` | `story.created` `{story, clientMutationId?}`, then `project.updated` |
| `create_escalation` | `escalation.created` `{escalation, clientMutationId?}`, then `project.updated` |
| `resolve_escalation` | `escalation.resolved` `{escalation, clientMutationId?}`, then `project.updated` |
| `update_project` | `project.updated` `{project, clientMutationId?}` |

`project.updated` carries the project as it is after the change. A change that changes nothing (moving a story to the
status it has, resolving a resolved escalation) publishes nothing and returns the current state. A move with
`expect={"status": s}` whose story is no longer in `s` is a conflict (409, nothing changes).

Each transaction first locks its project's row, so the changes of one project, and the outbox numbers (`pseq`) of
their events, are ordered the same way on every node. With a `Mutation` (the caller's `X-Client-Mutation-Id`), the
first outcome is stored with the change; a repeat returns it (`replayed`), changes and publishes nothing, and the same
id with another request is refused (422 `idempotency_key_reused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from .logs import log_event
from .store import STORY_STATUSES, NotFound, OutboxRow, Store
from .store import rows
from .store.sql import Work, execute, one, value

MAX_TITLE_CHARS = 200
PROJECT = "project.updated"  # the event every change ends with (built after the change, with the new counts)

__all__ = [
    "MAX_TITLE_CHARS",
    "Mutation",
    "NotFound",
    "Outcome",
    "clean_title",
    "create_escalation",
    "create_story",
    "move_story",
    "resolve_escalation",
    "update_project",
]


class Mutation:
    """A change request's identity: the user, their mutation id and a hash of the request itself."""

    __slots__ = ("user_id", "id", "request_hash")

    def __init__(self, user_id: str, id: str, request_hash: str) -> None:
        self.user_id = user_id
        self.id = id
        self.request_hash = request_hash


class Outcome:
    """What a change answers: HTTP `status`, JSON `body`, whether it is a stored answer `replayed`."""

    __slots__ = ("status", "body", "replayed")

    def __init__(self, status: int, body: Any, replayed: bool = False) -> None:
        self.status = status
        self.body = body
        self.replayed = replayed

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def clean_title(title: object) -> str:
    """The title stripped of surrounding space; `ValueError` unless it is 1..200 printable characters."""
    if not isinstance(title, str):
        raise ValueError("title must be a string")
    title = title.strip()
    if not title:
        raise ValueError("title must not be empty")
    if len(title) > MAX_TITLE_CHARS:
        raise ValueError(f"title must be at most {MAX_TITLE_CHARS} characters")
    if not title.isprintable():
        raise ValueError("title must not contain control characters")
    return title


def _encode(value_: Any) -> str:
    return json.dumps(value_, separators=(",", ":"), ensure_ascii=False)


# The body of a change: a unit of work returning (status, answer, events); events are (type, data) pairs or PROJECT
# (`project.updated` with the project after the change); an answer of PROJECT is that project too.
Body = Callable[[], Work]


def _transaction(project_id: str, mutation: Mutation | None, at: int, body: Body, out: list[OutboxRow]) -> Work:
    """Lock the project, answer a repeated mutation from its record, else run `body`, number its events into the
    outbox (filling `out`) and record the outcome."""
    locked = yield value("UPDATE projects SET outbox_seq = outbox_seq WHERE id = $1 RETURNING outbox_seq", project_id)
    if locked is None:
        raise NotFound(f"unknown project {project_id!r}")
    if mutation is not None:
        stored = yield one(
            "SELECT request_hash, status, body FROM idempotency WHERE user_id = $1 AND mutation_id = $2",
            mutation.user_id, mutation.id,
        )
        if stored is not None:
            if stored["request_hash"] != mutation.request_hash:
                return Outcome(422, {
                    "error": "idempotency_key_reused",
                    "message": "this X-Client-Mutation-Id was already used for a different request",
                })
            return Outcome(int(stored["status"]), json.loads(stored["body"]), replayed=True)
    status, answer, events = yield from body()
    if events:
        first = yield from rows.lock_project(project_id, at, len(events))
        for offset, event in enumerate(events):
            if event == PROJECT:
                project = yield from rows.get_project(project_id)
                event_type, data = PROJECT, {"project": project}
                if answer == PROJECT:  # the change answers with the project as it is now
                    answer = project
            else:
                event_type, data = event
            if mutation is not None and offset == 0:  # the change's own event names it; the follow-up does not
                data = {**data, "clientMutationId": mutation.id}
            pseq = first + offset
            outbox_id = yield from rows.append_outbox(project_id, pseq, event_type, _encode(data), at)
            out.append(OutboxRow(outbox_id, project_id, pseq, event_type, data, at))
    if mutation is not None:
        yield execute(
            "INSERT INTO idempotency (user_id, mutation_id, request_hash, status, body, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            mutation.user_id, mutation.id, mutation.request_hash, status, _encode(answer), at,
        )
    return Outcome(status, answer)


_PROJECT_QUEUES: dict[tuple[int, str], list[Any]] = {}  # (event loop, project) → [lock, changes using it]


@contextlib.asynccontextmanager
async def _one_writer_per_project(project_id: str) -> AsyncIterator[None]:
    """Changes of one project wait for each other here, in the process, rather than in the database: each would hold a
    pooled connection while waiting for the project's row lock, and a burst of them would starve every other query
    (membership checks, sign-ins, the relay) of connections."""
    key = (id(asyncio.get_running_loop()), project_id)
    entry = _PROJECT_QUEUES.get(key)
    if entry is None:
        entry = _PROJECT_QUEUES[key] = [asyncio.Lock(), 0]
    entry[1] += 1
    try:
        async with entry[0]:
            yield
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _PROJECT_QUEUES[key]


async def _run(store: Store, relay: Any, project_id: str, mutation: Mutation | None, body: Body) -> Outcome:
    out: list[OutboxRow] = []
    async with _one_writer_per_project(project_id):
        outcome: Outcome = await store.transact(_transaction(project_id, mutation, store.clock(), body, out))
    if out and relay is not None:
        relay.committed(out)
    return outcome


async def move_story(
    store: Store, relay: Any, *, story_id: int, status: str, actor: str, expect: str | None = None,
    mutation: Mutation | None = None,
) -> Outcome:
    """Set a story's status (409 when `expect` is given and no longer the story's status). Raises `NotFound`
    (unknown story) or `ValueError` (unknown status)."""
    if status not in STORY_STATUSES:
        raise ValueError(f"status must be one of {', '.join(STORY_STATUSES)}")
    current = await store.get_story(story_id)
    if current is None:
        raise NotFound(f"unknown story {story_id}")
    project_id = current["projectId"]
    at = store.clock()

    def body() -> Work:
        story = yield from rows.get_story(story_id)
        if story is None:
            raise NotFound(f"unknown story {story_id}")
        old = story["status"]
        if expect is not None and old != expect:
            return 409, {"error": "conflict", "message": f"the story is now {old}, not {expect}", "current": story}, []
        if old == status:
            return 200, story, []
        story = yield from rows.set_story_status(story_id, status, at)
        data = {"storyId": story_id, "from": old, "to": status, "story": story}
        return 200, story, [("story.status.changed", data), PROJECT]

    outcome = await _run(store, relay, project_id, mutation, body)
    if outcome.status == 200 and not outcome.replayed:
        log_event("story.moved", project_id=project_id, story_id=story_id, status_to=status, actor=actor)
    return outcome


async def create_story(
    store: Store, relay: Any, *, project_id: str, title: str, actor: str, status: str = "todo",
    assignee: str | None = None, mutation: Mutation | None = None,
) -> Outcome:
    """Add a story (201). Raises `NotFound` (unknown project) or `ValueError` (bad title or status)."""
    title = clean_title(title)
    if status not in STORY_STATUSES:
        raise ValueError(f"unknown story status: {status!r}")
    at = store.clock()

    def body() -> Work:
        story = yield from rows.insert_story(project_id, title, status, assignee, at)
        return 201, story, [("story.created", {"story": story}), PROJECT]

    outcome = await _run(store, relay, project_id, mutation, body)
    if outcome.ok and not outcome.replayed:
        log_event("story.created", project_id=project_id, story_id=outcome.body["id"], actor=actor)
    return outcome


async def create_escalation(
    store: Store, relay: Any, *, project_id: str, title: str, actor: str, mutation: Mutation | None = None,
) -> Outcome:
    """Raise an open escalation created by `actor` (201). Raises `NotFound` (unknown project) or `ValueError`."""
    title = clean_title(title)
    at = store.clock()

    def body() -> Work:
        escalation = yield from rows.insert_escalation(project_id, title, actor, at)
        return 201, escalation, [("escalation.created", {"escalation": escalation}), PROJECT]

    outcome = await _run(store, relay, project_id, mutation, body)
    if outcome.ok and not outcome.replayed:
        log_event("escalation.created", project_id=project_id, escalation_id=outcome.body["id"], actor=actor)
    return outcome


async def resolve_escalation(
    store: Store, relay: Any, *, escalation_id: int, actor: str, mutation: Mutation | None = None,
) -> Outcome:
    """Resolve an escalation; one already resolved is a success that changes nothing. Raises `NotFound`."""
    current = await store.get_escalation(escalation_id)
    if current is None:
        raise NotFound(f"unknown escalation {escalation_id}")
    project_id = current["projectId"]
    at = store.clock()

    def body() -> Work:
        resolved = yield from rows.resolve_escalation(escalation_id, at)
        if resolved is None:  # already resolved (or gone)
            escalation = yield from rows.get_escalation(escalation_id)
            if escalation is None:
                raise NotFound(f"unknown escalation {escalation_id}")
            return 200, escalation, []
        return 200, resolved, [("escalation.resolved", {"escalation": resolved}), PROJECT]

    outcome = await _run(store, relay, project_id, mutation, body)
    if outcome.ok and not outcome.replayed:
        log_event("escalation.resolved", project_id=project_id, escalation_id=escalation_id, actor=actor)
    return outcome


async def update_project(
    store: Store, relay: Any, *, project_id: str, actor: str, name: str | None = None,
    description: str | None = None, mutation: Mutation | None = None,
) -> Outcome:
    """Rename and/or redescribe a project and publish `project.updated`. Raises `NotFound`."""

    def body() -> Work:
        yield execute(
            "UPDATE projects SET name = COALESCE($2, name), description = COALESCE($3, description) WHERE id = $1",
            project_id, name, description,
        )
        return 200, PROJECT, [PROJECT]

    outcome = await _run(store, relay, project_id, mutation, body)
    if outcome.ok and not outcome.replayed:
        log_event("project.updated", project_id=project_id, actor=actor)
    return outcome
