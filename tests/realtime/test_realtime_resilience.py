"""Liveness, backpressure, graceful shutdown and resume on a real uvicorn with scaled-down settings."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from realtime_harness import (
    TIMEOUT,
    LiveServer,
    close_code,
    demo_store,
    make_settings,
    open_ws,
    recv,
    recv_type,
    send,
    set_members,
    subscribe,
    token_for,
)

pytestmark = pytest.mark.anyio


async def test_heartbeat_pings_and_closes_silent_client_4000() -> None:
    settings = make_settings(heartbeat_interval_ms=150, heartbeat_misses=2)
    with LiveServer(settings) as live:
        async with open_ws(live, token_for(settings)) as ws:
            await recv_type(ws, "connected")
            code, messages = await close_code(ws, timeout=3)
        assert code == 4000
        assert {"type": "ping"} in messages
        assert live.metric("websocket_heartbeat_failures_total") == 1
        assert await live.wait_metric("websocket_disconnects_total", 1, {"code": "4000"}) == 1


async def test_heartbeat_any_message_keeps_the_connection_alive() -> None:
    # misses=3 leaves room for a loaded test machine to answer late; 6 intervals are still twice the deadline.
    settings = make_settings(heartbeat_interval_ms=150, heartbeat_misses=3)
    with LiveServer(settings) as live:
        async with open_ws(live, token_for(settings)) as ws:
            await recv_type(ws, "connected")
            pings = 0
            while pings < 6:
                message = await recv(ws, skip_pings=False, timeout=2)
                if message["type"] == "ping":
                    pings += 1
                    await send(ws, {"action": "pong"})
            await send(ws, {"action": "ping"})
            assert await recv(ws) == {"type": "pong"}
        assert live.metric("websocket_heartbeat_failures_total") == 0


async def test_token_expiry_while_connected_closes_4401() -> None:
    settings = make_settings()
    with LiveServer(settings) as live:
        async with open_ws(live, token_for(settings, ttl_s=1)) as ws:
            await recv_type(ws, "connected")
            await subscribe(ws, "apollo")
            code, messages = await close_code(ws, timeout=4)
        assert code == 4401
        assert messages[-1] == {"type": "error", "error": "Authentication failed", "message": "token expired"}


async def test_slow_consumer_is_closed_4008_and_others_are_unaffected() -> None:
    settings = make_settings(send_queue_size=8, history_size=50)
    with LiveServer(settings) as live:
        token = token_for(settings)
        # The slow client stops reading (small client-side buffer), the fast one reads everything.
        async with open_ws(live, token, max_queue=1, max_size=None) as slow, open_ws(live, token, max_size=None) as fast:
            await recv_type(slow, "connected")
            await recv_type(fast, "connected")
            await subscribe(slow, "apollo")
            [reply] = await subscribe(fast, "apollo")
            received: list[int] = []
            payload = {"blob": "x" * 32768}
            for _ in range(3000):  # bounded: kernel buffers fill long before this
                event = await live.publish("apollo", "story.created", payload)
                message = await recv_type(fast, "event")  # paced by the fast client
                received.append(message["seq"])
                assert message["seq"] == event.seq
                if live.metric("websocket_send_queue_overflows_total"):
                    break
            assert live.metric("websocket_send_queue_overflows_total") == 1
            code, _ = await close_code(slow, timeout=10)  # reading again lets the close frame through
            assert code == 4008
            await live.publish("apollo", "story.created", {})
            assert (await recv_type(fast, "event"))["seq"] == received[-1] + 1
            assert received == list(range(reply["seq"] + 1, reply["seq"] + 1 + len(received)))
        assert await live.wait_metric("websocket_disconnects_total", 1, {"code": "4008"}) == 1


def test_the_restart_window_stretches_to_what_one_node_can_readmit() -> None:
    from backend.realtime.hub import restart_window

    settings = make_settings(restart_window_ms=5000, restart_rate=500)
    assert restart_window(settings, 0) == 5000
    assert restart_window(settings, 2500) == 5000  # 2500 at 500/s fit in 5 s
    assert restart_window(settings, 5000) == 10000
    assert restart_window(settings, 5001) == 10002  # rounded up: never faster than the rate
    assert restart_window(make_settings(restart_window_ms=5000, restart_rate=0), 10**6) == 5000  # 0: off


async def test_a_crowded_node_hints_a_longer_window_to_every_client() -> None:
    settings = make_settings(restart_window_ms=100, restart_rate=10)  # 3 sockets at 10/s: 300 ms
    live = LiveServer(settings).start()
    try:
        async with open_ws(live, token_for(settings)) as a, open_ws(live, token_for(settings, "bob")) as b, \
                open_ws(live, token_for(settings)) as c:
            for ws in (a, b, c):
                await recv_type(ws, "connected")
            live.sigterm()
            for ws in (a, b, c):
                code, messages = await close_code(ws)
                assert (code, messages[-1]) == (1012, {"type": "restart", "reconnectWithinMs": 300})
    finally:
        live.stop()


async def test_graceful_shutdown_sends_restart_then_1012() -> None:
    settings = make_settings(restart_window_ms=1234)
    live = LiveServer(settings).start()
    try:
        async with open_ws(live, token_for(settings)) as ws:
            await recv_type(ws, "connected")
            await subscribe(ws, "apollo")
            live.sigterm()
            code, messages = await close_code(ws)
        assert code == 1012
        assert messages[-1] == {"type": "restart", "reconnectWithinMs": 1234}
        assert live.app.state.hub.draining
    finally:
        live.stop()


async def test_healthz_reports_draining() -> None:
    settings = make_settings()
    with LiveServer(settings) as live:
        async with httpx.AsyncClient(base_url=live.http, timeout=TIMEOUT) as http:
            assert (await http.get("/healthz")).status_code == 200
            await live.call(live.app.state.hub.drain, 0.1)
            response = await http.get("/healthz")
            assert response.status_code == 503 and response.json() == {"status": "draining"}
        # a connection attempt while draining is told to come back later
        async with open_ws(live, token_for(settings)) as ws:
            code, messages = await close_code(ws)
        assert code == 1012 and messages == [{"type": "restart", "reconnectWithinMs": settings.restart_window_ms}]


async def _events_then_reply(ws: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events = []
    while True:
        message = await recv(ws)
        if message["type"] == "event":
            events.append(message)
        else:
            return events, message


async def test_resume_after_drop_replays_exactly_the_missed_events() -> None:
    settings = make_settings()
    with LiveServer(settings) as live:
        token = token_for(settings)
        async with open_ws(live, token) as ws:
            await recv_type(ws, "connected")
            [reply] = await subscribe(ws, "apollo")
            await live.publish_many("apollo", 3)
            last = [await recv_type(ws, "event") for _ in range(3)][-1]
        position = {"epoch": last["epoch"], "seq": last["seq"]}
        published = await live.publish_many("apollo", 50)
        await live.publish_many("borealis", 5)  # other projects do not leak in
        async with open_ws(live, token) as ws:
            await recv_type(ws, "connected")
            await send(ws, {"action": "subscribe", "projectId": "apollo", "since": position})
            events, subscribed = await _events_then_reply(ws)
            assert [e["seq"] for e in events] == [e.seq for e in published] == list(range(last["seq"] + 1, last["seq"] + 51))
            assert [e["data"]["n"] for e in events] == list(range(50))
            assert subscribed == {
                "type": "subscribed",
                "projectId": "apollo",
                "recovered": True,
                "replayed": 50,
                "seq": last["seq"] + 50,
                "epoch": position["epoch"],
            }
            await live.publish("apollo")
            assert (await recv_type(ws, "event"))["seq"] == last["seq"] + 51
        assert live.metric("websocket_recoveries_total", {"result": "recovered"}) == 1
        assert live.metric("websocket_events_replayed_total") == 50


async def test_resume_beyond_history_is_not_recovered_and_replays_nothing() -> None:
    settings = make_settings(history_size=10)
    with LiveServer(settings) as live:
        epoch = live.app.state.bus.epoch
        await live.publish_many("apollo", 30)
        async with open_ws(live, token_for(settings)) as ws:
            await recv_type(ws, "connected")
            messages = await subscribe(ws, "apollo", {"epoch": epoch, "seq": 5})
        assert messages == [
            {"type": "subscribed", "projectId": "apollo", "recovered": False, "replayed": 0, "seq": 30, "epoch": epoch}
        ]
        assert live.metric("websocket_recoveries_total", {"result": "failed"}) == 1


async def test_resume_after_server_restart_with_memory_bus_is_not_recovered() -> None:
    settings = make_settings()
    token = token_for(settings)
    with LiveServer(settings) as first:
        async with open_ws(first, token) as ws:
            await recv_type(ws, "connected")
            await subscribe(ws, "apollo")
            await first.publish_many("apollo", 4)
            last = [await recv_type(ws, "event") for _ in range(4)][-1]
    with LiveServer(settings) as second:
        await second.publish_many("apollo", 2)
        async with open_ws(second, token) as ws:
            hello = await recv_type(ws, "connected")
            assert hello["epoch"] != last["epoch"]
            messages = await subscribe(ws, "apollo", {"epoch": last["epoch"], "seq": last["seq"]})
        assert messages == [
            {"type": "subscribed", "projectId": "apollo", "recovered": False, "replayed": 0, "seq": 2, "epoch": hello["epoch"]}
        ]


async def _server_tasks(live: LiveServer) -> int:
    async def count() -> int:
        return len(asyncio.all_tasks())

    return int(await live.call(count))


async def test_fan_out_to_many_clients_keeps_order_without_a_task_per_connection() -> None:
    settings = make_settings(max_connections_per_user=0)
    with LiveServer(settings) as live:
        token = token_for(settings)
        before = await _server_tasks(live)
        clients = [await open_ws(live, token).__aenter__() for _ in range(20)]
        try:
            for ws in clients:
                await recv_type(ws, "connected")
                await subscribe(ws, "apollo")
            # uvicorn runs each connection in one task; our reader, writer and heartbeat add none.
            assert await _server_tasks(live) - before == len(clients)
            await live.publish_many("apollo", 30)
            for ws in clients:
                seqs = [(await recv_type(ws, "event"))["seq"] for _ in range(30)]
                assert seqs == list(range(1, 31))
            assert await _server_tasks(live) - before == len(clients)
        finally:
            for ws in clients:
                await ws.close()


class AsyncMembership:
    """The demo store, with `is_member` as a coroutine (a store backed by an async database driver)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def is_member(self, user_id: str, project_id: str) -> bool:
        await asyncio.sleep(0)
        return bool(await self._store.is_member(user_id, project_id))


@pytest.mark.parametrize("async_store", [False, True])
async def test_membership_revoked_while_subscribed_stops_delivery_at_the_next_ping(async_store: bool) -> None:
    settings = make_settings(heartbeat_interval_ms=100, heartbeat_misses=50)
    store = demo_store()
    with LiveServer(settings, store=AsyncMembership(store) if async_store else store) as live:
        set_members(store, "dave", {"apollo", "borealis"})
        async with open_ws(live, token_for(settings, "dave")) as ws:
            await recv_type(ws, "connected")
            await subscribe(ws, "apollo")
            await subscribe(ws, "borealis")
            set_members(store, "dave", {"borealis"})  # apollo revoked while the socket is open
            message = await recv(ws, timeout=2)  # within a couple of 100-ms pings
            assert message == {"type": "error", "error": "forbidden", "projectId": "apollo",
                               "message": "no longer a member of this project"}
            await live.publish("apollo")
            await live.publish("borealis")
            assert (await recv_type(ws, "event"))["projectId"] == "borealis"  # the connection and borealis live on
        assert live.metric("websocket_subscriptions_revoked_total") == 1
        assert live.metric("websocket_active_subscriptions") <= 1
