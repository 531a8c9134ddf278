"""Every queue and table a client can feed is bounded (issue 10): the per-connection send budget (replies,
replays and live events), replays refused while the client is behind, re-subscribes limited per project,
clamped `hello` figures, a bounded close-code label set, impossible `since.seq` values, a per-address cap
on open sockets, uvicorn's `limit_concurrency`, and a subscribe the bus failed retried by the server."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from backend.bus import Event
from backend.bus.memory import MemoryBus
from backend.cli import uvicorn_config
from backend.metrics import Metrics
from backend.realtime import frames
from backend.realtime.hub import Hub
from backend.realtime.session import (
    MAX_REPORTED_ATTEMPTS,
    MAX_REPORTED_DOWNTIME_MS,
    RESUBSCRIBE_BURST,
    Hello,
    Session,
    Since,
    parse,
)

from realtime_harness import (
    TIMEOUT,
    FakeStore,
    FlakyBus,
    LiveServer,
    close_code,
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


class PausedSocket:
    """A client that never reads: every send waits forever (the transport stays paused)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate = asyncio.Event()

    async def send_text(self, data: str) -> None:
        await self.gate.wait()
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.gate.wait()


async def _settle(rounds: int = 4) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def _hub(bus: Any, **settings: Any) -> Hub:
    hub = Hub(make_settings(**settings), bus, Metrics(), FakeStore())
    await hub.start()
    return hub


# -- the send budget -----------------------------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True])
async def test_resubscribing_with_a_replay_while_not_reading_never_grows_the_queue_past_the_budget(batched: bool) -> None:
    """Seen: unsubscribe + subscribe since 0 at the allowed rate from a client that stops reading grew the
    server's memory without bound (every replay was queued). Now the first replay fills the transport, later
    ones are refused (`recovered:false`, `reason:"backlogged"`), and the replies' bytes hit the budget: 4008."""
    bus = MemoryBus(make_settings(history_size=1000))
    for n in range(500):
        await bus.publish("apollo", "project.updated", {"n": n, "pad": "x" * 100})
    budget = 100_000
    hub = await _hub(bus, send_queue_bytes=budget, send_queue_size=10_000)
    outbox = hub.connect("c", "alice", batched=batched)
    socket = PausedSocket()
    outbox.attach(socket, lambda: None)
    replies: list[dict[str, Any]] = []
    for round_ in range(1000):
        if outbox.close_code is not None:
            break
        await hub.subscribe(outbox, "apollo", Since(bus.epoch, 0))
        hub.unsubscribe(outbox, "apollo")
        outbox.push(frames.unsubscribed("apollo"))
        await _settle()
        assert outbox.queued_bytes <= budget
        replies.extend(m for m in map(json.loads, [t for t in _queued_text(outbox)]) if m["type"] == "subscribed")
    assert outbox.close_code == frames.SLOW_CONSUMER
    assert round_ < 999  # closed long before the loop ran out
    assert replies and all(r["recovered"] is False and r.get("reason") == "backlogged" for r in replies[1:])
    assert hub.metrics.registry.get_sample_value("websocket_recoveries_total", {"result": "backlogged"}) >= 1
    assert hub.metrics.registry.get_sample_value("websocket_send_queue_overflows_total") == 1


def _queued_text(outbox: Any) -> list[str]:
    """Peek at an outbox's queue (test-only)."""
    from backend.realtime.outbox import _CLOSE, _text

    return [_text(item) for item, _ in (outbox._frames or ()) if item is not _CLOSE]


async def test_a_replay_that_would_not_fit_the_budget_is_refused_not_queued() -> None:
    bus = MemoryBus(make_settings())
    for n in range(50):
        await bus.publish("apollo", "project.updated", {"n": n})
    one_event = len((await bus.replay("apollo", bus.epoch, 49) or [None])[0].frame)  # type: ignore[union-attr]
    hub = await _hub(bus, send_queue_bytes=one_event * 10)
    outbox = hub.connect("c", "alice")  # no sender yet: everything stays queued
    await hub.subscribe(outbox, "apollo", Since(bus.epoch, 45))  # 5 events fit
    await hub.subscribe(outbox, "borealis", None)
    hub.unsubscribe(outbox, "apollo")
    await hub.subscribe(outbox, "apollo", Since(bus.epoch, 0))  # 50 do not
    messages = [json.loads(text) for text in outbox.take()]
    assert [m["seq"] for m in messages if m["type"] == "event"] == [46, 47, 48, 49, 50]
    last = messages[-1]
    assert (last["type"], last["recovered"], last["replayed"], last["seq"], last.get("reason")) == (
        "subscribed", False, 0, 50, "backlogged")


# -- re-subscribes, hello, close codes, since ------------------------------------------------------


def test_resubscribes_to_one_project_are_rate_limited_per_project() -> None:
    session = Session(make_settings(), client_id="c", user_id="u", now=0.0)
    allowed = [session.allow_subscribe("apollo", 0.0) for _ in range(RESUBSCRIBE_BURST + 2)]
    assert allowed == [True] * RESUBSCRIBE_BURST + [False, False]
    assert session.allow_subscribe("borealis", 0.0)  # another project has its own bucket
    assert not session.allow_subscribe("apollo", 1.0)
    assert session.allow_subscribe("apollo", 2.1)  # one more every 2 s
    for i in range(500):  # the table of buckets stays bounded
        session.allow_subscribe(f"p{i}", 3.0)
    assert len(session._resubscribes or ()) <= 2 * session.max_subscriptions


async def test_a_client_flapping_a_subscription_gets_a_retryable_error_and_keeps_its_connection(live: LiveServer) -> None:
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        replies = []
        for _ in range(RESUBSCRIBE_BURST + 1):
            [reply] = await subscribe(ws, "apollo")
            replies.append(reply)
            await send(ws, {"action": "unsubscribe", "projectId": "apollo"})
            await recv_type(ws, "unsubscribed")
        assert [r["type"] for r in replies] == ["subscribed"] * RESUBSCRIBE_BURST + ["error"]
        assert (replies[-1]["error"], replies[-1]["projectId"]) == ("subscribe_rate_limited", "apollo")
        [other] = await subscribe(ws, "borealis")
        assert other["type"] == "subscribed"


@pytest.mark.parametrize("huge", [10**300, 10**400])
def test_hello_figures_are_clamped(huge: int) -> None:
    text = '{"action":"hello","reconnectAttempts":%d,"downtimeMs":%d}' % (huge, huge)
    assert parse(text) == Hello(MAX_REPORTED_ATTEMPTS, MAX_REPORTED_DOWNTIME_MS)


async def test_huge_hello_figures_neither_raise_nor_poison_the_downtime_histogram(live: LiveServer) -> None:
    before = live.metric("websocket_reconnect_downtime_seconds_sum")
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        for huge in (10**400, 10**300):
            await ws.send('{"action":"hello","reconnectAttempts":%d,"downtimeMs":%d}' % (huge, huge))
        await send(ws, {"action": "ping"})
        assert await recv(ws) == {"type": "pong"}  # no internal_error before it
    grown = live.metric("websocket_reconnect_downtime_seconds_sum") - before
    assert 0 < grown <= 2 * MAX_REPORTED_DOWNTIME_MS / 1000


async def test_close_codes_sent_by_clients_become_a_bounded_label_set(live: LiveServer) -> None:
    for code in (4999, 3123, 4000):
        async with open_ws(live, token_for(live.settings)) as ws:
            await recv_type(ws, "connected")
            await ws.close(code)
    assert await live.wait_metric("websocket_disconnects_total", 2, {"code": "other"}) == 2
    assert live.metric("websocket_disconnects_total", {"code": "4999"}) == 0
    assert live.metric("websocket_disconnects_total", {"code": "4000"}) >= 1
    assert frames.close_label(1000) == "1000" and frames.close_label(4321) == "other"
    assert frames.close_label(4001) == "4001"  # the page going away (frozen, cached) is told apart


class StreamIdBus(MemoryBus):
    """Like the Redis bus, whose stream ids are 64-bit: a `since.seq` past that range makes its read fail."""

    async def replay(self, project_id: str, epoch: str, seq: int) -> list[Event] | None:
        if seq + 1 >= 2**64:
            raise ValueError("ERR Invalid stream ID specified as stream command argument")
        return await super().replay(project_id, epoch, seq)


@pytest.mark.parametrize("seq", [2**53, 2**64, 10**30])
async def test_a_since_seq_beyond_2_to_the_53_is_not_recovered_and_not_an_error(seq: int) -> None:
    bus = StreamIdBus(make_settings())
    await bus.publish("apollo", "project.updated", {})
    hub = await _hub(bus)
    outbox = hub.connect("c", "alice")
    await hub.subscribe(outbox, "apollo", Since(bus.epoch, seq))
    [reply] = [json.loads(t) for t in outbox.take()]
    assert (reply["type"], reply["recovered"], reply["seq"]) == ("subscribed", False, 1)


# -- per-address cap and uvicorn's limit_concurrency ---------------------------------------------


async def test_open_sockets_per_address_are_capped_with_4409() -> None:
    settings = make_settings(max_connections_per_ip=2, max_connections_per_user=0)
    with LiveServer(settings) as live:
        token = token_for(settings)
        async with open_ws(live, token) as a:
            await recv_type(a, "connected")
            async with open_ws(live, token) as b:
                await recv_type(b, "connected")
                async with open_ws(live, token) as over:
                    code, messages = await close_code(over)
                assert code == 4409 and messages[0]["error"] == "Too many connections"
                assert "per address" in messages[0]["message"]
            await live.wait_metric("websocket_active_connections", 1)
            async with open_ws(live, token) as c:  # b's slot was given back
                await recv_type(c, "connected")
        assert live.metric("websocket_connections_total", {"status": "refused"}) == 1


def test_uvicorn_runs_with_the_concurrency_limit_setting() -> None:
    assert uvicorn_config(None, make_settings(limit_concurrency=321), "127.0.0.1", 0).limit_concurrency == 321
    assert uvicorn_config(None, make_settings(limit_concurrency=0), "127.0.0.1", 0).limit_concurrency is None
    assert make_settings().limit_concurrency == 10000 and make_settings().max_connections_per_ip == 100


# -- a subscribe the bus failed is retried by the server -----------------------------------------


async def test_an_unavailable_subscribe_completes_by_itself_once_the_bus_is_back() -> None:
    settings = make_settings()
    bus = FlakyBus(settings)
    with LiveServer(settings, bus=bus) as live:
        live.app.state.hub.retry_base_s = 0.05
        async with open_ws(live, token_for(settings)) as ws:
            await recv_type(ws, "connected")
            bus.down = True
            [reply] = await subscribe(ws, "apollo")
            assert (reply["error"], reply["projectId"]) == ("unavailable", "apollo")
            await asyncio.sleep(0.3)  # a few retries fail meanwhile
            bus.down = False
            subscribed = await recv_type(ws, "subscribed", timeout=TIMEOUT)  # no second subscribe was sent
            assert subscribed["projectId"] == "apollo"
            await live.publish("apollo", "project.updated", {"after": True})
            assert (await recv_type(ws, "event"))["data"] == {"after": True}
            [again] = await subscribe(ws, "apollo")  # the client core's own retry stays harmless
            assert again["type"] == "subscribed"
            assert live.metric("websocket_active_subscriptions") == 1


async def test_a_retry_stops_when_the_client_unsubscribes_or_leaves() -> None:
    bus = FlakyBus(make_settings())
    bus.down = True
    hub = await _hub(bus)
    hub.retry_base_s = 0.01
    outbox = hub.connect("c", "alice")
    done: list[str] = []
    assert hub.retry_subscribe(outbox, "apollo", None, done.append)
    assert not hub.retry_subscribe(outbox, "apollo", None, done.append)  # one retry per project
    assert hub.retry_subscribe(outbox, "borealis", None, done.append)
    await asyncio.sleep(0.05)
    hub.unsubscribe(outbox, "apollo")
    assert not hub.is_retrying(outbox, "apollo") and hub.is_retrying(outbox, "borealis")
    hub.disconnect(outbox)
    bus.down = False
    await asyncio.sleep(0.1)
    assert done == [] and hub.subscriber_count("apollo") == hub.subscriber_count("borealis") == 0
    assert hub.metrics.registry.get_sample_value("websocket_active_subscriptions") == 0


async def test_a_client_subscribe_during_a_retry_replaces_it() -> None:
    bus = FlakyBus(make_settings())
    bus.down = True
    hub = await _hub(bus)
    hub.retry_base_s = 10.0  # the background retry would come much later
    outbox = hub.connect("c", "alice")
    done: list[str] = []
    hub.retry_subscribe(outbox, "apollo", None, done.append)
    bus.down = False
    await hub.subscribe(outbox, "apollo", None)
    assert not hub.is_retrying(outbox, "apollo") and hub.subscriber_count("apollo") == 1
    assert [json.loads(t)["type"] for t in outbox.take()] == ["subscribed"]


async def test_too_many_subscriptions_counts_the_ones_being_retried() -> None:
    settings = make_settings(max_subscriptions=2)
    bus = FlakyBus(settings)
    with LiveServer(settings, bus=bus) as live:
        set_members(live.store, "erin", {"p1", "p2", "p3"})
        async with open_ws(live, token_for(settings, "erin")) as ws:
            await recv_type(ws, "connected")
            bus.down = True
            for project in ("p1", "p2"):
                [reply] = await subscribe(ws, project)
                assert reply["error"] == "unavailable"
            [reply] = await subscribe(ws, "p3")
            assert reply["error"] == "too_many_subscriptions"


async def test_a_connection_that_ends_during_retries_leaves_nothing_behind() -> None:
    settings = make_settings()
    bus = FlakyBus(settings)
    with LiveServer(settings, bus=bus) as live:
        live.app.state.hub.retry_base_s = 0.02
        async with open_ws(live, token_for(settings)) as ws:
            await recv_type(ws, "connected")
            bus.down = True
            await subscribe(ws, "apollo")
        assert await live.wait_metric("websocket_active_connections", 0) == 0
        bus.down = False
        await asyncio.sleep(0.1)
        assert live.metric("websocket_active_subscriptions") == 0

        async def retries() -> int:
            return len(live.app.state.hub._retries)

        assert await live.call(retries) == 0


async def test_replies_count_against_the_byte_budget_of_a_live_connection() -> None:
    """The budget reaches the endpoint's outboxes (`DASHBOARD_SEND_QUEUE_BYTES`)."""
    settings = make_settings(send_queue_bytes=12_345, send_queue_size=77)
    with LiveServer(settings) as live:
        async with open_ws(live, token_for(settings)) as ws:
            await recv_type(ws, "connected")

            async def limits() -> tuple[int, int]:
                [outbox] = live.app.state.hub._clients
                return outbox._byte_limit, outbox._limit

            assert await live.call(limits) == (12_345, 77)


async def test_a_closed_socket_is_never_written_after_an_overflow() -> None:
    """`push` after the overflow close is a silent no-op, not an error (the reader may still be answering)."""
    hub = await _hub(MemoryBus(make_settings()), send_queue_size=1)
    outbox = hub.connect("c", "alice")
    assert outbox.push("a") and not outbox.push("b")
    assert outbox.close_code == frames.SLOW_CONSUMER and outbox.push("c")


async def test_a_cancelled_retry_never_removes_the_subscription_that_replaced_it() -> None:
    """unsubscribe cancels a retry whose bus call is in flight; a new subscribe made before the cancelled retry
    has unwound must survive it."""

    class SlowBus(MemoryBus):
        def __init__(self) -> None:
            super().__init__(make_settings())
            self.gate = asyncio.Event()
            self.calls = 0

        async def position(self, project_id: str) -> tuple[str, int]:
            self.calls += 1
            if self.calls == 1:
                await self.gate.wait()  # the retry's call hangs…
            return await super().position(project_id)

    bus = SlowBus()
    hub = await _hub(bus)
    hub.retry_base_s = 0.0
    outbox = hub.connect("c", "alice")
    hub.retry_subscribe(outbox, "apollo", None, lambda project: None)
    while bus.calls == 0:
        await asyncio.sleep(0)
    hub.unsubscribe(outbox, "apollo")  # cancels the retry; its sub is dropped at once
    await hub.subscribe(outbox, "apollo", None)  # a new subscribe, before the retry task has unwound
    await _settle()
    assert hub.is_subscribed(outbox, "apollo")
    assert hub.metrics.registry.get_sample_value("websocket_active_subscriptions") == 1
