"""`python -m backend serve` as a real process with the real store and demo data: REST login → WebSocket →
REST change → event; SIGTERM → restart frame + 1012 and a clean exit; no token in any log line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from realtime_harness import SECRET, TIMEOUT, close_code, free_port, recv, recv_type, send

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "server.log"
        self.env = {
            **os.environ,
            "DASHBOARD_VAR_DIR": str(tmp_path),
            "DASHBOARD_DB": str(tmp_path / "dashboard.db"),
            "DASHBOARD_JWT_SECRET": SECRET,
            "DASHBOARD_DEMO": "1",
            "DASHBOARD_DEMO_ACTIVITY": "0",
            "DASHBOARD_BUS_URL": "memory://",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/status-updates"

    def start(self) -> ServerProcess:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not become healthy:\n" + self.log())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise
        finally:
            self._log.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path, DASHBOARD_RESTART_WINDOW_MS="777").start()
    try:
        yield proc
    finally:
        if proc.proc and proc.proc.poll() is None:
            proc.stop()


async def test_serve_end_to_end_then_sigterm_drains_and_logs_no_token(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.base, timeout=TIMEOUT) as http:
        login = await http.post("/api/auth/login", json={"username": "alice", "password": "alice-demo"})
        assert login.status_code == 200, login.text
        token = login.json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        stories = (await http.get("/api/projects/apollo/stories", headers=headers)).json()
        todo = next(s for s in stories if s["status"] == "todo")

        # A command-line client with ?token= (lands in uvicorn's access log, redacted) …
        async with connect(server.ws_url + "?token=" + token, open_timeout=TIMEOUT) as by_query:
            assert (await recv_type(by_query, "connected"))["userId"] == "alice"
        # … and a browser-style client with the bearer subprotocol.
        async with connect(
            server.ws_url, subprotocols=["dashboard.v1", "bearer." + token], open_timeout=TIMEOUT  # type: ignore[list-item]
        ) as ws:
            assert ws.subprotocol == "dashboard.v1"
            await recv_type(ws, "connected")
            await send(ws, {"action": "subscribe", "projectId": "apollo"})
            subscribed = await recv_type(ws, "subscribed")
            await send(ws, {"action": "subscribe", "projectId": "cassini"})
            assert (await recv(ws))["error"] == "forbidden"

            changed = await http.patch(
                f"/api/stories/{todo['id']}", json={"status": "in_progress"},
                headers={**headers, "X-Client-Mutation-Id": "m-1"},
            )
            assert changed.status_code == 200, changed.text
            event = await recv_type(ws, "event")
            assert event["eventType"] == "story.status.changed" and event["seq"] == subscribed["seq"] + 1
            assert event["data"]["storyId"] == todo["id"] and event["data"]["clientMutationId"] == "m-1"

            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            code, messages = await close_code(ws, timeout=10)
        assert code == 1012
        assert {"type": "restart", "reconnectWithinMs": 777} in messages
    assert server.proc is not None
    # uvicorn re-raises the captured SIGTERM after a clean shutdown, so the status is "killed by SIGTERM".
    assert server.proc.wait(20) in (0, -signal.SIGTERM)
    server.stop()

    log = server.log()
    assert token not in log
    assert token.split(".")[2] not in log  # not even the signature part
    assert "token=[REDACTED]" in log  # the access log line of the ?token= connection
    assert "alice / alice-demo" in log and f"http://127.0.0.1:{server.port}/" in log
    events = []
    for line in log.splitlines():
        if line.startswith('{"ts"') and '"logger":"dashboard"' in line:
            events.append(json.loads(line))
    names = [e.get("event") for e in events]
    assert "ws.connect" in names and "ws.subscribe" in names and "server.drain" in names
    assert names.index("server.drain") < names.index("server.stop")  # drained before the lifespan shutdown
    closes = [e for e in events if e.get("event") == "ws.close"]
    assert any(e["code"] == 1012 and e["initiator"] == "server" for e in closes)
    assert any(e.get("event") == "ws.subscribe_forbidden" for e in events)


async def test_serve_rejects_bad_settings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "backend", "serve", "--port", "1"],
        cwd=ROOT, env={**os.environ, "DASHBOARD_HEARTBEAT_INTERVAL_MS": "soon"},
        capture_output=True, timeout=30,
    )
    assert result.returncode == 2
    assert b"DASHBOARD_HEARTBEAT_INTERVAL_MS" in result.stderr


def test_tune_gc_freezes_start_up_objects_and_raises_the_thresholds() -> None:
    import gc

    from backend.cli import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
