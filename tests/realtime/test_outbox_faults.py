"""A committed change always reaches subscribers, or forces a resync: against a real `redis-server` that is killed,
paused, and a server process that dies between commit and publish."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from realtime_harness import LiveServer, make_settings, open_ws, recv, recv_type, send, subscribe, token_for
from redis_server import REDIS_BINARY, SKIP_REASON, RedisServer

from e2e.harness import DashboardServer, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.redis]
STATUSES = ("todo", "in_progress", "review", "done", "blocked")


@pytest.fixture
def redis() -> Any:
    if not REDIS_BINARY:
        pytest.skip(SKIP_REASON)
    with RedisServer() as server:
        yield server


class Listener:
    """Every frame one socket receives, read in the background."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await recv(self.ws, timeout=3600)
                if frame["type"] == "ping":
                    await send(self.ws, {"action": "pong"})
                self.frames.append(frame)

    def events(self, kind: str = "story.status.changed") -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "event" and f["eventType"] == kind]

    def mutation_ids(self) -> list[str]:
        return [e["data"]["clientMutationId"] for e in self.events() if "clientMutationId" in e["data"]]

    async def until(self, predicate: Any, what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"waiting for {what}; got {len(self.frames)} frames")
            await asyncio.sleep(0.02)


async def login(http: httpx.AsyncClient) -> dict[str, str]:
    r = await http.post("/api/auth/login", json={"username": "alice", "password": "alice-demo"})
    r.raise_for_status()
    return {"Authorization": "Bearer " + r.json()["token"]}


def relay_idle(node: LiveServer) -> None:
    assert node.loop is not None
    asyncio.run_coroutine_threadsafe(node.app.state.relay.flushed(20.0), node.loop).result(25)


async def test_redis_killed_with_changes_in_flight_every_change_arrives_once_or_forces_a_resync(redis: RedisServer) -> None:
    settings = make_settings(bus_url=redis.url, demo=True)
    with LiveServer(settings) as node:
        async with open_ws(node, token_for(settings)) as ws, httpx.AsyncClient(base_url=node.http, timeout=10) as http:
            await recv_type(ws, "connected")
            [reply] = await subscribe(ws, "apollo")
            listener = Listener(ws)
            headers = await login(http)
            stories = (await http.get("/api/projects/apollo/stories", headers=headers)).json()
            status = {s["id"]: s["status"] for s in stories}
            committed: list[str] = []  # mutation ids of the PATCHes that changed a story
            for i in range(60):
                if i == 20:
                    redis.kill()
                if i == 40:
                    redis.start()
                story = stories[i % len(stories)]
                mid, target = f"k{i}", STATUSES[i % 5]
                r = await http.patch(f"/api/stories/{story['id']}", json={"status": target},
                                     headers={**headers, "X-Client-Mutation-Id": mid})
                assert r.status_code == 200, r.text  # the change commits whatever the bus does
                if status[story["id"]] != target:
                    committed.append(mid)
                status[story["id"]] = target
            await asyncio.to_thread(relay_idle, node)
            epochs = lambda: {e["epoch"] for e in listener.events()}  # noqa: E731
            # Events committed while Redis was down arrive after it is back (in a new epoch: it lost its history).
            await listener.until(lambda: set(committed[-5:]) <= set(listener.mutation_ids()), "the last changes")
            seen = listener.mutation_ids()
            assert len(seen) == len(set(seen)), "an event was delivered twice"
            missing = [mid for mid in committed if mid not in seen]
            assert set(seen) <= set(committed)
            if missing:  # lost with Redis: the subscriber must have been told to resync (a new epoch) …
                assert len(epochs()) >= 2, f"{len(missing)} changes lost without a new epoch"
        # … and a client resuming from before the loss gets recovered:false.
        async with open_ws(node, token_for(settings)) as again:
            await recv_type(again, "connected")
            messages = await subscribe(again, "apollo", {"epoch": reply["epoch"], "seq": reply["seq"]})
            assert messages[-1]["type"] == "subscribed" and messages[-1]["recovered"] is False


async def test_redis_paused_rest_stays_fast_and_the_events_come_once_when_it_is_back(redis: RedisServer) -> None:
    settings = make_settings(bus_url=redis.url, demo=True)
    with LiveServer(settings) as node:
        async with open_ws(node, token_for(settings)) as ws, httpx.AsyncClient(base_url=node.http, timeout=10) as http:
            await recv_type(ws, "connected")
            await subscribe(ws, "borealis")
            listener = Listener(ws)
            headers = await login(http)
            stories = (await http.get("/api/projects/borealis/stories", headers=headers)).json()
            redis.pause()
            try:
                latencies = []
                status = {s["id"]: s["status"] for s in stories}
                moved: set[str] = set()
                paused_at = time.monotonic()
                i = 0
                while time.monotonic() - paused_at < 3.0:
                    story, target = stories[i % len(stories)], STATUSES[i % 5]
                    started = time.monotonic()
                    r = await http.patch(f"/api/stories/{story['id']}", json={"status": target},
                                         headers={**headers, "X-Client-Mutation-Id": f"p{i}"})
                    latencies.append(time.monotonic() - started)
                    assert r.status_code == 200
                    if status[story["id"]] != target:
                        moved.add(f"p{i}")
                    status[story["id"]] = target
                    i += 1
                    await asyncio.sleep(0.1)  # a change every 0.1 s for the 3 s Redis is stopped
                ready = await http.get("/readyz")
                assert ready.status_code == 503 and ready.json()["bus"] != "ok"
            finally:
                redis.resume()
            assert max(latencies) < 0.2, f"a change took {max(latencies):.3f} s while Redis was paused"
            await listener.until(lambda: moved <= set(listener.mutation_ids()), "the events")
            seen = listener.mutation_ids()
            assert len(seen) == len(set(seen)) and set(seen) == moved
            wait_until(lambda: httpx.get(node.http + "/readyz").status_code == 200, 10, message="ready again")


async def test_a_server_killed_between_commit_and_publish_delivers_the_event_after_restart_once(
    redis: RedisServer, tmp_path: Path
) -> None:
    server = DashboardServer(tmp_path / "node", env={
        "DASHBOARD_BUS_URL": redis.url, "DASHBOARD_FAULT_CRASH_AFTER_COMMIT": "1",
    })
    server.start()
    try:
        settings = make_settings(bus_url=redis.url)
        token = _login_token(server.url)
        headers = {"Authorization": "Bearer " + token}
        story = httpx.get(server.url + "/api/projects/apollo/stories", headers=headers).json()[0]
        target = next(s for s in STATUSES if s != story["status"])
        async with _ws(server, token) as ws:
            await recv_type(ws, "connected")
            [reply] = await subscribe(ws, "apollo")
            with pytest.raises(httpx.HTTPError):  # the process dies before answering
                httpx.patch(server.url + f"/api/stories/{story['id']}", json={"status": target},
                            headers={**headers, "X-Client-Mutation-Id": "crash-1"}, timeout=10)
        server.proc.wait(10)
        assert server.proc.returncode == 70
        server.env.pop("DASHBOARD_FAULT_CRASH_AFTER_COMMIT")
        server.restart()
        assert httpx.get(server.url + f"/api/projects/apollo/stories", headers=headers).json()[0]["status"] == target
        async with _ws(server, token) as ws:
            await recv_type(ws, "connected")
            await send(ws, {"action": "subscribe", "projectId": "apollo",
                            "since": {"epoch": reply["epoch"], "seq": reply["seq"]}})
            listener = Listener(ws)
            await listener.until(lambda: listener.mutation_ids() == ["crash-1"], "the event committed before the crash")
            await listener.until(lambda: any(f["type"] == "subscribed" for f in listener.frames), "the subscribe reply")
            subscribed = next(f for f in listener.frames if f["type"] == "subscribed")
            assert subscribed["recovered"] is True
            await listener.until(lambda: len(listener.events("project.updated")) >= 1, "its project update")
            await asyncio.sleep(1.5)  # a full relay sweep later, still once
            assert listener.mutation_ids() == ["crash-1"]
    finally:
        server.stop()


def _login_token(base: str) -> str:
    r = httpx.post(base + "/api/auth/login", json={"username": "alice", "password": "alice-demo"}, timeout=10)
    r.raise_for_status()
    return str(r.json()["token"])


def _ws(server: DashboardServer, token: str) -> Any:
    from websockets.asyncio.client import connect

    url = server.url.replace("http://", "ws://") + "/ws/status-updates"
    return connect(url, subprotocols=["dashboard.v1", "bearer." + token], open_timeout=5)  # type: ignore[list-item]


async def test_after_a_redis_restart_the_first_subscribe_does_not_fail_on_a_stale_pooled_connection(
    redis: RedisServer,
) -> None:
    settings = make_settings(bus_url=redis.url)
    with LiveServer(settings) as node:
        token = token_for(settings)
        async with open_ws(node, token) as ws:
            await recv_type(ws, "connected")
            for project_id in ("apollo", "borealis"):  # several pooled connections in use
                assert (await subscribe(ws, project_id))[-1]["type"] == "subscribed"
        redis.kill()
        redis.start()
        async with open_ws(node, token) as ws:
            await recv_type(ws, "connected")
            for project_id in ("apollo", "borealis"):
                reply = (await subscribe(ws, project_id))[-1]
                assert reply["type"] == "subscribed", reply


async def test_with_redis_the_sign_in_windows_are_shared_by_every_node(redis: RedisServer) -> None:
    settings = make_settings(bus_url=redis.url, demo=True)
    with LiveServer(settings) as node_a, LiveServer(settings, store=node_a.store) as node_b:
        async with httpx.AsyncClient(timeout=10) as http:
            codes = []
            for n in range(7):
                node = (node_a, node_b)[n % 2]
                r = await http.post(node.http + "/api/auth/login", json={"username": "alice", "password": "wrong"})
                codes.append(r.status_code)
    assert codes == [401] * 5 + [429, 429]  # 5 failures per (address, user), counted across both nodes
