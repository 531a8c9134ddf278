"""Token refresh over the open socket (`{"action":"auth","token":…}`), the pluggable session check
(`app.state.token_checker`), closing every connection of a session or a user, and the connection
counters `websocket_connections_total{status="connected"|"disconnected"}`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from realtime_harness import (
    V2,
    LiveServer,
    close_code,
    events_of,
    make_settings,
    open_ws,
    recv,
    recv_type,
    send,
    subscribe,
    token_for,
    token_with,
)

pytestmark = pytest.mark.anyio


def without_session_check(live: LiveServer) -> LiveServer:
    """Accept any session id (the tokens here are made up; the app's own check knows only signed-in sessions)."""
    live.app.state.token_checker = None
    return live


async def test_in_band_auth_moves_the_expiry_and_leaves_subscriptions_and_delivery_alone() -> None:
    settings = make_settings(heartbeat_interval_ms=30000)
    with LiveServer(settings) as live:
        without_session_check(live)
        first_exp = int(time.time()) + 3  # long enough for a busy machine to get the refresh in first
        async with open_ws(live, token_with(settings, "alice", ttl_s=first_exp - int(time.time()), sid="s1"),
                           protocols=V2) as ws:
            await recv_type(ws, "connected")
            [reply] = await subscribe(ws, "apollo")
            fresh = token_with(settings, "alice", ttl_s=600, sid="s1", jti="j2")
            await send(ws, {"action": "auth", "token": fresh})
            answer = await recv_type(ws, "auth")
            assert abs(answer["expiresAt"] - (time.time() + 600) * 1000) < 5000
            await asyncio.sleep(max(0.0, first_exp + 0.5 - time.time()))  # past the first token's expiry: no 4401
            await live.publish("apollo", "project.updated", {"n": 1})
            [event], _ = await events_of(ws, 1)
            assert event["seq"] == reply["seq"] + 1  # no replay, no new subscribed, nothing missed
            await send(ws, {"action": "ping"})
            assert await recv(ws) == {"type": "pong"}
        assert live.metric("websocket_connections_total", {"status": "accepted"}) == 1  # one socket all along


async def test_in_band_auth_with_an_earlier_expiry_brings_the_deadline_forward() -> None:
    settings = make_settings()
    with LiveServer(settings) as live:
        async with open_ws(live, token_for(settings)) as ws:
            await recv_type(ws, "connected")
            await send(ws, {"action": "auth", "token": token_with(settings, "alice", ttl_s=1)})
            await recv_type(ws, "auth")
            code, messages = await close_code(ws, timeout=4)
        assert code == 4401 and messages[-1]["message"] == "token expired"


async def test_a_token_of_another_user_is_an_auth_mismatch_then_4401() -> None:
    settings = make_settings()
    with LiveServer(settings) as live:
        async with open_ws(live, token_for(settings, "alice")) as ws:
            await recv_type(ws, "connected")
            await send(ws, {"action": "auth", "token": token_for(settings, "bob")})
            code, messages = await close_code(ws)
        assert code == 4401
        assert messages == [{"type": "error", "error": "auth_mismatch", "message": "the token belongs to another user"}]


@pytest.mark.parametrize("token", ["not-a-jwt", "expired"])
async def test_an_invalid_token_in_band_closes_4401(token: str) -> None:
    settings = make_settings()
    with LiveServer(settings) as live:
        if token == "expired":
            token = token_with(settings, "alice", ttl_s=-10)
        async with open_ws(live, token_for(settings)) as ws:
            await recv_type(ws, "connected")
            await send(ws, {"action": "auth", "token": token})
            code, messages = await close_code(ws)
        assert code == 4401 and messages[-1]["error"] == "Authentication failed"
        assert token not in str(messages)


async def test_a_malformed_auth_message_is_an_error_not_a_close() -> None:
    settings = make_settings()
    with LiveServer(settings) as live:
        async with open_ws(live, token_for(settings)) as ws:
            await recv_type(ws, "connected")
            await send(ws, {"action": "auth", "token": 42})
            assert (await recv(ws))["error"] == "invalid_message"
            await send(ws, {"action": "ping"})
            assert await recv(ws) == {"type": "pong"}


class Revocations:
    """A `token_checker` like the sessions': None while the token's session is live, else why it is refused
    (`boolean=True`: True / False instead)."""

    def __init__(self, *, boolean: bool = False) -> None:
        self.revoked: set[str] = set()
        self.seen: list[dict[str, Any]] = []
        self.boolean = boolean

    async def __call__(self, claims: dict[str, Any]) -> str | bool | None:
        self.seen.append(claims)
        await asyncio.sleep(0)
        live = claims.get("sid") not in self.revoked
        if self.boolean:
            return live
        return None if live else "session revoked"


@pytest.mark.parametrize("boolean", [False, True])
async def test_the_token_checker_is_asked_at_the_handshake_and_in_band(boolean: bool) -> None:
    settings = make_settings()
    with LiveServer(settings) as live:
        checker = live.app.state.token_checker = Revocations(boolean=boolean)
        checker.revoked.add("dead")
        async with open_ws(live, token_with(settings, "alice", sid="dead")) as ws:
            code, messages = await close_code(ws)
        assert code == 4401 and messages[0]["message"] == "session revoked"
        async with open_ws(live, token_with(settings, "alice", sid="s1")) as ws:
            await recv_type(ws, "connected")
            await send(ws, {"action": "auth", "token": token_with(settings, "alice", sid="dead")})
            code, messages = await close_code(ws)
        assert code == 4401 and messages[-1]["message"] == "session revoked"
        assert [c["sid"] for c in checker.seen] == ["dead", "s1", "dead"]


async def test_a_failing_token_checker_means_try_again_later_not_signed_out() -> None:
    settings = make_settings()
    with LiveServer(settings) as live:

        async def broken(claims: dict[str, Any]) -> bool:
            raise ConnectionError("session store down")

        live.app.state.token_checker = broken
        async with open_ws(live, token_for(settings)) as ws:
            code, _ = await close_code(ws)
        assert code == 1013


async def test_closing_a_session_or_a_user_closes_exactly_their_connections() -> None:
    settings = make_settings(max_connections_per_user=0)
    with LiveServer(settings) as live:
        without_session_check(live)
        hub = live.app.state.hub
        async with (
            open_ws(live, token_with(settings, "alice", sid="s1")) as s1,
            open_ws(live, token_with(settings, "alice", sid="s2")) as s2,
            open_ws(live, token_with(settings, "bob", sid="s3")) as bob,
        ):
            for ws in (s1, s2, bob):
                await recv_type(ws, "connected")
            # the refreshed token's session counts (same here) and is remembered
            await send(s2, {"action": "auth", "token": token_with(settings, "alice", sid="s2")})
            await recv_type(s2, "auth")

            async def close_session() -> int:
                return int(hub.close_session("s1"))

            assert await live.call(close_session) == 1
            code, messages = await close_code(s1)
            assert code == 4401 and messages[-1]["error"] == "session_revoked"
            await send(s2, {"action": "ping"})
            assert await recv(s2) == {"type": "pong"}  # another browser of the same user lives on

            async def close_user() -> int:
                return int(hub.close_user("bob"))

            assert await live.call(close_user) == 1
            code, messages = await close_code(bob)
            assert code == 4401 and messages[-1]["error"] == "session_revoked"
            await send(s2, {"action": "ping"})
            assert await recv(s2) == {"type": "pong"}


async def test_connected_and_disconnected_are_counted_for_every_connection() -> None:
    settings = make_settings(max_connections_per_user=1)
    with LiveServer(settings) as live:
        token = token_for(settings)
        async with open_ws(live, token) as ws:
            await recv_type(ws, "connected")
            async with open_ws(live, token) as refused:  # over the per-user cap: not connected
                await close_code(refused)
            async with open_ws(live, "bad") as unauthenticated:
                await close_code(unauthenticated)
        async with open_ws(live, token) as ws:
            await recv_type(ws, "connected")
            await ws.close(4999)
        assert live.metric("websocket_connections_total", {"status": "connected"}) == 2
        assert await live.wait_metric("websocket_connections_total", 2, {"status": "disconnected"}) == 2
        assert live.metric("websocket_connections_total", {"status": "accepted"}) == 2
        assert live.metric("websocket_connections_total", {"status": "refused"}) == 1
        assert live.metric("websocket_connections_total", {"status": "auth_failed"}) == 1
