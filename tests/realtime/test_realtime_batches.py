"""`dashboard.v2` batching without sockets: `batches.frames_for`, the hub's per-tick frames shared by every
subscriber, changes held together across awaits, the backlog merged in an outbox, batched replays, and the
`dashboard.v1` frames left exactly as they were."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from backend.bus import Event
from backend.bus.memory import MemoryBus
from backend.metrics import Metrics
from backend.realtime import batches
from backend.realtime.hub import Hub
from backend.realtime.outbox import Outbox
from backend.realtime.session import Since

from realtime_harness import FakeStore, make_settings

pytestmark = pytest.mark.anyio


class FakeSocket:
    """Records what is sent; `writable` cleared = the client stopped reading (sends wait)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.writable = asyncio.Event()
        self.writable.set()

    async def send_text(self, data: str) -> None:
        await self.writable.wait()
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        await self.writable.wait()


async def _settle(rounds: int = 4) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def _event(seq: int, event_type: str = "project.updated", epoch: str = "e1", project: str = "apollo") -> Event:
    return Event(project, event_type, seq, epoch, 0, {"n": seq})


def _unpack(frames: list[str]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for text in frames:
        message = json.loads(text)
        if message["type"] == "batch":
            events.extend(message["events"])
        elif message["type"] == "event":
            events.append(message)
    return events


async def _hub(bus: MemoryBus, **settings: Any) -> Hub:
    hub = Hub(make_settings(**settings), bus, Metrics(), FakeStore())
    await hub.start()
    return hub


def _attach(outbox: Outbox) -> FakeSocket:
    socket = FakeSocket()
    outbox.attach(socket, lambda: None)
    return socket


async def _change(bus: MemoryBus, project: str, n: int, *, pause: int = 0) -> None:
    """One change as backend/changes.py publishes it: an opening event, then `project.updated`; `pause` loop
    turns between them (a bus that awaits I/O, or a relay reading an outbox)."""
    await bus.publish(project, "story.status.changed", {"n": n})
    for _ in range(pause):
        await asyncio.sleep(0)
    await bus.publish(project, "project.updated", {"n": n})


# -- frames_for ----------------------------------------------------------------------------------


def test_a_lone_event_is_a_plain_event_frame_and_several_are_one_batch() -> None:
    [single] = batches.frames_for([_event(1)])
    assert single.text == _event(1).frame and single.size == len(single.text)
    [frame] = batches.frames_for([_event(1), _event(2), _event(3)])
    message = json.loads(frame.text)
    assert message["type"] == "batch" and [e["seq"] for e in message["events"]] == [1, 2, 3]
    assert message["events"][0] == json.loads(_event(1).frame)  # each event exactly as v1 sends it
    assert (frame.epoch, frame.first_seq, frame.last_seq, frame.size) == ("e1", 1, 3, len(frame.text))


def test_frames_are_bounded_and_never_split_a_change() -> None:
    events = []
    for n in range(1, 126):  # 125 changes = 250 events
        events.append(_event(2 * n - 1, "story.status.changed"))
        events.append(_event(2 * n))
    frames = batches.frames_for(events)
    assert [len(f) for f in frames] == [100, 100, 50]
    assert all(json.loads(f.parts[0])["eventType"] == "story.status.changed" for f in frames)
    odd = [_event(n) for n in range(1, 100)] + [_event(100, "story.status.changed"), _event(101)]
    assert [len(f) for f in batches.frames_for(odd)] == [99, 2]  # the change moves to the next frame whole
    big = [_event(n) for n in range(1, 4)]
    big = [Event("apollo", "project.updated", e.seq, "e1", 0, {"pad": "x" * 40_000}) for e in big]
    assert [len(f) for f in batches.frames_for(big)] == [1, 1, 1]  # 64 KiB per frame
    assert all(f.size <= batches.MAX_CHARS for f in batches.frames_for(big))


def test_frames_spanning_two_epochs_say_so() -> None:
    [frame] = batches.frames_for([_event(7, epoch="old"), _event(1, epoch="new")])
    assert frame.epoch is None


# -- the hub: one frame per tick, shared --------------------------------------------------------


async def test_a_ticks_events_go_to_every_v2_subscriber_as_one_shared_string_and_to_v1_unchanged() -> None:
    bus = MemoryBus(make_settings())
    hub = await _hub(bus)
    v2 = [hub.connect(f"c{i}", "alice", batched=True) for i in range(3)]
    v1 = hub.connect("old", "alice")
    sockets = [_attach(o) for o in (*v2, v1)]
    for outbox in (*v2, v1):
        await hub.subscribe(outbox, "apollo", None)
    await _settle()
    for socket in sockets:
        socket.sent.clear()
    for n in range(3):
        await _change(bus, "apollo", n)  # six events in one tick
    await _settle()
    texts = [s.sent for s in sockets[:3]]
    assert all(len(t) == 1 for t in texts)
    assert texts[0][0] is texts[1][0] is texts[2][0]  # serialised once, the same string for everyone
    assert [e["seq"] for e in _unpack(texts[0])] == [1, 2, 3, 4, 5, 6]
    history = await bus.replay("apollo", bus.epoch, 0)
    assert history is not None
    assert sockets[3].sent == [e.frame for e in history]  # v1: today's frames, one per event
    assert hub.metrics.registry.get_sample_value("websocket_events_delivered_total") == 24


async def test_a_changes_events_share_a_frame_even_when_the_bus_awaits_between_them() -> None:
    bus = MemoryBus(make_settings())
    hub = await _hub(bus)
    outbox = hub.connect("c", "alice", batched=True)
    socket = _attach(outbox)
    await hub.subscribe(outbox, "apollo", None)
    await _settle()
    socket.sent.clear()
    await _change(bus, "apollo", 1, pause=5)
    await _settle()
    assert len(socket.sent) == 1
    assert [e["eventType"] for e in _unpack(socket.sent)] == ["story.status.changed", "project.updated"]


async def test_an_unfinished_change_is_held_only_for_a_bounded_time() -> None:
    bus = MemoryBus(make_settings())
    hub = await _hub(bus)
    hub.change_hold_s = 0.05
    outbox = hub.connect("c", "alice", batched=True)
    socket = _attach(outbox)
    await hub.subscribe(outbox, "apollo", None)
    await _settle()
    socket.sent.clear()
    await bus.publish("apollo", "story.created", {})  # its project.updated never comes (e.g. it failed)
    await _settle()
    assert socket.sent == []
    await asyncio.wait_for(_until(lambda: socket.sent), 2)
    assert [e["eventType"] for e in _unpack(socket.sent)] == ["story.created"]


async def test_a_backlog_is_merged_into_few_bounded_frames_in_order() -> None:
    bus = MemoryBus(make_settings())
    hub = await _hub(bus, send_queue_bytes=10_000_000)
    slow, fast = hub.connect("slow", "alice", batched=True), hub.connect("fast", "alice", batched=True)
    slow_socket, fast_socket = _attach(slow), _attach(fast)
    for outbox in (slow, fast):
        await hub.subscribe(outbox, "apollo", None)
    await _settle()
    slow_socket.writable.clear()  # the slow client stops reading
    for n in range(120):
        await _change(bus, "apollo", n)
        await _settle()  # one change per tick
    assert len(fast_socket.sent) >= 120  # the fast one got a frame per tick
    assert len(slow) == 3  # 239 events behind the one stuck in the transport: 100 + 100 + 39
    slow_socket.writable.set()
    await _settle(10)
    events = _unpack(slow_socket.sent[-4:])
    assert [e["seq"] for e in events] == list(range(1, 241))
    assert all(len(json.loads(text).get("events", [1])) <= 100 for text in slow_socket.sent)
    assert slow.queued_bytes == 0 and slow.close_code is None


async def test_a_resume_replays_in_batches_then_live_events_follow() -> None:
    bus = MemoryBus(make_settings())
    hub = await _hub(bus)
    for n in range(150):
        await _change(bus, "apollo", n)
    outbox = hub.connect("c", "alice", batched=True)
    await hub.subscribe(outbox, "apollo", Since(bus.epoch, 50))
    messages = [json.loads(text) for text in outbox.take()]
    assert [m["type"] for m in messages] == ["batch", "batch", "batch", "subscribed"]
    assert [e["seq"] for e in _unpack([json.dumps(m) for m in messages])] == list(range(51, 301))
    assert messages[-1]["recovered"] is True and messages[-1]["replayed"] == 250


async def test_a_v2_subscriber_whose_replay_overlaps_the_tick_gets_only_what_is_new() -> None:
    bus = MemoryBus(make_settings())
    hub = await _hub(bus)
    early = hub.connect("early", "alice", batched=True)
    await hub.subscribe(early, "apollo", None)
    await bus.publish("apollo", "project.updated", {"n": 1})
    await bus.publish("apollo", "project.updated", {"n": 2})
    late = hub.connect("late", "alice", batched=True)
    await hub.subscribe(late, "apollo", Since(bus.epoch, 1))  # replays seq 2, before the tick is fanned out
    await _settle()
    assert [e["seq"] for e in _unpack(early.take())] == [1, 2]
    assert [e["seq"] for e in _unpack(late.take())] == [2]  # replayed once, not again from the tick


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


# -- end to end: REST change → outbox → relay → bus → hub → one frame ---------------------------


@pytest.mark.parametrize("bus", ["memory", "redis"])
async def test_a_rest_change_reaches_a_v2_client_as_one_batch_through_the_relay(bus: str, request: Any) -> None:
    """The relay awaits the database between a change's two events (and Redis adds its own round trips): the hub
    still sends them in one frame."""
    import httpx

    from realtime_harness import V2, LiveServer, open_ws, recv, recv_type, subscribe, token_for

    overrides: dict[str, Any] = {"demo": True}
    if bus == "redis":
        overrides["bus_url"] = request.getfixturevalue("redis_url")
    settings = make_settings(**overrides)
    with LiveServer(settings) as live:
        async with open_ws(live, token_for(settings), protocols=V2) as ws, \
                httpx.AsyncClient(base_url=live.http, timeout=10, trust_env=False) as http:
            await recv_type(ws, "connected")
            await subscribe(ws, "apollo")
            login = await http.post("/api/auth/login", json={"username": "alice", "password": "alice-demo"})
            headers = {"Authorization": "Bearer " + login.json()["token"]}
            stories = (await http.get("/api/projects/apollo/stories", headers=headers)).json()
            for n, target in enumerate(("blocked", "review", "done")):
                story = stories[n]
                if story["status"] == target:
                    continue
                answer = await http.patch(f"/api/stories/{story['id']}", json={"status": target}, headers=headers)
                assert answer.status_code == 200
                frame = await recv(ws)
                assert frame["type"] == "batch", frame
                assert [e["eventType"] for e in frame["events"]] == ["story.status.changed", "project.updated"]
                assert frame["events"][0]["data"]["to"] == target
                assert frame["events"][1]["seq"] == frame["events"][0]["seq"] + 1
