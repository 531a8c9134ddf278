"""The WebSocket endpoint on a real uvicorn (websockets-sansio, same options as `dashboard serve`),
driven by the `websockets` client: handshake, authentication, subscriptions, limits."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from realtime_harness import (
    TIMEOUT,
    V2,
    LiveServer,
    close_code,
    events_of,
    open_ws,
    recv,
    recv_type,
    send,
    set_members,
    subscribe,
    token_for,
)

pytestmark = pytest.mark.anyio


async def test_subprotocol_auth_selects_dashboard_v1_and_greets(live: LiveServer) -> None:
    token = token_for(live.settings, "alice")
    async with open_ws(live, token) as ws:
        assert ws.subprotocol == "dashboard.v1"
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "dashboard.v1"
        assert token not in str(ws.response.headers)
        hello = await recv_type(ws, "connected")
        assert hello["userId"] == "alice"
        assert hello["clientId"].startswith("c-")
        assert hello["heartbeatMs"] == live.settings.heartbeat_interval_ms
        assert hello["epoch"] == live.app.state.bus.epoch


@pytest.mark.parametrize(
    ("offered", "selected"),
    [(V2, "dashboard.v2"), (("dashboard.v1", "dashboard.v2"), "dashboard.v2"), (("dashboard.v1",), "dashboard.v1"),
     (("dashboard.v3", "dashboard.v1"), "dashboard.v1")],
)
async def test_the_newest_protocol_offered_is_selected(live: LiveServer, offered: tuple[str, ...], selected: str) -> None:
    async with open_ws(live, token_for(live.settings), protocols=offered) as ws:
        assert ws.subprotocol == selected
        await recv_type(ws, "connected")


async def test_a_change_reaches_a_v2_client_as_one_batch_and_a_v1_client_as_two_events(live: LiveServer) -> None:
    token = token_for(live.settings)
    async with open_ws(live, token, protocols=V2) as v2, open_ws(live, token) as v1:
        for ws in (v2, v1):
            await recv_type(ws, "connected")
            await subscribe(ws, "borealis")

        async def change() -> None:
            bus = live.app.state.bus
            await bus.publish("borealis", "story.status.changed", {"storyId": 1})
            await asyncio.sleep(0)  # the bus may await between a change's events
            await bus.publish("borealis", "project.updated", {"project": {}})

        await live.call(change)
        batch = await recv(v2)
        assert batch["type"] == "batch"
        assert [e["eventType"] for e in batch["events"]] == ["story.status.changed", "project.updated"]
        events, frames = await events_of(v1, 2)
        assert frames == 2 and events == batch["events"]


async def test_query_token_auth(live: LiveServer) -> None:
    async with open_ws(live, token_for(live.settings, "bob"), via="query") as ws:
        assert (await recv_type(ws, "connected"))["userId"] == "bob"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing token"),
        ("not-a-jwt", "invalid token"),
        ("expired", "token expired"),
        ("wrong-key", "invalid token"),
        ("unknown-user", "unknown user"),
    ],
)
async def test_auth_failure_is_accepted_then_closed_4401(live: LiveServer, token: str | None, reason: str) -> None:
    settings = live.settings
    if token == "expired":
        token = token_for(settings, "alice", ttl_s=-10)
    elif token == "wrong-key":
        token = token_for(settings.with_overrides(jwt_secret="another-secret-" + "y" * 40), "alice")
    elif token == "unknown-user":
        token = token_for(settings, "mallory")
    async with open_ws(live, token) as ws:
        assert ws.subprotocol == "dashboard.v1"  # accepted first, so the browser can read the code
        code, messages = await close_code(ws)
    assert code == 4401
    assert messages[0]["type"] == "error" and messages[0]["error"] == "Authentication failed"
    assert messages[0]["message"].startswith(reason)


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://evil.example", False),
        ("https://dash.example.com.evil.com", False),
        ("null", False),
        ("https://dash.example.com", True),  # listed in allowed_origins
        ("same", True),  # same host:port as the Host header
        (None, True),  # non-browser client
    ],
)
async def test_origin_check(live: LiveServer, origin: str | None, allowed: bool) -> None:
    if origin == "same":
        origin = f"http://127.0.0.1:{live.port}"
    async with open_ws(live, token_for(live.settings), origin=origin) as ws:
        if allowed:
            await recv_type(ws, "connected")
        else:
            code, messages = await close_code(ws)
            assert code == 4403
            assert messages == [
                {"type": "error", "error": "Origin not allowed", "message": "this origin may not connect"}
            ]


async def test_connection_cap_per_user_closes_4409(live: LiveServer) -> None:
    set_members(live.store, "carol", {"apollo"})
    token = token_for(live.settings, "carol")
    cap = live.settings.max_connections_per_user
    sockets = [await open_ws(live, token) for _ in range(cap)]
    try:
        for ws in sockets:
            await recv_type(ws, "connected")
        async with open_ws(live, token) as extra:
            code, messages = await close_code(extra)
        assert code == 4409
        assert messages[0]["error"] == "Too many connections"
        # another user is not affected
        async with open_ws(live, token_for(live.settings, "bob")) as other:
            await recv_type(other, "connected")
    finally:
        for ws in sockets:
            await ws.close()


async def test_subscribe_events_in_order_and_unsubscribe(live: LiveServer) -> None:
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        _, reply = await live.publish("borealis"), None
        [reply] = await subscribe(ws, "apollo")
        assert reply["type"] == "subscribed" and reply["projectId"] == "apollo"
        assert reply["recovered"] is False and reply["replayed"] == 0
        start = reply["seq"]
        await live.publish_many("apollo", 20)
        events = [await recv_type(ws, "event") for _ in range(20)]
        assert [e["seq"] for e in events] == list(range(start + 1, start + 21))
        assert all(e["projectId"] == "apollo" and e["epoch"] == reply["epoch"] for e in events)
        assert [e["data"]["n"] for e in events] == list(range(20))

        await send(ws, {"action": "unsubscribe", "projectId": "apollo"})
        assert await recv(ws) == {"type": "unsubscribed", "projectId": "apollo"}
        await subscribe(ws, "borealis")
        await live.publish("apollo")  # no longer subscribed: must not arrive
        await live.publish("borealis", "project.updated", {"project": {"id": "borealis"}})
        event = await recv_type(ws, "event")
        assert event["projectId"] == "borealis" and event["eventType"] == "project.updated"


async def test_forbidden_project_never_delivers(live: LiveServer) -> None:
    async with open_ws(live, token_for(live.settings, "alice")) as ws:
        await recv_type(ws, "connected")
        for project in ("cassini", "no-such-project"):
            [reply] = await subscribe(ws, project)
            assert reply["type"] == "error" and reply["error"] == "forbidden" and reply["projectId"] == project
        await subscribe(ws, "apollo")
        await live.publish("cassini")
        await live.publish("no-such-project")
        await live.publish("apollo")
        event = await recv_type(ws, "event")
        assert event["projectId"] == "apollo"


async def test_membership_is_checked_on_every_subscribe(live: LiveServer) -> None:
    set_members(live.store, "dave", {"apollo"})
    async with open_ws(live, token_for(live.settings, "dave")) as ws:
        await recv_type(ws, "connected")
        await subscribe(ws, "apollo")
        set_members(live.store, "dave", set())  # membership revoked
        [reply] = await subscribe(ws, "apollo")
        assert reply["error"] == "forbidden"
        set_members(live.store, "dave", {"borealis"})
        await subscribe(ws, "borealis")
        await live.publish("apollo")
        await live.publish("borealis")
        assert (await recv_type(ws, "event"))["projectId"] == "borealis"


async def test_repeated_subscribe_is_idempotent(live: LiveServer) -> None:
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        [first] = await subscribe(ws, "apollo")
        [second] = await subscribe(ws, "apollo")
        assert second["type"] == "subscribed" and second["seq"] == first["seq"]
        await live.publish_many("apollo", 3)
        seqs = [(await recv_type(ws, "event"))["seq"] for _ in range(3)]
        assert seqs == [first["seq"] + 1, first["seq"] + 2, first["seq"] + 3]
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}  # nothing duplicated in between


async def test_malformed_input_gets_errors_and_keeps_the_connection(live: LiveServer) -> None:
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        cases = [
            ("{not json", "invalid_message"),
            ("[1, 2]", "invalid_message"),
            ('"text"', "invalid_message"),
            ("{}", "invalid_message"),
            ('{"action": "dance"}', "unknown_action"),
            ('{"action": "subscribe"}', "invalid_message"),
            ('{"action": "subscribe", "projectId": 7}', "invalid_message"),
            ('{"action": "subscribe", "projectId": "apollo", "since": {"epoch": "e", "seq": -1}}', "invalid_message"),
            ('{"action": "hello", "reconnectAttempts": "x"}', "invalid_message"),
            ("[" * 5000 + "]" * 5000, "invalid_message"),
        ]
        for text, error in cases:
            await ws.send(text)
            reply = await recv(ws)
            assert reply["type"] == "error" and reply["error"] == error, (text[:40], reply)
        await ws.send(b"\x00binary")
        assert (await recv(ws))["error"] == "invalid_message"
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}


async def test_hello_feeds_reconnect_metrics(live: LiveServer) -> None:
    before = live.metric("websocket_reconnections_total")
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        await send(ws, {"action": "hello", "reconnectAttempts": 3, "downtimeMs": 2500})
        await send(ws, {"action": "ping"})
        await recv_type(ws, "pong")
    assert live.metric("websocket_reconnections_total") == before + 1
    assert live.metric("websocket_reconnect_downtime_seconds_sum") >= 2.5


async def test_oversized_message_closes_1009(live: LiveServer) -> None:
    async with open_ws(live, token_for(live.settings), max_size=None) as ws:
        await recv_type(ws, "connected")
        await ws.send(json.dumps({"action": "ping", "pad": "x" * (live.settings.max_message_bytes + 1)}))
        code, _ = await close_code(ws)
    assert code == 1009


async def test_rate_limit_closes_4429(live: LiveServer) -> None:
    before = live.metric("websocket_rate_limited_total")
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        for _ in range(live.settings.rate_limit_burst * 3):
            try:
                await ws.send('{"action":"ping"}')
            except ConnectionClosed:
                break
        code, messages = await close_code(ws)
    assert code == 4429
    assert messages[-1] == {"type": "error", "error": "rate_limited", "message": "too many messages; reconnect later"}
    assert live.metric("websocket_rate_limited_total") == before + 1
    assert await live.wait_metric("websocket_disconnects_total", 1, {"code": "4429"}) == 1


async def test_too_many_subscriptions(live: LiveServer) -> None:
    limit = live.settings.max_subscriptions
    set_members(live.store, "erin", {f"p{i}" for i in range(limit + 1)})
    async with open_ws(live, token_for(live.settings, "erin"), max_queue=None) as ws:
        await recv_type(ws, "connected")
        for i in range(limit):
            await send(ws, {"action": "subscribe", "projectId": f"p{i}"})
        for _ in range(limit):
            await recv_type(ws, "subscribed")
        [reply] = await subscribe(ws, f"p{limit}")
        assert reply["error"] == "too_many_subscriptions"
        [again] = await subscribe(ws, "p0")  # an existing one is still fine
        assert again["type"] == "subscribed"


async def test_metrics_track_connections_and_subscriptions(live: LiveServer) -> None:
    assert await live.wait_metric("websocket_active_connections", 0) == 0  # earlier tests' sockets are gone
    assert await live.wait_metric("websocket_active_subscriptions", 0) == 0
    normal_closes = live.metric("websocket_disconnects_total", {"code": "1000"})
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        await subscribe(ws, "apollo")
        await subscribe(ws, "borealis")
        assert live.metric("websocket_active_connections") == 1
        assert live.metric("websocket_active_subscriptions") == 2
    assert await live.wait_metric("websocket_active_connections", 0) == 0
    assert live.metric("websocket_active_subscriptions") == 0
    assert await live.wait_metric("websocket_disconnects_total", normal_closes + 1, {"code": "1000"}) == normal_closes + 1


async def test_plain_http_on_ws_path_is_rejected(live: LiveServer) -> None:
    with pytest.raises(Exception):
        async with connect(live.url.replace("/ws/status-updates", "/nope"), open_timeout=TIMEOUT):
            pass


def _masked_frame(first_byte: int, payload: bytes) -> bytes:
    """A client frame built by hand (the client library refuses to build illegal ones)."""
    mask = b"\x01\x02\x03\x04"
    length = bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return bytes([first_byte]) + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (_masked_frame(0x81, b"\xff\xfe{"), 1007),  # text frame with invalid UTF-8
        (_masked_frame(0x09, b"x"), 1002),  # fragmented ping (FIN bit clear)
        (_masked_frame(0x89, b"x" * 126), 1002),  # ping payload over 125 bytes
        (_masked_frame(0xC1, b"{}"), 1002),  # reserved bit set without an extension
    ],
    ids=["invalid-utf8", "fragmented-ping", "long-ping", "rsv-bit"],
)
async def test_protocol_violations_are_closed_by_uvicorn(live: LiveServer, frame: bytes, expected: int) -> None:
    """A small raw-frame probe standing in for Autobahn: uvicorn's websockets-sansio closes with the RFC code."""
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        ws.transport.write(frame)
        code, _ = await close_code(ws)
    assert code == expected
