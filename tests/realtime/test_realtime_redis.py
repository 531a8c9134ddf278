"""Two server instances sharing one Redis: fan-out and resume across nodes."""

from __future__ import annotations

import pytest

from realtime_harness import LiveServer, make_settings, open_ws, recv, recv_type, send, subscribe, token_for

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_event_published_on_node_a_reaches_a_client_on_node_b(redis_url: str) -> None:
    settings = make_settings(bus_url=redis_url)
    with LiveServer(settings) as node_a, LiveServer(settings) as node_b:
        token = token_for(settings)
        async with open_ws(node_b, token) as on_b, open_ws(node_a, token) as on_a:
            await recv_type(on_b, "connected")
            await recv_type(on_a, "connected")
            [reply_b] = await subscribe(on_b, "apollo")
            [reply_a] = await subscribe(on_a, "apollo")
            assert (reply_a["epoch"], reply_a["seq"]) == (reply_b["epoch"], reply_b["seq"])
            await node_a.publish_many("apollo", 5)
            await node_b.publish("apollo", "project.updated", {"from": "b"})
            for ws in (on_b, on_a):
                events = [await recv_type(ws, "event") for _ in range(6)]
                assert [e["seq"] for e in events] == list(range(reply_b["seq"] + 1, reply_b["seq"] + 7))
                assert events[-1]["data"] == {"from": "b"}


async def test_resume_on_another_node_recovers_the_missed_events(redis_url: str) -> None:
    settings = make_settings(bus_url=redis_url)
    with LiveServer(settings) as node_a, LiveServer(settings) as node_b:
        token = token_for(settings)
        async with open_ws(node_b, token) as ws:
            await recv_type(ws, "connected")
            [reply] = await subscribe(ws, "borealis")
        position = {"epoch": reply["epoch"], "seq": reply["seq"]}
        await node_b.publish_many("borealis", 7)
        async with open_ws(node_a, token) as ws:  # node B went away; the client lands on node A
            await recv_type(ws, "connected")
            await send(ws, {"action": "subscribe", "projectId": "borealis", "since": position})
            events = [await recv_type(ws, "event") for _ in range(7)]
            subscribed = await recv(ws)
        assert [e["seq"] for e in events] == list(range(reply["seq"] + 1, reply["seq"] + 8))
        assert subscribed["recovered"] is True and subscribed["replayed"] == 7


async def test_server_restart_keeps_positions_with_redis(redis_url: str) -> None:
    settings = make_settings(bus_url=redis_url)
    token = token_for(settings)
    with LiveServer(settings) as first:
        async with open_ws(first, token) as ws:
            await recv_type(ws, "connected")
            [reply] = await subscribe(ws, "apollo")
        await first.publish_many("apollo", 3)
    with LiveServer(settings) as second:
        async with open_ws(second, token) as ws:
            await recv_type(ws, "connected")
            messages = await subscribe(ws, "apollo", {"epoch": reply["epoch"], "seq": reply["seq"]})
    assert [m["type"] for m in messages] == ["event"] * 3 + ["subscribed"]
    assert messages[-1]["recovered"] is True
