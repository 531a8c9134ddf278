"""deploy/ as the tests use it: HAProxy (deploy/haproxy.cfg) in front of two nodes on PostgreSQL and Redis, every
process started here on free ports. HTTP and WebSocket through the proxy, X-Forwarded-For, header timeouts,
tunnel timeout versus heartbeat, a node draining out of the proxy before it sends the restart hint, JSON errors when
no node is ready; and the committed files themselves (haproxy -c, systemd-analyze verify, timeouts in step)."""

from __future__ import annotations

import asyncio
import configparser
import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import httpx
import pytest
from cluster_helpers import NODE_ENV, PROXY_ENV, live_socket, login, require_cluster_binaries

from backend.cli import DRAIN_WAIT_S, GRACEFUL_SHUTDOWN_S
from backend.settings import Settings
from bench.cluster import HAPROXY, HAPROXY_CFG, Cluster, http_status

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "dashboard.service"
HEARTBEAT_MS = 600  # this module's nodes ping every 0.6 s ...
TUNNEL_TIMEOUT_S = 2  # ... so an idle-looking WebSocket is never idle for the proxy's 2 s
HTTP_REQUEST_TIMEOUT_S = 1


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_cluster_binaries()
    node_env = dict(NODE_ENV, DASHBOARD_HEARTBEAT_INTERVAL_MS=str(HEARTBEAT_MS))
    proxy_env = dict(PROXY_ENV, PROXY_TUNNEL_TIMEOUT=f"{TUNNEL_TIMEOUT_S}s",
                     PROXY_HTTP_REQUEST_TIMEOUT=f"{HTTP_REQUEST_TIMEOUT_S}s")
    with Cluster(node_env=node_env, proxy_env=proxy_env) as running:
        yield running


def _duration_s(text: str) -> float:
    value, unit = re.fullmatch(r"(\d+)(ms|s|m)?", text).groups()  # type: ignore[union-attr]
    return int(value) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 0.001}[unit]


def _cfg_default(name: str) -> str:
    """The default after the dash in `"${NAME-default}"` in deploy/haproxy.cfg."""
    match = re.search(r'"\$\{' + name + r'-([^}]*)\}"', HAPROXY_CFG.read_text())
    assert match, f"{name} not found in haproxy.cfg"
    return match.group(1)


def test_the_committed_deploy_files_are_valid_and_their_timeouts_suit_the_heartbeat(tmp_path: Path) -> None:
    if not HAPROXY:
        pytest.skip("haproxy is not installed (make test installs it)")
    env = {"PATH": "/usr/bin:/bin"}  # the defaults written in the file, nothing from this environment
    checked = subprocess.run([HAPROXY, "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    defaults = Settings()
    assert _duration_s(_cfg_default("PROXY_TUNNEL_TIMEOUT")) > 2 * defaults.heartbeat_interval_ms / 1000
    assert 0 < _duration_s(_cfg_default("PROXY_HTTP_REQUEST_TIMEOUT")) <= 10

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    text = UNIT.read_text()
    unit.read_string(text)
    service = unit["Service"]
    assert "dashboard serve" in service["ExecStart"] and service["KillSignal"] == "SIGTERM"
    names = {f"DASHBOARD_{f.name.upper()}" for f in fields(Settings)}
    assert set(re.findall(r"DASHBOARD_[A-Z_]+", text)) <= names, "the unit names a setting that does not exist"
    drain_ms = int(re.search(r"DASHBOARD_DRAIN_DELAY_MS=(\d+)", text).group(1))  # type: ignore[union-attr]
    detection_s = _duration_s(_cfg_default("PROXY_CHECK_INTER")) + _duration_s(_cfg_default("PROXY_CHECK_FASTINTER"))
    assert drain_ms / 1000 > detection_s, "HAProxy must take the node out before it sends the restart hint"
    stop_s = _duration_s(service["TimeoutStopSec"].strip() + "s")
    assert stop_s > drain_ms / 1000 + DRAIN_WAIT_S + GRACEFUL_SHUTDOWN_S
    if shutil.which("systemd-analyze"):  # the unit as installed under /opt/dashboard, pointed at this checkout
        local = tmp_path / "dashboard.service"
        local.write_text(text.replace("/opt/dashboard", str(ROOT)))
        verified = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stdout + verified.stderr


async def node_epoch(cluster: Cluster, index: int, token: str) -> str:
    """The `connected` epoch of a node (each node's bus has its own): tells which node a proxied socket reached."""
    async with live_socket(f"ws://127.0.0.1:{cluster.node(index).port}/ws/status-updates", token, None) as sock:
        return str(sock.of_type("connected")[0]["epoch"])


async def test_http_and_websockets_through_the_proxy_are_spread_over_both_nodes(cluster: Cluster) -> None:
    token = await login(cluster.url)
    epochs = {await node_epoch(cluster, 0, token): "node1", await node_epoch(cluster, 1, token): "node2"}
    async with contextlib.AsyncExitStack() as stack:
        socks = [await stack.enter_async_context(live_socket(cluster.ws_url, token)) for _ in range(4)]
        reached = sorted(epochs[s.of_type("connected")[0]["epoch"]] for s in socks)
        assert reached == ["node1", "node1", "node2", "node2"], "leastconn puts two sockets on each node"
        async with httpx.AsyncClient(base_url=cluster.url, timeout=10, trust_env=False) as http:
            headers = {"Authorization": "Bearer " + token}
            stories = (await http.get("/api/projects/apollo/stories", headers=headers)).json()
            story = (stories["stories"] if isinstance(stories, dict) else stories)[0]
            status = "review" if story["status"] != "review" else "todo"
            moved = await http.patch(f"/api/stories/{story['id']}", json={"status": status},
                                     headers={**headers, "X-Client-Mutation-Id": "proxy-1"})
            assert moved.status_code == 200, moved.text
        for sock in socks:  # committed through one node, delivered by both
            await sock.until(lambda s=sock: any(e["data"].get("clientMutationId") == "proxy-1"  # type: ignore[misc]
                                                for e in s.of_type("event")), "the change on every socket")


async def test_nodes_see_the_client_address_from_x_forwarded_for_and_a_client_cannot_forge_it(cluster: Cluster) -> None:
    """DASHBOARD_TRUSTED_PROXIES=127.0.0.1 (HAProxy's address): sign-in limits count per real client. Clients come
    from 127.0.0.2 and 127.0.0.3; the first one sends a forged X-Forwarded-For on every attempt, which the proxy
    drops. After 20 failures 127.0.0.2 is refused (429) and 127.0.0.3 is not."""
    async def attempt(source: str, n: int) -> int:
        transport = httpx.AsyncHTTPTransport(local_address=source)
        async with httpx.AsyncClient(base_url=cluster.url, transport=transport, timeout=10, trust_env=False) as http:
            response = await http.post("/api/auth/login", json={"username": f"nobody-{source}-{n}", "password": "x"},
                                       headers={"X-Forwarded-For": f"198.51.100.{n}"})
            return response.status_code

    first = [await attempt("127.0.0.2", n) for n in range(20)]
    assert set(first) == {401}, first
    assert await attempt("127.0.0.2", 20) == 429, "the 21st failure from one client address is refused"
    assert await attempt("127.0.0.3", 0) == 401, "another client behind the same proxy is not"


def test_a_request_head_trickling_in_is_cut_after_the_http_request_timeout(cluster: Cluster) -> None:
    with socket.create_connection(("127.0.0.1", cluster.proxy_port), timeout=10) as sock:
        sock.sendall(b"GET /api/config HTTP/1.1\r\nHost: dashboard\r\n")
        started = time.monotonic()
        reply = b""
        with contextlib.suppress(OSError):
            while time.monotonic() - started < HTTP_REQUEST_TIMEOUT_S + 5:
                sock.sendall(b"X-Slow: 1\r\n")  # one header line every 0.2 s: never idle, never complete
                sock.settimeout(0.2)
                with contextlib.suppress(TimeoutError):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert elapsed < HTTP_REQUEST_TIMEOUT_S + 3


async def test_a_websocket_outlives_the_tunnel_timeout_because_heartbeats_cross_it(cluster: Cluster) -> None:
    token = await login(cluster.url)
    async with live_socket(cluster.ws_url, token) as sock:
        await asyncio.sleep(TUNNEL_TIMEOUT_S * 3)  # nothing but pings and pongs
        assert sock.closed_at is None, "the proxy cut a live WebSocket"
        await sock.ws.send(json.dumps({"action": "ping"}))
        await sock.until(lambda: sock.of_type("pong"), "a pong through the same socket")


async def test_a_draining_node_leaves_the_proxy_before_it_sends_the_restart_hint(cluster: Cluster) -> None:
    token = await login(cluster.url)
    node1, proxy = cluster.node(0), cluster.proxy
    assert proxy is not None
    epoch2 = await node_epoch(cluster, 1, token)
    async with live_socket(f"ws://127.0.0.1:{node1.port}/ws/status-updates", token) as on_node1:
        node1.term(wait=False)
        signalled = time.monotonic()
        proxy.wait_status("node1", "DOWN", 10)
        down_at = time.monotonic()
        async with live_socket(cluster.ws_url, token) as newcomer:  # meanwhile: new sockets go to node2, accepted
            assert newcomer.of_type("connected")[0]["epoch"] == epoch2
        await on_node1.until(lambda: on_node1.of_type("restart"), "the restart hint", timeout=15)
        hint_at = next(t for t, f in on_node1.frames if f.get("type") == "restart")
        assert down_at < hint_at, (f"HAProxy marked node1 down {down_at - signalled:.2f}s after SIGTERM, "
                                   f"the hint came at {hint_at - signalled:.2f}s")
    assert node1.proc is not None and node1.proc.wait(20) is not None
    node1.start()
    proxy.wait_status("node1", "UP", 20)


async def test_with_no_node_ready_the_proxy_answers_a_json_503_and_recovers_by_itself(cluster: Cluster) -> None:
    proxy = cluster.proxy
    assert proxy is not None
    cluster.redis.stop()  # both nodes: /readyz 503 (bus unreachable)
    try:
        proxy.wait_status("node1", "DOWN", 10)
        proxy.wait_status("node2", "DOWN", 10)
        async with httpx.AsyncClient(base_url=cluster.url, timeout=10, trust_env=False) as http:
            response = await http.get("/api/config")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json" and response.headers["retry-after"] == "1"
        assert response.json()["error"] == "unavailable"
    finally:
        cluster.redis.start()
    proxy.wait_status("node1", "UP", 20)
    proxy.wait_status("node2", "UP", 20)
    assert http_status(cluster.url + "/api/config") == 200
