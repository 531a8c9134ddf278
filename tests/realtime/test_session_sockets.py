"""The session contract across REST and WebSocket on a real server (issue 12): sign-out kills the access token for
REST and WebSocket at once (open socket closed 4401, handshake refused, in-band hand-over refused), and a stolen
refresh value replayed over REST revokes the session and closes its open sockets; another sign-in of the same
user lives on."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from backend.sessions import COOKIE
from realtime_harness import LiveServer, close_code, make_settings, open_ws, recv, recv_type, send

pytestmark = pytest.mark.anyio
LOGIN = {"username": "alice", "password": "alice-demo"}


async def sign_in(client: httpx.AsyncClient) -> tuple[str, str]:
    """A new sign-in session: (access token, refresh cookie value)."""
    client.cookies.clear()
    response = await client.post("/api/auth/login", json=LOGIN)
    assert response.status_code == 200
    return response.json()["token"], response.cookies[COOKIE]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


async def still_open(ws: Any) -> None:
    await send(ws, {"action": "ping"})
    assert await recv(ws) == {"type": "pong"}


async def test_logout_kills_the_token_for_rest_and_websocket_at_once() -> None:
    settings = make_settings(max_connections_per_user=0)
    with LiveServer(settings) as live:
        async with httpx.AsyncClient(base_url=live.http) as client:
            token, _ = await sign_in(client)
            other, _ = await sign_in(client)  # the same user in another browser
            async with open_ws(live, token) as ws, open_ws(live, other) as ws_other:
                await recv_type(ws, "connected")
                await recv_type(ws_other, "connected")
                response = await client.post("/api/auth/logout", headers=bearer(token))
                assert response.status_code == 204
                code, messages = await close_code(ws)
                assert code == 4401 and messages[-1]["error"] == "session_revoked"
                assert (await client.get("/api/projects", headers=bearer(token))).status_code == 401
                async with open_ws(live, token) as again:  # the handshake with the dead token
                    code, _ = await close_code(again)
                    assert code == 4401
                await send(ws_other, {"action": "auth", "token": token})  # nor can it be handed over in band
                code, _ = await close_code(ws_other)
                assert code == 4401
            async with open_ws(live, other) as ws_other:  # that other sign-in itself is untouched
                await recv_type(ws_other, "connected")
                await still_open(ws_other)
            assert (await client.get("/api/projects", headers=bearer(other))).status_code == 200


async def test_a_replayed_refresh_value_revokes_the_session_and_closes_its_sockets() -> None:
    settings = make_settings(max_connections_per_user=0)
    with LiveServer(settings) as live:
        async with httpx.AsyncClient(base_url=live.http) as client:
            other, _ = await sign_in(client)
            token, first = await sign_in(client)
            rotated = await client.post("/api/auth/refresh", json={})
            assert rotated.status_code == 200
            fresh = rotated.json()["token"]
            async with open_ws(live, fresh) as ws, open_ws(live, other) as ws_other:
                await recv_type(ws, "connected")
                await recv_type(ws_other, "connected")
                client.cookies.clear()
                stolen = await client.post("/api/auth/refresh", json={}, headers={"Cookie": f"{COOKIE}={first}"})
                assert stolen.status_code == 401 and stolen.json() == {
                    "error": "refresh_failed", "reason": "reused", "message": stolen.json()["message"]}
                code, messages = await close_code(ws)
                assert code == 4401 and messages[-1]["error"] == "session_revoked"
                await still_open(ws_other)
            for dead in (token, fresh):
                assert (await client.get("/api/projects", headers=bearer(dead))).status_code == 401
            assert live.metric("dashboard_auth_refresh_total", {"result": "reused"}) == 1
