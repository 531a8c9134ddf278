"""`backend.changes`: each change writes, then publishes the documented events in store order."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from server_fixtures import Recorder, make_settings

from backend import changes
from backend.bus.memory import MemoryBus
from backend.demo import seed_if_empty
from backend.metrics import Metrics
from backend.storage import NotFound, Store


@pytest.fixture
def seeded(store: Store) -> Store:
    seed_if_empty(store)
    return store


class SlowBus(MemoryBus):
    """A bus that yields to the loop inside publish, as a network bus does."""

    async def publish(self, project_id: str, event_type: str, data: dict[str, Any]) -> Any:
        await asyncio.sleep(0.001)
        return await super().publish(project_id, event_type, data)


class BrokenBus(MemoryBus):
    async def publish(self, project_id: str, event_type: str, data: dict[str, Any]) -> Any:
        raise ConnectionError("bus down")


def published(metrics: Metrics, event_type: str) -> float:
    return metrics.events_published.labels(event_type)._value.get()


def test_create_story(seeded: Store, metrics: Metrics) -> None:
    bus = MemoryBus(make_settings())
    rec = Recorder(bus)
    story = asyncio.run(
        changes.create_story(
            seeded, bus, metrics, project_id="apollo", title=" New work ", actor="alice",
            assignee="coder-agent-1", client_mutation_id="m1",
        )
    )
    assert story["title"] == "New work" and story["status"] == "todo" and story["assignee"] == "coder-agent-1"
    assert rec.types() == ["story.created", "project.updated"]
    assert rec.events[0].data == {"story": story, "clientMutationId": "m1"}
    assert rec.events[1].data == {"project": seeded.get_project("apollo")}
    assert published(metrics, "story.created") == 1 and published(metrics, "project.updated") == 1


def test_update_project(seeded: Store, metrics: Metrics) -> None:
    bus = MemoryBus(make_settings())
    rec = Recorder(bus)
    project = asyncio.run(
        changes.update_project(seeded, bus, metrics, project_id="cassini", description="New brief", actor="bob")
    )
    assert project["description"] == "New brief" and project["name"] == "Cassini"
    assert rec.types() == ["project.updated"] and rec.events[0].data == {"project": project}
    with pytest.raises(NotFound):
        asyncio.run(changes.update_project(seeded, bus, metrics, project_id="nope", name="x", actor="bob"))


def test_refused_changes_publish_nothing(seeded: Store, metrics: Metrics) -> None:
    bus = MemoryBus(make_settings())
    rec = Recorder(bus)
    story = seeded.list_stories("apollo")[0]

    async def attempts() -> None:
        with pytest.raises(ValueError):
            await changes.move_story(seeded, bus, metrics, story_id=story["id"], status="nope", actor="a")
        with pytest.raises(NotFound):
            await changes.move_story(seeded, bus, metrics, story_id=10_000, status="done", actor="a")
        with pytest.raises(NotFound):
            await changes.resolve_escalation(seeded, bus, metrics, escalation_id=10_000, actor="a")
        with pytest.raises(NotFound):
            await changes.create_escalation(seeded, bus, metrics, project_id="nope", title="t", actor="a")
        with pytest.raises(ValueError):
            await changes.create_escalation(seeded, bus, metrics, project_id="apollo", title=" ", actor="a")
        with pytest.raises(ValueError):
            await changes.create_story(seeded, bus, metrics, project_id="apollo", title="x" * 201, actor="a")

    asyncio.run(attempts())
    assert rec.events == []
    assert seeded.get_story(story["id"]) == story


def test_concurrent_changes_publish_in_store_order(seeded: Store, metrics: Metrics) -> None:
    bus = SlowBus(make_settings())
    rec = Recorder(bus)
    todo = [s for s in seeded.list_stories("borealis") if s["status"] == "todo"]
    assert len(todo) >= 2

    async def run() -> None:
        await asyncio.gather(
            *(changes.move_story(seeded, bus, metrics, story_id=s["id"], status="done", actor="x") for s in todo),
            changes.create_escalation(seeded, bus, metrics, project_id="borealis", title="t", actor="x"),
        )

    asyncio.run(run())
    updates = [e for e in rec.events if e.event_type == "project.updated"]
    assert len(updates) == len(todo) + 1
    # The last project.updated carries the final state, and every one is preceded by its own change.
    assert updates[-1].data["project"] == seeded.get_project("borealis")
    done_counts = [u.data["project"]["counts"]["done"] for u in updates]
    assert done_counts == sorted(done_counts)
    for i, event in enumerate(rec.events):
        if event.event_type == "project.updated":
            assert rec.events[i - 1].event_type != "project.updated"
    assert [e.seq for e in rec.events] == list(range(1, len(rec.events) + 1))


def test_publish_failure_keeps_the_change_and_logs(seeded: Store, metrics: Metrics) -> None:
    bus = BrokenBus(make_settings())
    story = next(s for s in seeded.list_stories("apollo") if s["status"] == "todo")
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("dashboard")
    handler = Collect(level=logging.ERROR)
    logger.addHandler(handler)
    try:
        moved = asyncio.run(changes.move_story(seeded, bus, metrics, story_id=story["id"], status="done", actor="a"))
    finally:
        logger.removeHandler(handler)
    assert moved["status"] == "done" and seeded.get_story(story["id"])["status"] == "done"  # type: ignore[index]
    assert [r.getMessage() for r in records] == ["change.publish_failed", "change.publish_failed"]
    assert records[0].fields["event_type"] == "story.status.changed"  # type: ignore[attr-defined]
    assert published(metrics, "story.status.changed") == 0


@pytest.mark.parametrize(
    ("raw", "clean"), [("x", "x"), ("  padded  ", "padded"), ("y" * 200, "y" * 200), ("Ünïcode ✓", "Ünïcode ✓")]
)
def test_clean_title_accepts(raw: str, clean: str) -> None:
    assert changes.clean_title(raw) == clean


@pytest.mark.parametrize("raw", ["", "  ", "y" * 201, None, 3, "a\nb", "a\x1bb"])
def test_clean_title_rejects(raw: Any) -> None:
    with pytest.raises(ValueError):
        changes.clean_title(raw)
