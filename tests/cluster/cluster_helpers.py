"""Settings and small clients shared by the cluster tests: scaled-down timings for the nodes (DASHBOARD_*) and for
HAProxy (PROXY_*, read by deploy/haproxy.cfg), sign-in through the proxy, and a WebSocket that answers pings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from bench.cluster import HAPROXY
from tests.postgres_server import INITDB, _binary

# The per-address socket cap (DASHBOARD_MAX_CONNECTIONS_PER_IP, where the node has it) would see every test client as
# 127.0.0.1: lift it. Unknown DASHBOARD_* variables are ignored by nodes that do not have the setting.
NODE_ENV = {
    "DASHBOARD_HEARTBEAT_INTERVAL_MS": "2000",
    "DASHBOARD_HEARTBEAT_MISSES": "2",
    "DASHBOARD_RECONNECT_BASE_MS": "300",
    "DASHBOARD_RECONNECT_MAX_MS": "3000",
    "DASHBOARD_RECONNECT_MAX_ATTEMPTS": "10",
    "DASHBOARD_CONNECT_TIMEOUT_MS": "5000",
    "DASHBOARD_SUSPENDED_RETRY_MS": "10000",
    "DASHBOARD_RESTART_WINDOW_MS": "2000",
    "DASHBOARD_DRAIN_DELAY_MS": "1000",
    "DASHBOARD_MAX_CONNECTIONS_PER_IP": "0",
    "DASHBOARD_LOG_LEVEL": "warning",
}
# Health checks every 250 ms, 100 ms while a node changes state: a draining node is out within ~0.5 s, well inside
# the nodes' 1 s drain delay.
PROXY_ENV = {
    "PROXY_CHECK_INTER": "250ms",
    "PROXY_CHECK_FASTINTER": "100ms",
    "PROXY_CHECK_DOWNINTER": "250ms",
}


async def login(base: str, username: str = "alice", password: str = "alice-demo") -> str:
    async with httpx.AsyncClient(base_url=base, timeout=10, trust_env=False) as http:
        response = await http.post("/api/auth/login", json={"username": username, "password": password})
        response.raise_for_status()
        return str(response.json()["token"])


def ws_connect(url: str, token: str, **kwargs: Any) -> Any:
    """`async with ws_connect(cluster.ws_url, token) as ws:` (same origin as the proxy, as a browser would be)."""
    origin = url.replace("ws://", "http://").split("/ws/", 1)[0]
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 2)
    return connect(url, subprotocols=["dashboard.v1", "bearer." + token], origin=origin, proxy=None,  # type: ignore[arg-type]
                   ping_interval=None, compression=None, **kwargs)


class Socket:
    """A WebSocket read in the background: answers server pings, keeps every other frame, notes when it closed."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[tuple[float, dict[str, Any]]] = []
        self.closed_at: float | None = None
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for text in self.ws:
                frame = json.loads(text)
                if frame.get("type") == "ping":
                    await self.ws.send('{"action":"pong"}')
                    continue
                self.frames.append((time.monotonic(), frame))
        self.closed_at = time.monotonic()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [f for _, f in self.frames if f.get("type") == kind]

    async def until(self, predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: frames {[f.get('type') for _, f in self.frames][-10:]}")
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def live_socket(url: str, token: str, project: str | None = "apollo") -> AsyncIterator[Socket]:
    """A connected (and, if `project`, subscribed) socket read by a `Socket`."""
    async with ws_connect(url, token) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert first["type"] == "connected", first
        sock = Socket(ws)
        sock.frames.append((time.monotonic(), first))
        if project:
            await ws.send(json.dumps({"action": "subscribe", "projectId": project}))
            await sock.until(lambda: sock.of_type("subscribed"), "subscribed")
        try:
            yield sock
        finally:
            sock.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sock.task


def require_cluster_binaries() -> None:
    """Skip (with what is missing) unless haproxy, redis-server and PostgreSQL are installed (`make test` installs them)."""
    import shutil

    missing = [name for name, found in (("haproxy", HAPROXY), ("redis-server", shutil.which("redis-server")),
                                        ("postgres", INITDB), ("psql", _binary("psql"))) if not found]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (make test installs them)")
