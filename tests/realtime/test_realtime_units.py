"""Sans-I/O pieces without sockets: `parse`, `Session` timers and token bucket, `Outbox`, and the `Hub`
(including the race between a replay in progress and live events)."""

from __future__ import annotations

import asyncio
import json
import time
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


def test_session_first_ping_phase_spreads_connections_and_then_keeps_the_interval() -> None:
    settings = make_settings(heartbeat_interval_ms=1000, heartbeat_misses=2)
    early = Session(settings, client_id="a", user_id="u", now=100.0, first_ping=0.5)
    late = Session(settings, client_id="b", user_id="u", now=100.0, first_ping=2.0)  # clamped: never later than 1
    assert early.get_timer() == 100.5 and late.get_timer() == 101.0
    assert early.handle_timer(100.5) == [SEND_PING]
    assert early.get_timer() == 101.5  # then every interval, keeping its phase
    assert early.dead_at == 102.0  # the dead-peer deadline does not depend on the phase


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


class FakeSocket:
    """A sender like uvicorn's: `send_text` completes at once unless the test pauses the transport, then it
    waits (as uvicorn's `send()` waits for `writable`) until `resume()`."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str | None] | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.suspended = 0  # sends that had to wait
        self.fail: Exception | None = None

    async def send_text(self, data: str) -> None:
        if not self.writable.is_set():
            self.suspended += 1
        await self.writable.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.writable.wait()
        self.closed = (code, reason)


async def _settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def _attached(limit: int, **kwargs: Any) -> tuple[Outbox, FakeSocket, list[str]]:
    outbox, socket, done = Outbox("c", "u", limit=limit, **kwargs), FakeSocket(), []
    outbox.attach(socket, lambda: done.append("done"))
    return outbox, socket, done


async def test_outbox_writes_without_a_task_while_the_transport_is_writable() -> None:
    outbox, socket, done = _attached(limit=3)
    tasks_before = len(asyncio.all_tasks())
    assert outbox.offer("e1") and outbox.offer("e2") and outbox.offer("e3")
    assert outbox.push("reply")  # e1 is being sent; e2, e3 and the reply wait behind it (3 = the limit)
    await _settle()
    assert socket.sent == ["e1", "e2", "e3", "reply"] and len(outbox) == 0 and outbox.queued_bytes == 0
    assert len(asyncio.all_tasks()) == tasks_before and not outbox.backlogged
    assert outbox.close(1012, "restart", frame="bye", flush=True)
    assert not outbox.close(4000)  # the first close wins
    await _settle()
    assert socket.sent[-1] == "bye" and socket.closed == (1012, "restart") and done == ["done"]


async def test_outbox_paused_transport_keeps_order() -> None:
    outbox, socket, done = _attached(limit=4)
    socket.writable.clear()  # the client stopped reading
    assert outbox.offer("e1")
    await _settle()
    assert outbox.backlogged and socket.suspended == 1
    assert outbox.offer("e2") and outbox.offer("e3") and outbox.offer("e4")
    assert outbox.push("pong")
    socket.writable.set()
    await _settle()
    assert socket.sent == ["e1", "e2", "e3", "e4", "pong"]
    assert not outbox.backlogged and done == []
    outbox.offer("e6")  # back on the fast path
    await _settle()
    assert socket.sent[-1] == "e6" and not outbox.backlogged


@pytest.mark.parametrize("last", ["live", "reply"])
async def test_outbox_frame_budget_counts_live_frames_and_replies(last: str) -> None:
    overflows: list[Outbox] = []
    outbox, socket, done = _attached(limit=3, on_overflow=lambda o: overflows.append(o) or o.close(4008, "slow"))
    socket.writable.clear()
    outbox.offer("e1")
    await _settle()  # e1 is stuck in a paused transport
    assert outbox.offer("e2") and outbox.push("pong") and outbox.push("e3", replay=True) and outbox.offer("e4")
    # 3 live frames and replies queued (the replayed frame counts bytes only): the next of either kind is one too many
    assert not (outbox.offer("e5") if last == "live" else outbox.push("reply"))
    assert overflows == [outbox] and outbox.close_code == 4008
    assert outbox.offer("e6") and outbox.push("r")  # closing: dropped silently, no second overflow
    assert overflows == [outbox]


async def test_outbox_byte_budget_counts_replies_replays_and_live_frames() -> None:
    outbox, socket, done = _attached(limit=100, byte_limit=10)
    socket.writable.clear()
    outbox.push("first")
    await _settle()
    assert outbox.push("rrr") and outbox.push("pp", replay=True) and outbox.offer("ee")
    assert outbox.queued_bytes == 7
    assert outbox.room(3) is False  # backlogged: no room for a replay whatever its size
    assert outbox.push("xyzw") is False  # 11 characters > 10
    assert outbox.close_code == 4008  # without an overflow callback the outbox closes itself
    socket.writable.set()
    await _settle()
    assert socket.sent == ["first"] and socket.closed == (4008, "slow consumer")


async def test_outbox_room_for_a_replay() -> None:
    outbox = Outbox("c", "u", limit=5, byte_limit=100)
    assert outbox.room(100) and not outbox.room(101)
    outbox.push("x" * 60)  # no sender: queued
    assert outbox.room(40) and not outbox.room(41)


async def test_outbox_close_without_flush_drops_the_backlog() -> None:
    outbox, socket, done = _attached(limit=5)
    outbox.offer("e1")  # already handed to the flusher: it goes out
    outbox.offer("e2")
    outbox.push("reply")
    outbox.close(4008, "slow consumer")
    await _settle()
    assert socket.sent == ["e1"] and socket.closed == (4008, "slow consumer") and done == ["done"]


async def test_outbox_gives_up_a_close_the_client_never_reads() -> None:
    outbox, socket, done = _attached(limit=5, close_timeout_s=0.05)
    socket.writable.clear()
    outbox.push("x")
    outbox.close(4000, "heartbeat timeout")
    await asyncio.wait_for(_until(lambda: done == ["done"]), 2)
    assert socket.closed is None and not outbox.backlogged


async def test_outbox_send_failure_ends_it_and_spares_other_outboxes() -> None:
    from backend.realtime.outbox import Flusher

    flusher = Flusher()
    broken, ok = Outbox("a", "u", 5, flusher=flusher), Outbox("b", "u", 5, flusher=flusher)
    broken_socket, ok_socket, done = FakeSocket(), FakeSocket(), []
    broken_socket.fail = ConnectionResetError("gone")
    broken.attach(broken_socket, lambda: done.append("a"))
    ok.attach(ok_socket, lambda: done.append("b"))
    for outbox in (broken, ok):
        outbox.offer("e1")
        outbox.offer("e2")
    await _settle()
    assert done == ["a"] and ok_socket.sent == ["e1", "e2"] and len(broken) == 0


async def test_outbox_without_a_sender_only_queues() -> None:
    outbox = Outbox("c", "u", limit=2)
    outbox.offer("e1")
    outbox.push("reply")
    outbox.close(1000, flush=True)
    assert outbox.take() == ["e1", "reply"] and len(outbox) == 0


async def _until(predicate: Any, step: float = 0.01) -> None:
    while not predicate():
        await asyncio.sleep(step)


# -- Hub -----------------------------------------------------------------------------------------


def _frames(outbox: Outbox) -> list[dict[str, Any]]:
    return [json.loads(frame) for frame in outbox.take()]  # an outbox without a sender just queues


async def _publish(bus: Any, project_id: str, event_type: str, data: dict[str, Any]) -> None:
    """Publish, then let the hub fan out the tick (it does so at the start of the next flusher pass)."""
    await bus.publish(project_id, event_type, data)
    await _settle(2)


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
        await _publish(bus, "apollo", "x", {"n": n})
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
    await _publish(bus, "apollo", "x", {"n": 15})
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
    await _publish(bus, "apollo", "x", {})
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


# -- Deadlines -----------------------------------------------------------------------------------


async def test_deadlines_fire_in_order_on_one_timer_and_reschedule() -> None:
    from backend.realtime.timers import Deadlines

    clock = [100.0]
    deadlines = Deadlines(clock=lambda: clock[0])
    fired: list[tuple[str, float]] = []

    def cb(name: str, again: float | None = None) -> Any:
        def run(now: float) -> float | None:
            fired.append((name, now))
            return None if again is None else now + again

        return run

    deadlines.add(100.03, cb("late"))
    cancelled = deadlines.add(100.01, cb("cancelled"))
    deadlines.add(100.02, cb("repeats", again=0.02))
    deadlines.add(100.005, cb("early"))  # earlier than the armed timer: re-armed
    cancelled.cancel()
    assert len(deadlines) == 3
    for step in (100.006, 100.021, 100.031, 100.045):
        clock[0] = step
        await asyncio.sleep(0.03)  # the loop timer fires on the real clock; `now` comes from ours
    deadlines.close()
    assert [name for name, _ in fired] == ["early", "repeats", "late", "repeats"]
    assert all(now >= 100.005 for _, now in fired)


async def test_a_failing_deadline_callback_does_not_stop_the_others(caplog: Any) -> None:
    from backend.realtime.timers import Deadlines

    deadlines = Deadlines()
    ran: list[str] = []

    def boom(now: float) -> float | None:
        raise ValueError("bug")

    deadlines.add(time.monotonic(), boom)
    deadlines.add(time.monotonic(), lambda now: ran.append("ok") or None)
    await asyncio.sleep(0.05)
    deadlines.close()
    assert ran == ["ok"] and "deadline callback failed" in caplog.text
