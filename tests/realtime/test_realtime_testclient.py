"""The endpoint in-process through Starlette's TestClient (no sockets): the quick checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from backend.app import create_app
from realtime_harness import blocking, demo_store, make_settings, token_for

SETTINGS = make_settings()


@pytest.fixture
def client() -> Iterator[TestClient]:
    store = demo_store()
    with TestClient(create_app(SETTINGS, store=store)) as test_client:
        yield test_client
    blocking(store.close)


def test_connect_subscribe_and_receive(client: TestClient) -> None:
    token = token_for(SETTINGS)
    with client.websocket_connect(SETTINGS.ws_path, subprotocols=["dashboard.v1", "bearer." + token]) as ws:
        assert ws.accepted_subprotocol == "dashboard.v1"
        assert ws.receive_json()["type"] == "connected"
        ws.send_json({"action": "subscribe", "projectId": "apollo"})
        assert ws.receive_json()["type"] == "subscribed"
        client.portal.call(client.app.state.bus.publish, "apollo", "story.created", {"story": {"id": 1}})  # type: ignore[attr-defined]
        event = ws.receive_json()
        assert (event["type"], event["seq"], event["data"]) == ("event", 1, {"story": {"id": 1}})


def test_missing_token_is_accepted_then_closed_4401(client: TestClient) -> None:
    with client.websocket_connect(SETTINGS.ws_path, subprotocols=["dashboard.v1"]) as ws:
        assert ws.receive_json() == {"type": "error", "error": "Authentication failed", "message": "missing token"}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 4401


def test_malformed_json_keeps_the_connection(client: TestClient) -> None:
    with client.websocket_connect(SETTINGS.ws_path + "?token=" + token_for(SETTINGS)) as ws:
        ws.receive_json()
        ws.send_text("{oops")
        assert ws.receive_json()["error"] == "invalid_message"
        ws.send_json({"action": "ping"})
        assert ws.receive_json() == {"type": "pong"}


def test_drain_makes_healthz_503_and_closes_clients_1012(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    with client.websocket_connect(SETTINGS.ws_path + "?token=" + token_for(SETTINGS)) as ws:
        ws.receive_json()
        client.portal.call(client.app.state.hub.drain, 1.0)  # type: ignore[attr-defined]
        assert ws.receive_json() == {"type": "restart", "reconnectWithinMs": SETTINGS.restart_window_ms}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1012
    assert client.get("/healthz").status_code == 503


def test_subscribe_while_the_bus_is_down_answers_unavailable() -> None:
    from backend.bus.memory import MemoryBus

    class DownBus(MemoryBus):
        async def position(self, project_id: str) -> tuple[str, int]:
            raise ConnectionError("bus down")

    store = demo_store()
    app = create_app(SETTINGS, store=store, bus=DownBus(SETTINGS))
    with TestClient(app) as client, client.websocket_connect(SETTINGS.ws_path + "?token=" + token_for(SETTINGS)) as ws:
        ws.receive_json()
        ws.send_json({"action": "subscribe", "projectId": "apollo"})
        reply = ws.receive_json()
        assert (reply["error"], reply["projectId"]) == ("unavailable", "apollo")
        ws.send_json({"action": "ping"})
        assert ws.receive_json() == {"type": "pong"}
    blocking(store.close)
