"""Changes of one project queue in the process, not in the database pool: while the project's row is locked (a slow
transaction), a burst of changes to it holds one pooled connection, and every other query still gets one at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from backend import changes
from backend.demo import seed_if_empty
from backend.store import Store, engine_for
from tests.postgres_server import PostgresServer

pytestmark = pytest.mark.anyio


async def test_a_burst_of_changes_to_a_locked_project_leaves_the_pool_to_everyone_else(postgres: PostgresServer) -> None:
    url = postgres.fresh_database()
    store = Store(engine_for(url, max_size=3))
    await store.open()
    blocker = await asyncpg.connect(url)
    try:
        await seed_if_empty(store)
        stories = await store.list_stories("apollo")
        locker = blocker.transaction()
        await locker.start()
        await blocker.execute("SELECT 1 FROM projects WHERE id = 'apollo' FOR UPDATE")  # a slow change in progress
        burst = [asyncio.create_task(changes.move_story(store, None, story_id=story["id"], status="blocked", actor="a"))
                 for story in stories[:6]]
        await asyncio.sleep(0.3)  # every change of the burst has started and is waiting
        assert await asyncio.wait_for(store.get_project("borealis"), 2.0) is not None, "the pool was starved"
        assert await asyncio.wait_for(store.is_member("alice", "apollo"), 2.0)
        await locker.rollback()
        outcomes = await asyncio.wait_for(asyncio.gather(*burst), 20)
        assert [o.status for o in outcomes] == [200] * 6
        assert changes._PROJECT_QUEUES == {}
    finally:
        await blocker.close()
        await store.close()
