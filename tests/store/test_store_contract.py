"""One contract for both store engines (SQLite and PostgreSQL): schema, constraints, shapes, counts, reads, the
plain writes used for seeding, and that no call blocks the event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from backend.store import STORY_STATUSES, IntegrityError, NotFound, Store
from backend.store.sql import execute, value

from .conftest import Clock

pytestmark = pytest.mark.anyio


@pytest.fixture
async def st(store: Store) -> Store:
    await store.add_project("apollo", "Apollo", "moon")
    await store.add_project("borealis", "Borealis")
    await store.add_user("alice", "Alice", "pw-alice")
    await store.add_member("alice", "apollo")
    return store


async def test_schema_is_migrated_and_reopening_is_idempotent(store: Store) -> None:
    version = await store.schema_version()
    assert version >= 2
    assert await store.migrate() == []
    assert await store.schema_version() == version
    assert await store.is_empty()
    await store.add_project("apollo", "Apollo")
    assert not await store.is_empty()


async def test_authenticate(st: Store) -> None:
    assert await st.authenticate("alice", "pw-alice") == {"id": "alice", "name": "Alice", "projects": ["apollo"]}
    assert await st.authenticate("alice", "wrong") is None
    assert await st.authenticate("nobody", "pw-alice") is None
    assert await st.authenticate("alice", "") is None
    stored = await st.password_hash("alice")
    assert stored is not None and stored.startswith("scrypt$") and "pw-alice" not in stored


async def test_a_session_is_live_only_for_its_own_existing_user(st: Store, clock: Clock) -> None:
    await st.add_user("bob", "Bob", "pw-bob")
    now = st.clock()
    await st.create_session("alice", "s-alice", "h1", expires_at=now + 60_000, max_expires_at=now + 120_000)
    assert await st.session_live("s-alice") is True
    assert await st.session_live("s-alice", "alice") is True  # what a handshake asks: one query for both
    assert await st.session_live("s-alice", "bob") is None  # another user's session proves nothing
    assert await st.session_live("s-unknown", "alice") is None
    assert await st.revoke_session("s-alice", "logout") is True
    assert await st.session_live("s-alice", "alice") is False


async def test_add_user_validation(st: Store) -> None:
    with pytest.raises(ValueError, match="already exists"):
        await st.add_user("alice", "Again", "x")
    with pytest.raises(ValueError, match="invalid user id"):
        await st.add_user("bad id", "X", "x")
    with pytest.raises(ValueError, match="exactly one"):
        await st.add_user("carol", "Carol")


async def test_add_project_validation(st: Store) -> None:
    with pytest.raises(ValueError, match="already exists"):
        await st.add_project("apollo", "Again")
    for bad in ("Apollo", "", "-x", "a b", "x" * 64):
        with pytest.raises(ValueError, match="slug"):
            await st.add_project(bad, "X")


async def test_membership(st: Store) -> None:
    assert await st.is_member("alice", "apollo")
    assert not await st.is_member("alice", "borealis")
    assert not await st.is_member("alice", "unknown")
    assert not await st.is_member("nobody", "apollo")
    assert not await st.is_member(None, "apollo")  # type: ignore[arg-type]
    await st.add_member("alice", "borealis")
    await st.add_member("alice", "borealis")  # idempotent
    assert await st.project_ids_for("alice") == ["apollo", "borealis"]
    assert (await st.user("alice"))["projects"] == ["apollo", "borealis"]  # type: ignore[index]
    assert await st.remove_member("alice", "borealis")
    assert not await st.remove_member("alice", "borealis")
    assert not await st.is_member("alice", "borealis")
    with pytest.raises(NotFound):
        await st.add_member("alice", "unknown")
    with pytest.raises(NotFound):
        await st.add_member("nobody", "apollo")
    assert await st.user("nobody") is None
    assert await st.has_user("alice") and not await st.has_user("nobody")


async def test_project_shape_and_counts(st: Store) -> None:
    assert await st.get_project("apollo") == {
        "id": "apollo",
        "name": "Apollo",
        "description": "moon",
        "updatedAt": 1_000,
        "counts": {"todo": 0, "in_progress": 0, "review": 0, "done": 0, "blocked": 0, "openEscalations": 0},
    }
    for status in ("todo", "todo", "review", "blocked"):
        await st.seed_story("apollo", f"s-{status}", status=status)
    await st.seed_escalation("apollo", "e1", "agent", resolved=True)
    await st.seed_escalation("apollo", "e2", "agent")
    await st.seed_story("borealis", "elsewhere", status="done")
    counts = (await st.get_project("apollo"))["counts"]  # type: ignore[index]
    assert counts == {"todo": 2, "in_progress": 0, "review": 1, "done": 0, "blocked": 1, "openEscalations": 1}
    assert (await st.get_project("borealis"))["counts"]["done"] == 1  # type: ignore[index]
    assert await st.get_project("unknown") is None
    assert [p["id"] for p in await st.list_projects("alice")] == ["apollo"]
    assert (await st.list_projects("alice"))[0]["counts"] == counts
    assert await st.list_projects("nobody") == []
    assert await st.all_project_ids() == ["apollo", "borealis"]


async def test_story_shapes_and_reads(st: Store, clock: Clock) -> None:
    clock.now = 2_000
    story = await st.seed_story("apollo", "Port billing", assignee="coder-agent")
    assert story == {
        "id": story["id"], "projectId": "apollo", "title": "Port billing", "status": "todo",
        "assignee": "coder-agent", "updatedAt": 2_000,
    }
    assert isinstance(story["id"], int)
    assert (await st.get_project("apollo"))["updatedAt"] == 2_000  # type: ignore[index]
    assert await st.get_story(story["id"]) == story
    assert await st.list_stories("apollo") == [story]
    assert await st.list_stories("borealis") == []
    for missing in (999, 0, -1, 2**63, True, "1"):
        assert await st.get_story(missing) is None  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await st.seed_story("unknown", "x")
    with pytest.raises(ValueError, match="status"):
        await st.seed_story("apollo", "x", status="doing")


async def test_escalation_shapes(st: Store, clock: Clock) -> None:
    clock.now = 5_000
    esc = await st.seed_escalation("apollo", "Need a human", "alice")
    assert esc == {
        "id": esc["id"], "projectId": "apollo", "title": "Need a human", "status": "open",
        "createdBy": "alice", "createdAt": 5_000, "resolvedAt": None,
    }
    done = await st.seed_escalation("apollo", "Done already", "alice", resolved=True)
    assert done["status"] == "resolved" and done["resolvedAt"] == 5_000
    assert await st.list_escalations("apollo") == [esc, done]
    assert await st.get_escalation(esc["id"]) == esc
    assert await st.get_escalation(12345) is None
    with pytest.raises(NotFound):
        await st.seed_escalation("unknown", "x", "alice")


async def test_check_constraints_hold_in_the_database(st: Store) -> None:
    story = await st.seed_story("apollo", "x")
    esc = await st.seed_escalation("apollo", "e", "agent")
    bad = [
        execute("UPDATE stories SET status = 'bogus' WHERE id = $1", story["id"]),
        execute("UPDATE escalations SET status = 'resolved' WHERE id = $1", esc["id"]),  # no resolved_at
        execute("UPDATE escalations SET status = 'pending' WHERE id = $1", esc["id"]),
        execute("INSERT INTO memberships (user_id, project_id) VALUES ('alice', 'nope')"),
    ]
    for request in bad:
        with pytest.raises(IntegrityError):
            await st.engine.run(request)
    assert set(STORY_STATUSES) == {"todo", "in_progress", "review", "done", "blocked"}


async def test_ids_are_not_reused(st: Store) -> None:
    first = await st.seed_story("apollo", "a")
    await st.engine.run(execute("DELETE FROM stories WHERE id = $1", first["id"]))
    assert (await st.seed_story("apollo", "b"))["id"] > first["id"]


async def test_a_failed_unit_of_work_changes_nothing(st: Store) -> None:
    def work():  # type: ignore[no-untyped-def]
        yield execute("UPDATE projects SET name = 'Changed' WHERE id = 'apollo'")
        yield execute("INSERT INTO memberships (user_id, project_id) VALUES ('alice', 'nope')")

    with pytest.raises(IntegrityError):
        await st.transact(work())
    assert (await st.get_project("apollo"))["name"] == "Apollo"  # type: ignore[index]


async def test_concurrent_writes_keep_every_change(st: Store) -> None:
    async def work(n: int) -> None:
        for i in range(15):
            await st.seed_story("apollo", f"s{n}-{i}", status="done")

    await asyncio.gather(*(work(n) for n in range(4)))
    assert (await st.get_project("apollo"))["counts"]["done"] == 60  # type: ignore[index]


async def test_database_calls_never_block_the_event_loop(st: Store) -> None:
    """A slow statement (a quarter of a second) runs while the loop keeps ticking."""
    slow = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000000) SELECT COUNT(*) FROM n"
        if st.kind == "sqlite" else "SELECT pg_sleep(0.25)"
    )
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    await st.engine.run(value(slow))
    took = time.monotonic() - started
    stop.set()
    await task
    assert took > 0.05, "the statement was meant to be slow"
    assert ticks >= 5, f"the loop ticked {ticks} times during a {took:.2f} s statement"
