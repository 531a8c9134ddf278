"""Changes and the outbox on both engines: a change's rows and events commit together, outbox numbers are contiguous
per project, repeats are answered from the idempotency record, and the relay publishes every event once, in order,
whatever fails in between (bus down, crash after publishing, rows left by another node, a bus that lost events)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backend import changes
from backend.bus import Event, OutboxGap
from backend.bus.memory import MemoryBus
from backend.demo import seed_if_empty
from backend.metrics import Metrics
from backend.relay import Relay
from backend.settings import Settings
from backend.store import NotFound, Store, engine_for

from .conftest import Clock

pytestmark = pytest.mark.anyio
SETTINGS = Settings(jwt_secret="s" * 40, bus_outage_s=30.0)


class Recorder:
    def __init__(self, bus: Any) -> None:
        self.events: list[Event] = []
        bus.listen(self.events.append)

    def of(self, project_id: str) -> list[tuple[int, str]]:
        return [(e.seq, e.event_type) for e in self.events if e.project_id == project_id]


@pytest.fixture
async def seeded(store: Store) -> Store:
    await seed_if_empty(store)
    return store


def mutation(mid: str, request: str = "r") -> changes.Mutation:
    return changes.Mutation("alice", mid, request)


async def story_in(store: Store, project_id: str, status: str) -> dict[str, Any]:
    return next(s for s in await store.list_stories(project_id) if s["status"] == status)


async def test_a_change_commits_its_rows_and_its_events_together(seeded: Store) -> None:
    story = await story_in(seeded, "apollo", "todo")
    outcome = await changes.move_story(seeded, None, story_id=story["id"], status="review", actor="alice",
                                       mutation=mutation("m1"))
    assert outcome.status == 200 and outcome.body["status"] == "review"
    rows = await seeded.unsent()
    assert [(r.project_id, r.pseq, r.event_type) for r in rows] == [
        ("apollo", 1, "story.status.changed"), ("apollo", 2, "project.updated"),
    ]
    assert rows[0].data == {"storyId": story["id"], "from": "todo", "to": "review", "story": outcome.body,
                            "clientMutationId": "m1"}
    assert rows[1].data == {"project": await seeded.get_project("apollo")}  # the state after the change


async def test_a_change_that_fails_leaves_neither_rows_nor_events(seeded: Store) -> None:
    with pytest.raises(NotFound):
        await changes.create_escalation(seeded, None, project_id="nope", title="x", actor="alice")
    with pytest.raises(ValueError):
        await changes.move_story(seeded, None, story_id=1, status="finished", actor="alice")
    assert await seeded.unsent() == []


async def test_outbox_numbers_are_contiguous_per_project_under_concurrent_changes(seeded: Store) -> None:
    apollo = await seeded.list_stories("apollo")
    cassini = await seeded.list_stories("cassini")

    async def churn(story: dict[str, Any]) -> None:
        for status in ("in_progress", "review", "done", "todo"):
            await changes.move_story(seeded, None, story_id=story["id"], status=status, actor="a")

    await asyncio.gather(*(churn(s) for s in apollo[:4] + cassini[:3]))
    rows = await seeded.unsent(limit=1000)
    for project_id in ("apollo", "cassini"):
        pseqs = [r.pseq for r in rows if r.project_id == project_id]
        assert pseqs == list(range(1, len(pseqs) + 1))
        # Events are in commit order: each project.updated carries counts consistent with the moves before it.
        counts = [r.data["project"]["counts"]["done"] for r in rows if r.project_id == project_id and r.event_type == "project.updated"]
        assert counts and counts[-1] == sum(s["status"] == "done" for s in await seeded.list_stories(project_id))


async def test_a_repeated_mutation_is_answered_from_its_record_and_changes_nothing(seeded: Store, database_url: str,
                                                                                   clock: Clock) -> None:
    story = await story_in(seeded, "apollo", "todo")
    first = await changes.move_story(seeded, None, story_id=story["id"], status="review", actor="alice",
                                     mutation=mutation("m-7", "hash-a"))
    again = await changes.move_story(seeded, None, story_id=story["id"], status="review", actor="alice",
                                     mutation=mutation("m-7", "hash-a"))
    assert again.replayed and not first.replayed
    assert (again.status, again.body) == (first.status, first.body)
    assert len(await seeded.unsent()) == 2  # one change, one pair of events
    other = await changes.move_story(seeded, None, story_id=story["id"], status="done", actor="alice",
                                     mutation=mutation("m-7", "hash-b"))
    assert other.status == 422 and other.body["error"] == "idempotency_key_reused"
    assert (await seeded.get_story(story["id"]))["status"] == "review"  # type: ignore[index]
    # another user may use the same id
    bobs = await changes.create_escalation(seeded, None, project_id="cassini", title="t", actor="bob",
                                           mutation=changes.Mutation("bob", "m-7", "hash-c"))
    assert bobs.status == 201 and not bobs.replayed
    if database_url.endswith(":memory:"):
        return
    # the record outlives the process
    reopened = Store(engine_for(database_url), clock=clock)
    await reopened.open()
    try:
        later = await changes.move_story(reopened, None, story_id=story["id"], status="review", actor="alice",
                                         mutation=mutation("m-7", "hash-a"))
        assert later.replayed and later.body == first.body
    finally:
        await reopened.close()


async def test_a_move_that_expects_another_status_is_a_conflict_and_changes_nothing(seeded: Store) -> None:
    story = await story_in(seeded, "apollo", "todo")
    await changes.move_story(seeded, None, story_id=story["id"], status="in_progress", actor="bob")
    before = len(await seeded.unsent())
    outcome = await changes.move_story(seeded, None, story_id=story["id"], status="review", expect="todo",
                                       actor="alice", mutation=mutation("c1"))
    assert outcome.status == 409
    assert outcome.body["error"] == "conflict" and outcome.body["current"]["status"] == "in_progress"
    assert (await seeded.get_story(story["id"]))["status"] == "in_progress"  # type: ignore[index]
    assert len(await seeded.unsent()) == before
    ok = await changes.move_story(seeded, None, story_id=story["id"], status="review", expect="in_progress", actor="alice")
    assert ok.status == 200 and ok.body["status"] == "review"


async def test_resolving_a_resolved_escalation_succeeds_and_changes_nothing(seeded: Store) -> None:
    escalation = next(e for e in await seeded.list_escalations("apollo") if e["status"] == "resolved")
    outcome = await changes.resolve_escalation(seeded, None, escalation_id=escalation["id"], actor="alice")
    assert outcome.status == 200 and outcome.body == escalation
    assert await seeded.unsent() == []


# -- the relay ------------------------------------------------------------------------------------


async def run_relay(store: Store, bus: Any, settings: Settings = SETTINGS) -> Relay:
    relay = Relay(settings, store, bus, Metrics())
    await relay.start()
    return relay


async def wait_for(predicate: Any, what: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_relay_publishes_each_event_once_in_order_and_marks_it_sent(seeded: Store) -> None:
    bus = MemoryBus(SETTINGS)
    seen = Recorder(bus)
    relay = await run_relay(seeded, bus)
    try:
        stories = await seeded.list_stories("apollo")
        for story in stories[:3]:
            await changes.move_story(seeded, relay, story_id=story["id"], status="blocked", actor="a")
        await relay.flushed()
    finally:
        await relay.stop()
    assert seen.of("apollo") == [(n, t) for n in range(1, 7) for t in [("story.status.changed", "project.updated")[(n - 1) % 2]]]
    assert await seeded.unsent() == []
    assert await seeded.last_sent_pseq("apollo") == 6


async def test_rows_left_by_a_crash_are_published_at_start_and_none_twice(seeded: Store) -> None:
    """A relay that published rows 1-2 and crashed before marking them sent, and rows 3-4 never published."""
    for story in (await seeded.list_stories("borealis"))[:2]:
        await changes.move_story(seeded, None, story_id=story["id"], status="blocked", actor="a")
    rows = await seeded.unsent()
    bus = MemoryBus(SETTINGS)
    seen = Recorder(bus)
    for row in rows[:2]:
        await bus.publish(row.project_id, row.event_type, row.data, pseq=row.pseq)
    relay = await run_relay(seeded, bus)
    try:
        await wait_for(lambda: len(seen.events) >= 4, "the rest to be published")
        await wait_for(lambda: relay.published >= 2, "the relay to count")
    finally:
        await relay.stop()
    assert seen.of("borealis") == [(1, "story.status.changed"), (2, "project.updated"),
                                   (3, "story.status.changed"), (4, "project.updated")]
    assert relay.published == 2
    assert await seeded.unsent() == []


async def test_a_row_handed_over_out_of_order_waits_for_the_missing_ones(seeded: Store) -> None:
    """Another node committed rows 1-2 (not yet published); this node commits 3-4 and hands them over first."""
    bus = MemoryBus(SETTINGS)
    seen = Recorder(bus)
    relay = Relay(SETTINGS, seeded, bus, Metrics())
    relay.sweep_s = 3600  # only the sweep at start (nothing to find yet): the missing rows must come from the gap
    lookups: list[str | None] = []
    unsent = seeded.unsent

    async def spy(**kwargs: Any) -> Any:
        lookups.append(kwargs.get("project_id"))
        return await unsent(**kwargs)

    seeded.unsent = spy  # type: ignore[method-assign]
    await relay.start()
    await wait_for(lambda: lookups, "the sweep at start")
    await bus.restart_epoch("cassini", 0)  # the bus has taken no outbox number of cassini yet
    stories = await seeded.list_stories("cassini")
    try:
        await changes.move_story(seeded, None, story_id=stories[0]["id"], status="blocked", actor="a")  # other node
        await changes.move_story(seeded, relay, story_id=stories[1]["id"], status="blocked", actor="a")
        await wait_for(lambda: len(seen.events) >= 4, "all four events")
    finally:
        await relay.stop()
    assert "cassini" in lookups  # fetched the missing rows of that project
    assert [e.data.get("storyId") for e in seen.events if e.event_type == "story.status.changed"] == [
        stories[0]["id"], stories[1]["id"],
    ]
    assert [e.seq for e in seen.events] == [1, 2, 3, 4]
    assert await unsent() == []


class FlakyBus(MemoryBus):
    """Refuses publishes while `down`."""

    down = False

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            raise ConnectionError("bus down")
        return await super().publish(*args, **kwargs)


async def test_while_the_bus_is_down_changes_commit_and_are_delivered_later(seeded: Store) -> None:
    bus = FlakyBus(SETTINGS)
    seen = Recorder(bus)
    relay = await run_relay(seeded, bus)
    try:
        bus.down = True
        story = await story_in(seeded, "apollo", "todo")
        outcome = await changes.move_story(seeded, relay, story_id=story["id"], status="done", actor="a")
        assert outcome.status == 200  # answered without the bus
        await wait_for(lambda: not relay.healthy, "the relay to notice")
        assert seen.events == [] and len(await seeded.unsent()) == 2
        bus.down = False
        await wait_for(lambda: len(seen.events) == 2, "delivery after the bus is back")
    finally:
        await relay.stop()
    epoch, _ = await bus.position("apollo")
    assert [e.epoch for e in seen.events] == [epoch, epoch] and seen.of("apollo")[0][0] == 1


async def test_an_outage_longer_than_the_bound_starts_a_new_epoch(seeded: Store, clock: Clock) -> None:
    bus = FlakyBus(SETTINGS)
    seen = Recorder(bus)
    relay = await run_relay(seeded, bus, SETTINGS.with_overrides(bus_outage_s=5.0))
    try:
        story = await story_in(seeded, "apollo", "todo")
        await changes.move_story(seeded, relay, story_id=story["id"], status="review", actor="a")
        await relay.flushed()
        old_epoch, old_seq = await bus.position("apollo")
        bus.down = True
        await changes.move_story(seeded, relay, story_id=story["id"], status="done", actor="a")
        await wait_for(lambda: not relay.healthy, "the relay to notice")
        clock.now += 6_000  # the events waited longer than DASHBOARD_BUS_OUTAGE_S
        bus.down = False
        await wait_for(lambda: len(seen.events) == 4, "delivery after the outage")
    finally:
        await relay.stop()
    new_epoch, new_seq = await bus.position("apollo")
    assert new_epoch != old_epoch and new_seq == 2
    assert await bus.replay("apollo", old_epoch, old_seq) is None  # a client resuming across it refetches
    assert [(e.epoch, e.seq) for e in seen.events[2:]] == [(new_epoch, 1), (new_epoch, 2)]


class RestartingBus(MemoryBus):
    """A bus that can 'restart' and lose what it had taken (Redis without persistence)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.run_id = "run-1"

    async def server_id(self) -> str:
        return self.run_id

    def lose_everything(self) -> None:
        self._projects.clear()
        self.run_id = "run-2"


async def test_a_bus_that_lost_published_events_gives_their_projects_a_new_epoch(seeded: Store) -> None:
    bus = RestartingBus(SETTINGS)
    relay = await run_relay(seeded, bus)
    try:
        story = await story_in(seeded, "borealis", "todo")
        await changes.move_story(seeded, relay, story_id=story["id"], status="done", actor="a")
        await relay.flushed()
        epoch, seq = await bus.position("borealis")
        assert seq == 2
        bus.lose_everything()
        await relay.reconcile()
    finally:
        await relay.stop()
    assert (await bus.position("borealis"))[0] != epoch
    assert await bus.last_pseq("borealis") == 2
    with pytest.raises(OutboxGap):  # the next number it takes is 3
        await bus.publish("borealis", "x", {}, pseq=4)
    assert await bus.publish("borealis", "x", {}, pseq=3) is not None


async def test_rows_another_node_publishes_while_this_one_looks_at_a_gap_are_not_taken_for_lost(seeded: Store) -> None:
    """Another node committed rows 1-2; this node hands over 3-4, meets the gap, and while it reads the table the
    other node publishes 1-2 and marks them sent. They were not lost: no new epoch, seqs 1-4 in one epoch."""
    bus = MemoryBus(SETTINGS)
    seen = Recorder(bus)
    metrics = Metrics()
    relay = Relay(SETTINGS, seeded, bus, metrics)
    relay.sweep_s = 3600  # only the sweep at start (nothing to find yet)
    unsent = seeded.unsent
    calls: list[str | None] = []

    async def racing(**kwargs: Any) -> Any:
        calls.append(kwargs.get("project_id"))
        rows = await unsent(**kwargs)
        if kwargs.get("project_id") == "cassini" and calls.count("cassini") == 1:  # the other node finishes now
            for other in [r for r in rows if r.pseq <= 2]:
                await bus.publish(other.project_id, other.event_type, other.data, pseq=other.pseq)
                await seeded.mark_sent(other.project_id, other.pseq)
            rows = await unsent(**kwargs)
        return rows

    seeded.unsent = racing  # type: ignore[method-assign]
    await relay.start()
    await wait_for(lambda: calls, "the sweep at start")
    await bus.restart_epoch("cassini", 0)
    epoch = (await bus.position("cassini"))[0]
    stories = await seeded.list_stories("cassini")
    try:
        await changes.move_story(seeded, None, story_id=stories[0]["id"], status="blocked", actor="a")  # other node
        await changes.move_story(seeded, relay, story_id=stories[1]["id"], status="blocked", actor="a")
        await wait_for(lambda: len(seen.events) >= 4, "all four events")
    finally:
        await relay.stop()
    assert "cassini" in calls
    assert [(e.seq, e.epoch) for e in seen.events] == [(n, epoch) for n in (1, 2, 3, 4)]
    assert metrics.registry.get_sample_value("dashboard_epoch_resets_total", {"reason": "gap"}) in (None, 0.0)
    assert await unsent() == []


async def test_a_database_restored_behind_the_bus_gets_a_new_epoch_and_loses_no_new_change(seeded: Store) -> None:
    """The bus took outbox numbers 1-4 of a project; the database comes back from a backup knowing only 1-2. Without
    the check, the next change (number 3 again) would be taken for a repeat and never delivered."""
    bus = RestartingBus(SETTINGS)
    stories = await seeded.list_stories("apollo")
    relay = await run_relay(seeded, bus)
    try:
        await changes.move_story(seeded, relay, story_id=stories[0]["id"], status="blocked", actor="a")
        await relay.flushed()
    finally:
        await relay.stop()
    for pseq in (3, 4):  # what the bus took after the backup was made
        await bus.publish("apollo", "story.status.changed", {"lost": pseq}, pseq=pseq)
    epoch, _ = await bus.position("apollo")
    seen = Recorder(bus)
    relay = await run_relay(seeded, bus)  # a restarted node checks the bus against the database first
    try:
        await wait_for(lambda: relay._bus_id is not None, "the first reconcile")
        await changes.move_story(seeded, relay, story_id=stories[1]["id"], status="blocked", actor="a")
        await wait_for(lambda: len(seen.events) == 2, "the new change's events")
    finally:
        await relay.stop()
    assert seen.events[0].data["storyId"] == stories[1]["id"]
    assert seen.events[0].epoch != epoch  # clients that saw the lost numbers refetch
    assert await seeded.unsent() == []
