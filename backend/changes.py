"""Every change to projects, stories and escalations: write it to the `Store`, then publish its events.

The REST API (`backend.api`) and the demo activity (`backend.demo`) both call these coroutines, so a
change always produces the same events, in the same order:

| call | events (data) |
|---|---|
| `move_story` | `story.status.changed` `{storyId, from, to, story, clientMutationId?}`, then `project.updated` `{project}` |
| `create_story` | `story.created` `{story, clientMutationId?}`, then `project.updated` |
| `create_escalation` | `escalation.created` `{escalation, clientMutationId?}`, then `project.updated` |
| `resolve_escalation` | `escalation.resolved` `{escalation, clientMutationId?}`, then `project.updated` |
| `update_project` | `project.updated` `{project, clientMutationId?}` |

Each of those changes alters the project's `counts` or `updatedAt`, so `project.updated` always follows,
carrying the project as it is after the change. A change that changes nothing (moving a story to the
status it has, resolving a resolved escalation) publishes nothing and returns the current state.

Changes of one project are serialised (a per-project lock around "write, then publish"), so events
reach the bus in the order the store applied them, even when the bus awaits I/O (Redis).
If publishing fails after the write was committed, the change stands: the failure is logged and the
caller still gets the new state (clients catch up through their next refetch or resync).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from .logs import log_event
from .storage import STORY_STATUSES, NotFound, Store

MAX_TITLE_CHARS = 200

__all__ = [
    "MAX_TITLE_CHARS",
    "NotFound",
    "clean_title",
    "create_escalation",
    "create_story",
    "move_story",
    "resolve_escalation",
    "update_project",
]

_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _project_lock(project_id: str) -> asyncio.Lock:
    per_loop = _locks.setdefault(asyncio.get_running_loop(), {})
    lock = per_loop.get(project_id)
    if lock is None:
        lock = per_loop[project_id] = asyncio.Lock()
    return lock


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


async def _publish(bus: Any, metrics: Any, project_id: str, event_type: str, data: dict[str, Any], actor: str) -> None:
    try:
        await bus.publish(project_id, event_type, data)
    except Exception as exc:  # the write is committed; a lost event must not turn it into an error
        log_event(
            "change.publish_failed", logging.ERROR,
            project_id=project_id, event_type=event_type, actor=actor, error=type(exc).__name__,
        )
        return
    metrics.events_published.labels(event_type).inc()


def _with_mutation_id(data: dict[str, Any], client_mutation_id: str | None) -> dict[str, Any]:
    if client_mutation_id is not None:
        data["clientMutationId"] = client_mutation_id
    return data


async def _project_updated(store: Store, bus: Any, metrics: Any, project_id: str, actor: str) -> None:
    project = store.get_project(project_id)
    if project is not None:
        await _publish(bus, metrics, project_id, "project.updated", {"project": project}, actor)


async def move_story(
    store: Store, bus: Any, metrics: Any, *, story_id: int, status: str, actor: str,
    client_mutation_id: str | None = None,
) -> dict[str, Any]:
    """Set a story's status and publish `story.status.changed` + `project.updated`; return the story.
    Raises `NotFound` (unknown story) or `ValueError` (unknown status)."""
    if status not in STORY_STATUSES:
        raise ValueError(f"status must be one of {', '.join(STORY_STATUSES)}")
    current = store.get_story(story_id)
    if current is None:
        raise NotFound(f"unknown story {story_id}")
    project_id = current["projectId"]
    async with _project_lock(project_id):
        old, story = store.update_story_status(story_id, status)
        if old == status:
            return story
        data = {"storyId": story["id"], "from": old, "to": status, "story": story}
        await _publish(bus, metrics, project_id, "story.status.changed", _with_mutation_id(data, client_mutation_id), actor)
        await _project_updated(store, bus, metrics, project_id, actor)
    log_event("story.moved", project_id=project_id, story_id=story_id, status_from=old, status_to=status, actor=actor)
    return story


async def create_story(
    store: Store, bus: Any, metrics: Any, *, project_id: str, title: str, actor: str,
    status: str = "todo", assignee: str | None = None, client_mutation_id: str | None = None,
) -> dict[str, Any]:
    """Add a story and publish `story.created` + `project.updated`; return the story.
    Raises `NotFound` (unknown project) or `ValueError` (bad title or status)."""
    title = clean_title(title)
    async with _project_lock(project_id):
        story = store.create_story(project_id, title, status=status, assignee=assignee)
        data = _with_mutation_id({"story": story}, client_mutation_id)
        await _publish(bus, metrics, project_id, "story.created", data, actor)
        await _project_updated(store, bus, metrics, project_id, actor)
    log_event("story.created", project_id=project_id, story_id=story["id"], actor=actor)
    return story


async def create_escalation(
    store: Store, bus: Any, metrics: Any, *, project_id: str, title: str, actor: str,
    client_mutation_id: str | None = None,
) -> dict[str, Any]:
    """Raise an open escalation (created by `actor`) and publish `escalation.created` + `project.updated`.
    Raises `NotFound` (unknown project) or `ValueError` (bad title)."""
    title = clean_title(title)
    async with _project_lock(project_id):
        escalation = store.create_escalation(project_id, title, actor)
        data = _with_mutation_id({"escalation": escalation}, client_mutation_id)
        await _publish(bus, metrics, project_id, "escalation.created", data, actor)
        await _project_updated(store, bus, metrics, project_id, actor)
    log_event("escalation.created", project_id=project_id, escalation_id=escalation["id"], actor=actor)
    return escalation


async def resolve_escalation(
    store: Store, bus: Any, metrics: Any, *, escalation_id: int, actor: str,
    client_mutation_id: str | None = None,
) -> dict[str, Any]:
    """Resolve an escalation and publish `escalation.resolved` + `project.updated` (nothing when it
    was already resolved); return it. Raises `NotFound`."""
    current = store.get_escalation(escalation_id)
    if current is None:
        raise NotFound(f"unknown escalation {escalation_id}")
    project_id = current["projectId"]
    async with _project_lock(project_id):
        old, escalation = store.resolve_escalation(escalation_id)
        if old == "resolved":
            return escalation
        data = _with_mutation_id({"escalation": escalation}, client_mutation_id)
        await _publish(bus, metrics, project_id, "escalation.resolved", data, actor)
        await _project_updated(store, bus, metrics, project_id, actor)
    log_event("escalation.resolved", project_id=project_id, escalation_id=escalation_id, actor=actor)
    return escalation


async def update_project(
    store: Store, bus: Any, metrics: Any, *, project_id: str, actor: str,
    name: str | None = None, description: str | None = None, client_mutation_id: str | None = None,
) -> dict[str, Any]:
    """Rename and/or redescribe a project and publish `project.updated`; return the project.
    Raises `NotFound`."""
    async with _project_lock(project_id):
        project = store.update_project(project_id, name=name, description=description)
        data = _with_mutation_id({"project": project}, client_mutation_id)
        await _publish(bus, metrics, project_id, "project.updated", data, actor)
    log_event("project.updated", project_id=project_id, actor=actor)
    return project
