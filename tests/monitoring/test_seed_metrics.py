"""The seed's six metrics move under real traffic on a real uvicorn (no metric is set by hand):
websocket_connections_total, websocket_reconnections_total, websocket_message_duration_seconds,
websocket_event_broadcast_duration_seconds, websocket_heartbeat_failures_total, websocket_auth_failures_total."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import jwt
import pytest

import traffic
from realtime_harness import SECRET, LiveServer, close_code, make_settings, open_ws, recv_type

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with LiveServer(make_settings()) as server:
        yield server


async def test_connections_total_counts_every_authenticated_handshake(live: LiveServer) -> None:
    before = live.metric("websocket_connections_total", {"status": "accepted"})
    await traffic.connect_and_leave(live)
    await traffic.connect_and_leave(live)
    assert live.metric("websocket_connections_total", {"status": "accepted"}) == before + 2
    refused = live.metric("websocket_connections_total", {"status": "auth_failed"})
    await traffic.refused_handshake(live, "not-a-jwt")
    assert live.metric("websocket_connections_total", {"status": "auth_failed"}) == refused + 1


@pytest.mark.xfail(
    strict=False,
    reason="enabled once backend/realtime/endpoint.py counts status=connected/disconnected (issue 16, realtime)",
)
async def test_connections_total_has_the_seeds_connected_and_disconnected_statuses(live: LiveServer) -> None:
    connected = live.metric("websocket_connections_total", {"status": "connected"})
    disconnected = live.metric("websocket_connections_total", {"status": "disconnected"})
    await traffic.connect_and_leave(live)
    assert live.metric("websocket_connections_total", {"status": "connected"}) == connected + 1
    after = await live.wait_metric("websocket_connections_total", disconnected + 1, {"status": "disconnected"})
    assert after == disconnected + 1, "every close must count as status=disconnected"


async def test_reconnections_total_and_downtime_follow_the_clients_hello(live: LiveServer) -> None:
    before = live.metric("websocket_reconnections_total")
    seconds = live.metric("websocket_reconnect_downtime_seconds_sum")
    await traffic.reconnected_client(live, 3, 4200)
    await traffic.reconnected_client(live, 1, 800)
    assert live.metric("websocket_reconnections_total") == before + 2
    assert live.metric("websocket_reconnect_downtime_seconds_sum") == pytest.approx(seconds + 5.0)


async def test_message_duration_observes_each_client_message(live: LiveServer) -> None:
    count = live.metric("websocket_message_duration_seconds_count")
    await traffic.connect_and_leave(live)  # one ping
    await traffic.resume(live, {"epoch": "gone", "seq": 3})  # one subscribe (with its replay decision)
    assert live.metric("websocket_message_duration_seconds_count") == count + 2
    assert live.metric("websocket_message_duration_seconds_sum") > 0


async def test_event_broadcast_duration_observes_each_fanned_out_event(live: LiveServer) -> None:
    count = live.metric("websocket_event_broadcast_duration_seconds_count")
    await traffic.subscriber_sees_a_change(live)  # one PATCH: story.status.changed + project.updated
    assert await live.wait_metric("websocket_event_broadcast_duration_seconds_count", count + 2) == count + 2


async def test_auth_failures_total_by_reason(live: LiveServer) -> None:
    reasons = ("missing_token", "invalid_token", "token_expired")
    before = {reason: live.metric("websocket_auth_failures_total", {"reason": reason}) for reason in reasons}
    expired = jwt.encode(
        {"sub": "alice", "iss": live.settings.jwt_issuer, "aud": live.settings.jwt_audience,
         "iat": dt.datetime.now(dt.UTC) - dt.timedelta(hours=2), "exp": dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)},
        SECRET, algorithm="HS256",
    )
    assert await traffic.refused_handshake(live, None) == 4401
    assert await traffic.refused_handshake(live, "not-a-jwt") == 4401
    assert await traffic.refused_handshake(live, expired) == 4401
    for reason in reasons:
        assert live.metric("websocket_auth_failures_total", {"reason": reason}) == before[reason] + 1, reason


async def test_heartbeat_failures_total_counts_silent_clients() -> None:
    with LiveServer(make_settings(heartbeat_interval_ms=150, heartbeat_misses=2)) as live:
        async with open_ws(live, traffic.token_for(live.settings)) as ws:
            await recv_type(ws, "connected")
            code, _ = await close_code(ws)  # never answers the server's pings
        assert code == 4000
        assert await live.wait_metric("websocket_heartbeat_failures_total", 1) == 1
