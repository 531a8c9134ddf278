"""Sans-I/O pieces without sockets: `parse`, `Session` timers and token bucket, `Outbox`, and the `Hub`
(including the race between a replay in progress and live events)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from backend.bus import Event
from backend.bus.memory import MemoryBus
from backend.metrics import Metrics
from backend.realtime import frames
from backend.realtime.hub import Hub, Refused
from backend.realtime.outbox import Outbox
from backend.realtime.session import (
    SEND_PING,
    TIMED_OUT,
    TOKEN_EXPIRED,
    Hello,
    Invalid,
    Ping,
    Session,
    Since,
    Subscribe,
    Unsubscribe,
    parse,
)

from realtime_harness import FakeStore, make_settings

pytestmark = pytest.mark.anyio


# -- parse ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"action":"subscribe","projectId":"apollo"}', Subscribe("apollo")),
        ('{"action":"subscribe","projectId":"apollo","since":{"epoch":"e1","seq":41}}', Subscribe("apollo", Since("e1", 41))),
        ('{"action":"unsubscribe","projectId":"apollo"}', Unsubscribe("apollo")),
        ('{"action":"ping"}', Ping()),
        ('{"action":"hello","reconnectAttempts":2,"downtimeMs":900}', Hello(2, 900)),
    ],
)
def test_parse_valid(text: str, expected: object) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("nope", "invalid_message"),
        ("null", "invalid_message"),
        ('{"action": 1}', "invalid_message"),
        ('{"action": "subscribe", "projectId": ""}', "invalid_message"),
        ('{"action": "subscribe", "projectId": "' + "a" * 200 + '"}', "invalid_message"),
        ('{"action": "subscribe", "projectId": "a b"}', "invalid_message"),
        ('{"action": "subscribe", "projectId": "apollo", "since": {"epoch": "e", "seq": true}}', "invalid_message"),
        ('{"action": "subscribe", "projectId": "apollo", "since": {"epoch": "", "seq": 1}}', "invalid_message"),
        ('{"action": "subscribe", "projectId": "apollo", "since": []}', "invalid_message"),
        ('{"action": "hello", "downtimeMs": -1}', "invalid_message"),
        ('{"action": "explode"}', "unknown_action"),
    ],
)
def test_parse_invalid(text: str, error: str) -> None:
    result = parse(text)
    assert isinstance(result, Invalid) and result.error == error


# -- Session -------------------------------------------------------------------------------------


def test_session_heartbeat_deadlines() -> None:
    session = Session(make_settings(heartbeat_interval_ms=1000, heartbeat_misses=2), client_id="c", user_id="u", now=100.0)
    assert session.get_timer() == 101.0
    assert session.handle_timer(100.5) == []
    assert session.handle_timer(101.0) == [SEND_PING]
    assert session.get_timer() == 102.0
    session.received(101.5)  # the pong
    assert session.handle_timer(102.0) == [SEND_PING]
    assert session.dead_at == 103.5
    assert session.handle_timer(103.0) == [SEND_PING]
    assert session.get_timer() == 103.5
    assert session.handle_timer(103.5) == [TIMED_OUT]


def test_session_bucket_always_holds_a_full_resubscribe_burst() -> None:
    settings = make_settings(rate_limit_per_s=1.0, rate_limit_burst=3, max_subscriptions=10)
    session = Session(settings, client_id="c", user_id="u", now=0.0)
    allowed = [session.allow(0.0) for _ in range(13)]
    assert allowed == [True] * 12 + [False]  # 10 subscribes + hello + one spare, then limited


def test_session_token_expiry_comes_first() -> None:
    session = Session(make_settings(), client_id="c", user_id="u", now=0.0, expires_at=5.0)
    assert session.get_timer() == 5.0
    assert session.handle_timer(5.0) == [TOKEN_EXPIRED]


def test_session_token_bucket() -> None:
    settings = make_settings(rate_limit_per_s=2.0, rate_limit_burst=3, max_subscriptions=1)
    session = Session(settings, client_id="c", user_id="u", now=0.0)
    assert [session.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert session.allow(0.25) is False  # half a token
    assert session.allow(0.5) is True  # one token refilled
    assert [session.allow(10.0) for _ in range(4)] == [True, True, True, False]  # capped at the burst


def test_session_subscription_cap() -> None:
    session = Session(make_settings(max_subscriptions=2), client_id="c", user_id="u", now=0.0)
    session.subscriptions.update({"a", "b"})
    assert not session.can_add_subscription()


# -- Outbox --------------------------------------------------------------------------------------


async def test_outbox_bounds_live_frames_only_and_closes_after_flush() -> None:
    outbox = Outbox("c", "u", limit=2)
    assert outbox.offer("e1") and outbox.offer("e2")
    assert not outbox.offer("e3")
    outbox.push("reply")  # replies are never refused
    assert await outbox.next_frame() == "e1"
    assert outbox.offer("e3")
    assert outbox.close(1012, "restart", frame="bye", flush=True)
    assert not outbox.close(4000)  # the first close wins
    assert [await outbox.next_frame() for _ in range(4)] == ["e2", "reply", "e3", "bye"]
    assert await outbox.next_frame() is None
    assert outbox.close_code == 1012


async def test_outbox_close_without_flush_drops_the_backlog() -> None:
    outbox = Outbox("c", "u", limit=5)
    outbox.offer("e1")
    outbox.close(4008, "slow consumer")
    assert await outbox.next_frame() is None


# -- Hub -----------------------------------------------------------------------------------------


def _frames(outbox: Outbox) -> list[dict[str, Any]]:
    out = []
    while len(outbox):
        out.append(json.loads(outbox._frames.popleft()[0]))  # noqa: SLF001 (test reads the queue directly)
    outbox._live = 0  # noqa: SLF001
    return out


def _hub(bus: Any, **settings: Any) -> Hub:
    return Hub(make_settings(**settings), bus, Metrics(), FakeStore())


async def test_hub_caps_connections_per_user_and_refuses_while_draining() -> None:
    hub = _hub(MemoryBus(make_settings()), max_connections_per_user=2)
    await hub.start()
    a, b = hub.connect("c1", "alice"), hub.connect("c2", "alice")
    with pytest.raises(Refused) as refused:
        hub.connect("c3", "alice")
    assert refused.value.code == frames.TOO_MANY_CONNECTIONS
    hub.connect("c4", "bob")
    hub.disconnect(a)
    hub.connect("c5", "alice")
    assert hub.connections_of("alice") == 2
    await hub.drain(0.01)
    with pytest.raises(Refused) as refused:
        hub.connect("c6", "bob")
    assert refused.value.code == frames.SERVICE_RESTART
    assert b.close_code == frames.SERVICE_RESTART


async def test_hub_overflow_closes_only_the_slow_client() -> None:
    bus = MemoryBus(make_settings())
    hub = _hub(bus, send_queue_size=3)
    await hub.start()
    slow, fast = hub.connect("slow", "alice"), hub.connect("fast", "alice")
    await hub.subscribe(slow, "apollo", None)
    await hub.subscribe(fast, "apollo", None)
    _frames(slow), _frames(fast)
    for n in range(5):
        await bus.publish("apollo", "x", {"n": n})
        _frames(fast)  # the fast client keeps up
    assert slow.close_code == frames.SLOW_CONSUMER
    assert fast.close_code is None
    assert hub.subscriber_count("apollo") == 1
    assert hub.metrics.registry.get_sample_value("websocket_send_queue_overflows_total") == 1


class GatedBus(MemoryBus):
    """A memory bus whose `replay` and `position` wait for the test to open a gate, so live events can be
    published while a subscribe is in the middle of its replay."""

    def __init__(self) -> None:
        super().__init__(make_settings())
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def replay(self, project_id: str, epoch: str, seq: int) -> list[Event] | None:
        result = await super().replay(project_id, epoch, seq)  # the snapshot is taken now…
        self.waiting.set()
        await self.gate.wait()  # …and returned later
        return result

    async def position(self, project_id: str) -> tuple[str, int]:
        result = await super().position(project_id)
        self.waiting.set()
        await self.gate.wait()
        return result


@pytest.mark.parametrize("with_since", [True, False])
async def test_live_events_during_replay_are_neither_lost_nor_duplicated(with_since: bool) -> None:
    bus = GatedBus()
    hub = _hub(bus)
    await hub.start()
    for n in range(10):
        await bus.publish("apollo", "x", {"n": n})
    outbox = hub.connect("c", "alice")
    since = Since(bus.epoch, 4) if with_since else None
    subscribing = asyncio.create_task(hub.subscribe(outbox, "apollo", since))
    await asyncio.wait_for(bus.waiting.wait(), 2)
    for n in range(10, 15):  # published while the replay/position is in flight
        await bus.publish("apollo", "x", {"n": n})
    assert len(outbox) == 0  # nothing may overtake the replay
    bus.gate.set()
    await asyncio.wait_for(subscribing, 2)
    await bus.publish("apollo", "x", {"n": 15})
    messages = _frames(outbox)
    kinds = [m["type"] for m in messages]
    reply = messages[kinds.index("subscribed")]
    events = [m["seq"] for m in messages if m["type"] == "event"]
    if with_since:
        assert reply["recovered"] is True and reply["replayed"] == 6 and reply["seq"] == 10
        assert events == list(range(5, 17))  # 5..10 replayed, 11..16 live: each exactly once, in order
        assert kinds == ["event"] * 6 + ["subscribed"] + ["event"] * 6
    else:
        assert reply["recovered"] is False and reply["seq"] == 10
        assert events == list(range(11, 17))
        assert kinds == ["subscribed"] + ["event"] * 6


async def test_disconnect_during_replay_leaves_no_subscription() -> None:
    bus = GatedBus()
    hub = _hub(bus)
    await hub.start()
    outbox = hub.connect("c", "alice")
    subscribing = asyncio.create_task(hub.subscribe(outbox, "apollo", None))
    await asyncio.wait_for(bus.waiting.wait(), 2)
    hub.disconnect(outbox)
    bus.gate.set()
    await asyncio.wait_for(subscribing, 2)
    assert hub.subscriber_count("apollo") == 0
    assert hub.metrics.registry.get_sample_value("websocket_active_subscriptions") == 0
    assert hub.metrics.registry.get_sample_value("websocket_active_connections") == 0


async def test_resubscribe_with_since_reports_recovery_without_replaying() -> None:
    bus = MemoryBus(make_settings())
    hub = _hub(bus)
    await hub.start()
    await bus.publish("apollo", "x", {})
    outbox = hub.connect("c", "alice")
    await hub.subscribe(outbox, "apollo", None)
    await bus.publish("apollo", "x", {})
    await hub.subscribe(outbox, "apollo", Since(bus.epoch, 1))
    await hub.subscribe(outbox, "apollo", Since(bus.epoch, 0))  # older than this subscription's start
    messages = _frames(outbox)
    assert [m["type"] for m in messages] == ["subscribed", "event", "subscribed", "subscribed"]
    assert messages[2]["recovered"] is True and messages[2]["replayed"] == 0 and messages[2]["seq"] == 2
    assert messages[3]["recovered"] is False
    assert hub.subscriber_count("apollo") == 1


class BrokenBus(MemoryBus):
    async def position(self, project_id: str) -> tuple[str, int]:
        raise ConnectionError("bus down")


async def test_failed_subscribe_leaves_no_subscription() -> None:
    hub = _hub(BrokenBus(make_settings()))
    await hub.start()
    outbox = hub.connect("c", "alice")
    with pytest.raises(ConnectionError):
        await hub.subscribe(outbox, "apollo", None)
    assert hub.subscriber_count("apollo") == 0
    assert hub.metrics.registry.get_sample_value("websocket_active_subscriptions") == 0
    assert len(outbox) == 0
