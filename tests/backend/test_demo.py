"""Demo seed data and `DemoActivity`: real changes through `backend.changes`, real events on the bus."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from typing import Any

import pytest
from server_fixtures import Recorder, TestClient, make_settings

from backend.app import create_app
from backend.bus.memory import MemoryBus
from backend.demo import MAX_OPEN_ESCALATIONS, MAX_STORIES, PROJECTS, DemoActivity, seed_if_empty
from backend.metrics import Metrics
from backend.relay import Relay
from backend.store import Store
from backend.store.sqlite import SqliteEngine

pytestmark = pytest.mark.anyio

EVENT_TYPES = {"story.status.changed", "story.created", "escalation.created", "escalation.resolved", "project.updated"}


async def test_seed_creates_the_demo_world(store: Store) -> None:
    assert await seed_if_empty(store) is True
    assert (await store.authenticate("alice", "alice-demo"))["projects"] == ["apollo", "borealis"]  # type: ignore[index]
    assert (await store.authenticate("bob", "bob-demo"))["projects"] == ["cassini"]  # type: ignore[index]
    assert await store.authenticate("alice", "bob-demo") is None
    assert await store.all_project_ids() == ["apollo", "borealis", "cassini"]
    for project_id in await store.all_project_ids():
        project = await store.get_project(project_id)
        assert project is not None and project["name"] and project["description"]
        stories = await store.list_stories(project_id)
        assert 5 <= len(stories) <= 8
        assert len({s["status"] for s in stories}) >= 3
        assert any(s["assignee"] for s in stories)
        escalations = await store.list_escalations(project_id)
        assert 1 <= len(escalations) <= 3
        assert any(e["status"] == "open" for e in escalations)


async def test_seed_only_when_empty(store: Store) -> None:
    await store.add_project("mine", "Mine")
    assert await seed_if_empty(store) is False
    assert await store.all_project_ids() == ["mine"]
    assert await store.user("alice") is None


async def test_seed_is_not_repeated(store: Store) -> None:
    assert await seed_if_empty(store) is True
    assert await seed_if_empty(store) is False
    assert len(await store.list_stories("apollo")) == len(PROJECTS[0]["stories"])


async def run_steps(store: Store, n: int, seed: int) -> tuple[Recorder, Counter[str], DemoActivity]:
    settings = make_settings()
    bus = MemoryBus(settings)
    recorder = Recorder(bus)
    relay = Relay(settings, store, bus, Metrics())
    await relay.start()
    activity = DemoActivity(settings, store, relay, Metrics(), rng=random.Random(seed))
    actions: Counter[str] = Counter()
    for _ in range(n):
        actions[await activity.step()] += 1
    await relay.flushed()
    await relay.stop()
    return recorder, actions, activity


async def test_steps_make_real_changes_and_publish_them(store: Store) -> None:
    await seed_if_empty(store)
    before = {pid: await store.list_stories(pid) for pid in await store.all_project_ids()}
    recorder, actions, activity = await run_steps(store, 300, seed=7)
    assert activity.steps == 300
    assert set(actions) <= {"move", "create_story", "reopen", "raise", "resolve"}
    assert {"move", "create_story", "raise", "resolve"} <= set(actions)
    assert set(recorder.types()) <= EVENT_TYPES
    assert {"story.status.changed", "story.created", "escalation.created", "escalation.resolved"} <= set(recorder.types())
    # Each change is followed by the project's new state, and that state is what the store holds.
    last_update: dict[str, Any] = {}
    for event in recorder.events:
        if event.event_type == "project.updated":
            last_update[event.project_id] = event.data["project"]
    for project_id in await store.all_project_ids():
        assert last_update[project_id] == await store.get_project(project_id)
        stories = await store.list_stories(project_id)
        assert len(stories) <= MAX_STORIES + 1
        assert sum(e["status"] == "open" for e in await store.list_escalations(project_id)) <= MAX_OPEN_ESCALATIONS
    assert {pid: await store.list_stories(pid) for pid in await store.all_project_ids()} != before
    # Story moves are plausible transitions.
    allowed = {
        ("todo", "in_progress"), ("in_progress", "review"), ("in_progress", "blocked"), ("review", "done"),
        ("review", "in_progress"), ("blocked", "in_progress"), ("done", "todo"),
    }
    for event in recorder.events:
        if event.event_type == "story.status.changed":
            assert (event.data["from"], event.data["to"]) in allowed
            assert "clientMutationId" not in event.data


async def test_steps_are_reproducible_with_a_seeded_rng() -> None:
    async def world() -> Store:
        s = Store(SqliteEngine(":memory:"), clock=lambda: 1_000)
        await s.open()
        await seed_if_empty(s)
        return s

    a, b = await world(), await world()
    rec_a, actions_a, _ = await run_steps(a, 40, seed=3)
    rec_b, actions_b, _ = await run_steps(b, 40, seed=3)
    await a.close()
    await b.close()
    assert actions_a == actions_b
    assert [(e.event_type, e.project_id, e.data) for e in rec_a.events] == [
        (e.event_type, e.project_id, e.data) for e in rec_b.events
    ]


async def test_step_without_projects_is_idle(store: Store) -> None:
    _, actions, _ = await run_steps(store, 3, seed=1)
    assert actions == Counter({"idle": 3})


class FlakyStore(Store):
    """Fails the next `failures` reads of the project list."""

    def __init__(self) -> None:
        super().__init__(SqliteEngine(":memory:"))
        self.failures = 0

    async def all_project_ids(self) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database is locked")
        return await super().all_project_ids()


async def test_background_task_publishes_keeps_going_after_errors_and_stops_cleanly() -> None:
    store = FlakyStore()
    await store.open()
    await seed_if_empty(store)
    settings = make_settings(demo_activity_interval_ms=5)
    bus = MemoryBus(settings)
    relay = Relay(settings, store, bus, Metrics())
    snapshot = {pid: (await store.list_stories(pid), await store.list_escalations(pid)) for pid in await store.all_project_ids()}
    store.failures = 2

    async def go() -> tuple[DemoActivity, int]:
        enough = asyncio.Event()
        seen: list[Any] = []

        def on_event(event: Any) -> None:
            seen.append(event)
            if len(seen) >= 8:
                enough.set()

        bus.listen(on_event)
        await relay.start()
        activity = DemoActivity(settings, store, relay, Metrics(), rng=random.Random(11))
        await activity.start()
        await activity.start()  # idempotent
        await asyncio.wait_for(enough.wait(), timeout=10)
        await activity.stop()
        await activity.stop()  # idempotent
        await relay.flushed()
        await relay.stop()
        count = len(seen)
        for _ in range(3):  # stopped: nothing more arrives
            await asyncio.sleep(0)
        assert len(seen) == count
        return activity, count

    activity, count = await go()
    assert activity.errors == 2 and activity.steps >= 4 and count >= 8
    after = {pid: (await store.list_stories(pid), await store.list_escalations(pid)) for pid in await store.all_project_ids()}
    assert after != snapshot
    await store.close()


def test_delay_has_jitter_around_the_interval() -> None:
    activity = DemoActivity(
        make_settings(demo_activity_interval_ms=1000), Store(SqliteEngine(":memory:")), None, None, rng=random.Random(5)
    )
    delays = [activity.next_delay_s() for _ in range(200)]
    assert all(0.75 <= d <= 1.25 for d in delays)
    assert max(delays) - min(delays) > 0.2


def test_app_runs_demo_activity_when_enabled() -> None:
    settings = make_settings(demo_activity=True, demo_activity_interval_ms=10)
    bus = MemoryBus(settings)
    arrived = threading.Event()
    updates: list[Any] = []

    def on_event(event: Any) -> None:
        if event.event_type == "project.updated":
            updates.append(event)
            if len(updates) >= 3:
                arrived.set()

    bus.listen(on_event)
    with TestClient(create_app(settings, bus=bus)) as client:
        assert arrived.wait(timeout=10), "the demo activity published nothing"
        token = client.post("/api/auth/login", json={"username": "alice", "password": "alice-demo"}).json()["token"]
        projects = client.get("/api/projects", headers={"Authorization": f"Bearer {token}"}).json()
        assert projects and all(p["updatedAt"] > 0 for p in projects)
        metrics_text = client.get("/metrics").text
    assert 'websocket_events_published_total{event_type="project.updated"}' in metrics_text


def test_app_without_demo_activity_publishes_nothing() -> None:
    settings = make_settings(demo_activity=False)
    bus = MemoryBus(settings)
    recorder = Recorder(bus)
    with TestClient(create_app(settings, bus=bus)) as client:
        assert client.get("/api/config").status_code == 200
    assert recorder.events == []
