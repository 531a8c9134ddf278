"""Demo seed data and `DemoActivity`: real changes through `backend.changes`, real events on the bus."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from typing import Any

from server_fixtures import Recorder, TestClient, make_settings

from backend.app import create_app
from backend.bus.memory import MemoryBus
from backend.demo import MAX_OPEN_ESCALATIONS, MAX_STORIES, PROJECTS, DemoActivity, seed_if_empty
from backend.metrics import Metrics
from backend.storage import Store

EVENT_TYPES = {"story.status.changed", "story.created", "escalation.created", "escalation.resolved", "project.updated"}


def test_seed_creates_the_demo_world(store: Store) -> None:
    assert seed_if_empty(store) is True
    assert store.authenticate("alice", "alice-demo")["projects"] == ["apollo", "borealis"]  # type: ignore[index]
    assert store.authenticate("bob", "bob-demo")["projects"] == ["cassini"]  # type: ignore[index]
    assert store.authenticate("alice", "bob-demo") is None
    assert store.all_project_ids() == ["apollo", "borealis", "cassini"]
    for project_id in store.all_project_ids():
        project = store.get_project(project_id)
        assert project is not None and project["name"] and project["description"]
        stories = store.list_stories(project_id)
        assert 5 <= len(stories) <= 8
        assert len({s["status"] for s in stories}) >= 3
        assert any(s["assignee"] for s in stories)
        escalations = store.list_escalations(project_id)
        assert 1 <= len(escalations) <= 3
        assert any(e["status"] == "open" for e in escalations)


def test_seed_only_when_empty(store: Store) -> None:
    store.add_project("mine", "Mine")
    assert seed_if_empty(store) is False
    assert store.all_project_ids() == ["mine"]
    assert store.user("alice") is None


def test_seed_is_not_repeated(store: Store) -> None:
    assert seed_if_empty(store) is True
    assert seed_if_empty(store) is False
    assert len(store.list_stories("apollo")) == len(PROJECTS[0]["stories"])


def run_steps(store: Store, n: int, seed: int) -> tuple[Recorder, Counter[str], DemoActivity]:
    bus = MemoryBus(make_settings())
    recorder = Recorder(bus)
    activity = DemoActivity(make_settings(), store, bus, Metrics(), rng=random.Random(seed))
    actions: Counter[str] = Counter()

    async def go() -> None:
        for _ in range(n):
            actions[await activity.step()] += 1

    asyncio.run(go())
    return recorder, actions, activity


def test_steps_make_real_changes_and_publish_them(store: Store) -> None:
    seed_if_empty(store)
    before = {pid: store.list_stories(pid) for pid in store.all_project_ids()}
    recorder, actions, activity = run_steps(store, 300, seed=7)
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
    for project_id in store.all_project_ids():
        assert last_update[project_id] == store.get_project(project_id)
        stories = store.list_stories(project_id)
        assert len(stories) <= MAX_STORIES + 1
        assert sum(e["status"] == "open" for e in store.list_escalations(project_id)) <= MAX_OPEN_ESCALATIONS
    assert {pid: store.list_stories(pid) for pid in store.all_project_ids()} != before
    # Story moves are plausible transitions.
    allowed = {
        ("todo", "in_progress"), ("in_progress", "review"), ("in_progress", "blocked"), ("review", "done"),
        ("review", "in_progress"), ("blocked", "in_progress"), ("done", "todo"),
    }
    for event in recorder.events:
        if event.event_type == "story.status.changed":
            assert (event.data["from"], event.data["to"]) in allowed
            assert "clientMutationId" not in event.data


def test_steps_are_reproducible_with_a_seeded_rng() -> None:
    def world() -> Store:
        s = Store(":memory:", clock=lambda: 1_000)
        s.open()
        seed_if_empty(s)
        return s

    a, b = world(), world()
    rec_a, actions_a, _ = run_steps(a, 40, seed=3)
    rec_b, actions_b, _ = run_steps(b, 40, seed=3)
    assert actions_a == actions_b
    assert [(e.event_type, e.project_id, e.data) for e in rec_a.events] == [
        (e.event_type, e.project_id, e.data) for e in rec_b.events
    ]


def test_step_without_projects_is_idle(store: Store) -> None:
    _, actions, _ = run_steps(store, 3, seed=1)
    assert actions == Counter({"idle": 3})


class FlakyStore(Store):
    """Fails the next `failures` reads of the project list."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.failures = 0

    def all_project_ids(self) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database is locked")
        return super().all_project_ids()


def test_background_task_publishes_keeps_going_after_errors_and_stops_cleanly() -> None:
    store = FlakyStore()
    store.open()
    seed_if_empty(store)
    settings = make_settings(demo_activity_interval_ms=5)
    bus = MemoryBus(settings)
    snapshot = {pid: (store.list_stories(pid), store.list_escalations(pid)) for pid in store.all_project_ids()}
    store.failures = 2

    async def go() -> tuple[DemoActivity, int]:
        enough = asyncio.Event()
        seen: list[Any] = []

        def on_event(event: Any) -> None:
            seen.append(event)
            if len(seen) >= 8:
                enough.set()

        bus.listen(on_event)
        activity = DemoActivity(settings, store, bus, Metrics(), rng=random.Random(11))
        await activity.start()
        await activity.start()  # idempotent
        await asyncio.wait_for(enough.wait(), timeout=10)
        await activity.stop()
        await activity.stop()  # idempotent
        count = len(seen)
        for _ in range(3):  # stopped: nothing more arrives
            await asyncio.sleep(0)
        assert len(seen) == count
        return activity, count

    activity, count = asyncio.run(go())
    assert activity.errors == 2 and activity.steps >= 4 and count >= 8
    after = {pid: (store.list_stories(pid), store.list_escalations(pid)) for pid in store.all_project_ids()}
    assert after != snapshot
    store.close()


def test_delay_has_jitter_around_the_interval() -> None:
    activity = DemoActivity(make_settings(demo_activity_interval_ms=1000), Store(":memory:"), None, None, rng=random.Random(5))
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
