"""A node on SIGTERM (`backend.cli.DashboardServer`): /readyz answers 503 from the moment the signal arrives while the
open sockets keep being served; only after DASHBOARD_DRAIN_DELAY_MS do they get the restart hint and close 1012."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.cluster import Node
from bench.env import free_port

pytestmark = pytest.mark.anyio
DRAIN_DELAY_MS = 1500
SECRET = "drain-test-secret-" + "x" * 40


async def frames_until_closed(ws: object, into: list[tuple[float, dict | int]]) -> None:
    """Record (monotonic time, frame) for every frame, then (time, close code)."""
    try:
        async for text in ws:  # type: ignore[attr-defined]
            into.append((time.monotonic(), json.loads(text)))
    except ConnectionClosed:
        pass
    into.append((time.monotonic(), ws.close_code))  # type: ignore[attr-defined]


async def test_sigterm_readyz_answers_503_at_once_and_the_restart_hint_waits_for_the_drain_delay(tmp_path: Path) -> None:
    node = Node("node", free_port(), {
        "DASHBOARD_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "DASHBOARD_VAR_DIR": str(tmp_path),
        "DASHBOARD_JWT_SECRET": SECRET, "DASHBOARD_DEMO": "1", "DASHBOARD_LOG_LEVEL": "warning",
        "DASHBOARD_DRAIN_DELAY_MS": str(DRAIN_DELAY_MS), "DASHBOARD_RESTART_WINDOW_MS": "1000",
    }, tmp_path / "node.log").start()
    try:
        async with httpx.AsyncClient(base_url=node.url, timeout=5, trust_env=False) as http:
            login = await http.post("/api/auth/login", json={"username": "alice", "password": "alice-demo"})
            token = login.json()["token"]
            ws_url = f"ws://127.0.0.1:{node.port}/ws/status-updates"
            protocols = ["dashboard.v1", "bearer." + token]
            async with connect(ws_url, subprotocols=protocols, proxy=None) as ws:  # type: ignore[arg-type]
                assert json.loads(await ws.recv())["type"] == "connected"
                await ws.send(json.dumps({"action": "subscribe", "projectId": "apollo"}))
                assert json.loads(await ws.recv())["type"] == "subscribed"
                seen: list[tuple[float, dict | int]] = []
                reader = asyncio.create_task(frames_until_closed(ws, seen))
                assert (await http.get("/readyz")).status_code == 200
                signalled = time.monotonic()
                os.kill(node.pid, signal.SIGTERM)  # type: ignore[arg-type]
                answers = []
                while time.monotonic() - signalled < DRAIN_DELAY_MS / 1000 * 0.6:
                    answers.append((await http.get("/readyz")).status_code)
                assert answers and set(answers) == {503}, f"/readyz after SIGTERM answered {answers}"
                # While draining, a change still reaches the open socket...
                stories = (await http.get("/api/projects/apollo/stories",
                                          headers={"Authorization": "Bearer " + token})).json()
                story = stories["stories"][0] if isinstance(stories, dict) else stories[0]
                target = "done" if story["status"] != "done" else "todo"
                moved = await http.patch(f"/api/stories/{story['id']}", json={"status": target},
                                         headers={"Authorization": "Bearer " + token})
                assert moved.status_code == 200, moved.text
                # ...and a new socket is turned away with the restart hint (the load balancer should not send it).
                async with connect(ws_url, subprotocols=protocols, proxy=None) as late:  # type: ignore[arg-type]
                    assert json.loads(await late.recv()) == {"type": "restart", "reconnectWithinMs": 1000}
                    with pytest.raises(ConnectionClosed):
                        await late.recv()
                    assert late.close_code == 1012
                await asyncio.wait_for(reader, 15)
        kinds = [(round(t - signalled, 3), f if isinstance(f, int) else f.get("type")) for t, f in seen]
        restart_at = next(t for t, f in seen if isinstance(f, dict) and f.get("type") == "restart")
        assert restart_at - signalled >= DRAIN_DELAY_MS / 1000 * 0.9, f"restart hint too early: {kinds}"
        assert any(isinstance(f, dict) and f.get("type") == "event" and t < restart_at for t, f in seen), \
            f"no event delivered during the drain delay: {kinds}"
        assert seen[-1][1] == 1012, kinds
        assert node.proc is not None and node.proc.wait(20) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    finally:
        node.kill()
