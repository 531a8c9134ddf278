"""A store that cannot answer (PostgreSQL down, or its pool saturated by a reconnect storm) is not a refusal: a
subscribe gets a retryable `unavailable` (not `forbidden`, which would make the client stop expecting that project
for good), and a handshake is closed with 1013 (try again later) instead of failing with a server error."""

from __future__ import annotations

from typing import Any

import pytest
from realtime_harness import LiveServer, demo_store, make_settings, open_ws, recv, recv_type, send, token_for
from websockets.exceptions import ConnectionClosed

from backend.store import Unavailable

pytestmark = pytest.mark.anyio


class FailingStore:
    """The demo store, with `has_user` / `is_member` raising `Unavailable` while their flag is set."""

    def __init__(self) -> None:
        self.inner = demo_store()
        self.users_down = False
        self.members_down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def has_user(self, user_id: str) -> Any:
        if self.users_down:
            raise Unavailable("postgres: TimeoutError")
        return await self.inner.has_user(user_id)

    async def is_member(self, user_id: str, project_id: str) -> bool:
        if self.members_down:
            raise Unavailable("postgres: TimeoutError")
        return bool(await self.inner.is_member(user_id, project_id))


async def test_a_membership_check_that_fails_answers_unavailable_and_the_retry_subscribes() -> None:
    settings = make_settings()
    store = FailingStore()
    with LiveServer(settings, store=store) as server:
        async with open_ws(server, token_for(settings)) as ws:
            await recv_type(ws, "connected")
            store.members_down = True
            await send(ws, {"action": "subscribe", "projectId": "apollo"})
            reply = await recv(ws)
            assert reply["type"] == "error" and reply["error"] == "unavailable" and reply["projectId"] == "apollo", reply
            store.members_down = False
            await send(ws, {"action": "subscribe", "projectId": "apollo"})
            assert (await recv(ws))["type"] == "subscribed"


async def test_a_user_lookup_that_fails_closes_the_handshake_with_1013() -> None:
    settings = make_settings()
    store = FailingStore()
    store.users_down = True
    with LiveServer(settings, store=store) as server:
        async with open_ws(server, token_for(settings)) as ws:
            reply = await recv(ws)
            assert reply["type"] == "error" and reply["error"] == "unavailable", reply
            with pytest.raises(ConnectionClosed):
                await recv(ws)
            assert ws.close_code == 1013
