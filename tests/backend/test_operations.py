"""Readiness, protected metrics, the JWT key read once, `dashboard migrate`, and change requests over REST:
idempotent repeats, preconditions, absurd ids."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fixtures import Api, Recorder, TestClient, make_settings

from backend import settings as settings_module
from backend.app import create_app
from backend.bus.memory import MemoryBus
from backend.settings import Settings
from backend.store import Unavailable

ROOT = Path(__file__).resolve().parents[2]


def first_story(api: Api, project_id: str, status: str) -> dict[str, Any]:
    return next(s for s in api.store.list_stories(project_id) if s["status"] == status)


# -- readiness --------------------------------------------------------------------------------------


def test_readyz_is_ok_when_store_and_bus_answer_and_503_when_either_does_not(api: Api) -> None:
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "node": "ok", "store": "ok", "bus": "ok"}
    store = api.app.state.store

    async def broken() -> None:
        raise Unavailable("database restarting")

    original = store.ping
    store.ping = broken
    try:
        down = api.client.get("/readyz")
    finally:
        store.ping = original
    assert down.status_code == 503 and down.json()["store"] == "Unavailable"
    bus = api.app.state.bus

    async def bus_down() -> None:
        raise ConnectionError("redis down")

    bus.ping = bus_down
    try:
        assert api.client.get("/readyz").json()["bus"] == "ConnectionError"
    finally:
        del bus.ping
    api.app.state.hub.draining = True
    try:
        draining = api.client.get("/readyz")
        assert draining.status_code == 503 and draining.json()["node"] == "draining"
    finally:
        api.app.state.hub.draining = False


def test_a_database_outage_answers_503_json_and_recovers(api: Api) -> None:
    engine = api.app.state.store.engine
    original = engine.run

    async def down(request: Any) -> Any:
        raise Unavailable("postgres: ConnectionDoesNotExistError")

    engine.run = down
    try:
        r = api.request("GET", "/api/projects")
    finally:
        engine.run = original
    assert r.status_code == 503 and r.json()["error"] == "unavailable" and r.headers["retry-after"] == "1"
    assert api.request("GET", "/api/projects").status_code == 200


# -- metrics ----------------------------------------------------------------------------------------


def test_metrics_can_need_a_token() -> None:
    settings = make_settings(metrics_token="m" * 24)
    with TestClient(create_app(settings, bus=MemoryBus(settings))) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 24})
        assert ok.status_code == 200 and "websocket_active_connections" in ok.text


def test_metrics_on_an_internal_port_only(tmp_path: Path) -> None:
    from e2e.harness import DashboardServer, free_port

    port = free_port()
    server = DashboardServer(tmp_path, env={"DASHBOARD_METRICS_PORT": str(port)})
    server.start()
    try:
        assert httpx.get(server.url + "/metrics").status_code == 404
        internal = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert internal.status_code == 200 and "http_requests_total" in internal.text
    finally:
        server.stop()


# -- the JWT key --------------------------------------------------------------------------------------


def test_generated_jwt_key_is_read_from_disk_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(var_dir=str(tmp_path))
    key = settings.resolved_jwt_secret()
    reads: list[Path] = []
    original = Path.read_text

    def counting(self: Path, *args: Any, **kwargs: Any) -> str:
        reads.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counting)
    for _ in range(5):
        assert settings.resolved_jwt_secret() == key
    assert reads == []


def test_processes_starting_together_agree_on_one_generated_key(tmp_path: Path) -> None:
    code = (
        "import sys; from backend.settings import Settings; "
        "sys.stdout.write(Settings(var_dir=sys.argv[1]).resolved_jwt_secret().decode())"
    )
    for round_ in range(5):
        var = tmp_path / f"var{round_}"
        procs = [
            subprocess.Popen([sys.executable, "-c", code, str(var)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        keys = {p.communicate(timeout=60)[0] for p in procs}
        assert len(keys) == 1 and len(keys.pop()) >= 32
        assert [p.name for p in var.iterdir()] == ["jwt-secret"]  # no temporary file left


def test_threads_in_one_process_share_the_cached_key(tmp_path: Path) -> None:
    settings_module._SECRETS.clear()
    settings = Settings(var_dir=str(tmp_path))
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(settings.resolved_jwt_secret())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(keys)) == 1


# -- dashboard migrate --------------------------------------------------------------------------------


def test_dashboard_migrate_is_idempotent(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
    env["DASHBOARD_DATABASE_URL"] = f"sqlite:///{tmp_path}/m.db"
    env["DASHBOARD_JWT_SECRET"] = "j" * 40
    first = subprocess.run([sys.executable, "-m", "backend", "migrate"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "applied 1, 2" in first.stdout
    again = subprocess.run([sys.executable, "-m", "backend", "migrate"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "up to date" in again.stdout


# -- change requests over REST ------------------------------------------------------------------------


def test_the_same_mutation_id_twice_is_one_change_one_event_the_same_answer(api: Api, recorder: Recorder) -> None:
    story = first_story(api, "apollo", "todo")
    headers = {"X-Client-Mutation-Id": "retry-1"}
    first = api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "review"}, headers=headers)
    second = api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "review"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert "idempotent-replayed" not in first.headers and second.headers["idempotent-replayed"] == "true"
    assert recorder.types() == ["story.status.changed", "project.updated"]
    reused = api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "done"}, headers=headers)
    assert reused.status_code == 422 and reused.json()["error"] == "idempotency_key_reused"
    created = api.request("POST", "/api/projects/apollo/escalations", json={"title": "t"}, headers={"X-Client-Mutation-Id": "e-1"})
    again = api.request("POST", "/api/projects/apollo/escalations", json={"title": "t"}, headers={"X-Client-Mutation-Id": "e-1"})
    assert created.status_code == again.status_code == 201 and created.json() == again.json()
    assert [e["title"] for e in api.store.list_escalations("apollo")].count("t") == 1


def test_a_move_states_what_the_user_saw_and_conflicts_when_it_changed(api: Api, recorder: Recorder) -> None:
    story = first_story(api, "borealis", "todo")
    api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "in_progress"}, user_id="alice")
    recorder.clear()
    r = api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "review", "expect": {"status": "todo"}})
    assert r.status_code == 409
    body = r.json()
    assert body["error"] == "conflict" and body["current"]["status"] == "in_progress" and body["current"]["id"] == story["id"]
    assert recorder.events == [] and api.store.get_story(story["id"])["status"] == "in_progress"
    ok = api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "review", "expect": {"status": "in_progress"}})
    assert ok.status_code == 200 and ok.json()["status"] == "review"
    for bad in ({"status": "nope"}, "todo", {"state": "todo"}, {"status": "todo", "x": 1}):
        r = api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "done", "expect": bad})
        assert r.status_code == 422


@pytest.mark.parametrize("path", ["/api/stories/" + "9" * 5000, "/api/escalations/" + "9" * 5000 + "/resolve",
                                  "/api/stories/٣", "/api/stories/00000000000000000000001"])
def test_absurd_ids_are_404_json_never_500(api: Api, path: str, caplog: pytest.LogCaptureFixture) -> None:
    method = "PATCH" if "stories" in path else "POST"
    r = api.request(method, path, json={"status": "done"})
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    assert "Traceback" not in caplog.text


def test_a_mutation_id_is_remembered_across_a_server_restart(tmp_path: Path) -> None:
    """The stored answer lives in the database: a client retrying after a restart gets it replayed, nothing twice."""
    from backend.auth import issue_token

    settings = make_settings(db=str(tmp_path / "data" / "dashboard.db"))
    headers = {"X-Client-Mutation-Id": "offline-1"}
    with TestClient(create_app(settings, bus=MemoryBus(settings))) as client:
        headers["Authorization"] = "Bearer " + issue_token(settings, "alice")[0]
        target = next(s for s in client.get("/api/projects/apollo/stories", headers=headers).json() if s["status"] == "todo")
        body = {"status": "review", "expect": {"status": "todo"}}
        first = client.patch(f"/api/stories/{target['id']}", json=body, headers=headers)
        assert first.status_code == 200 and "idempotent-replayed" not in first.headers
    with TestClient(create_app(settings, bus=MemoryBus(settings))) as client:
        again = client.patch(f"/api/stories/{target['id']}", json=body, headers=headers)
        assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        other = client.patch(f"/api/stories/{target['id']}", json={"status": "done"}, headers=headers)
        assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
        stories = client.get("/api/projects/apollo/stories", headers=headers).json()
        assert next(s for s in stories if s["id"] == target["id"])["status"] == "review"
