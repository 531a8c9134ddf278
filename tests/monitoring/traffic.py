"""Real traffic against a `LiveServer`: what the monitoring tests drive before they read `/metrics`.

Every helper talks to the server the way its clients do: WebSocket handshakes (good and bad tokens), subscribes
with and without `since`, the `hello` a reconnected client sends, pings, and REST changes that publish events.
"""

from __future__ import annotations

from typing import Any

import httpx
from websockets.exceptions import InvalidStatus

from realtime_harness import TIMEOUT, LiveServer, close_code, open_ws, recv, recv_type, send, subscribe, token_for


async def connect_and_leave(live: LiveServer) -> None:
    """One authenticated connection that pings and closes normally."""
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        await send(ws, {"action": "ping"})
        await recv_type(ws, "pong")


async def refused_handshake(live: LiveServer, token: str | None) -> int | None:
    """A handshake with a bad (or no) token: the server accepts, then closes 4401."""
    try:
        async with open_ws(live, token) as ws:
            code, _ = await close_code(ws)
            return code
    except InvalidStatus:
        return None


async def reconnected_client(live: LiveServer, attempts: int, downtime_ms: int) -> None:
    """What the browser core sends after it got back: `hello` with its attempts and downtime."""
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        await send(ws, {"action": "hello", "reconnectAttempts": attempts, "downtimeMs": downtime_ms})
        await send(ws, {"action": "ping"})
        await recv_type(ws, "pong")


async def move_a_story(live: LiveServer, project_id: str = "apollo") -> dict[str, Any]:
    """A REST change by alice (it publishes `story.status.changed` and `project.updated`)."""
    headers = {"Authorization": "Bearer " + token_for(live.settings, "alice")}
    async with httpx.AsyncClient(base_url=live.http, headers=headers, timeout=TIMEOUT) as http:
        stories = (await http.get(f"/api/projects/{project_id}/stories")).json()
        story = sorted(stories, key=lambda s: s["id"])[0]
        to = "done" if story["status"] != "done" else "todo"
        response = await http.patch(f"/api/stories/{story['id']}", json={"status": to})
        response.raise_for_status()
        return response.json()


async def subscriber_sees_a_change(live: LiveServer) -> dict[str, Any]:
    """Subscribe, make a REST change, and read the event it fans out; returns the last position seen."""
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        [reply] = await subscribe(ws, "apollo")
        assert reply["type"] == "subscribed", reply
        await move_a_story(live)
        while True:
            message = await recv(ws)
            if message["type"] == "event":
                return {"epoch": message["epoch"], "seq": message["seq"]}


async def resume(live: LiveServer, since: dict[str, Any]) -> dict[str, Any]:
    """Subscribe with `since`; returns the `subscribed` reply (recovered or not)."""
    async with open_ws(live, token_for(live.settings)) as ws:
        await recv_type(ws, "connected")
        messages = await subscribe(ws, "apollo", since)
        return messages[-1]


async def all_kinds(live: LiveServer) -> None:
    """Traffic that touches every metric family the dashboard and alerts read."""
    await connect_and_leave(live)
    await refused_handshake(live, "not-a-jwt")
    await reconnected_client(live, 2, 1500)
    position = await subscriber_sees_a_change(live)
    await resume(live, position)  # recovered
    await resume(live, {"epoch": "an-old-epoch", "seq": 1})  # failed: the client would refetch


def render(live: LiveServer) -> str:
    return httpx.get(live.http + "/metrics", timeout=TIMEOUT).text

