"""The REST API over Starlette's TestClient: authorization matrix, error bodies, validation, events."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from backend.api import MAX_BODY_BYTES
from backend.auth import issue_token, verify_token

from server_fixtures import Api, Recorder, TestClient, make_settings

JSON = "application/json"


def first_story(api: Api, project_id: str, status: str | None = None) -> dict[str, Any]:
    return next(s for s in api.store.list_stories(project_id) if status is None or s["status"] == status)


def first_open_escalation(api: Api, project_id: str) -> dict[str, Any]:
    return next(e for e in api.store.list_escalations(project_id) if e["status"] == "open")


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(JSON)
    body = response.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body


# -- login -------------------------------------------------------------------------------------------


def test_login_returns_token_user_and_expiry_in_ms(api: Api) -> None:
    before = time.time()
    r = api.client.post("/api/auth/login", json={"username": "alice", "password": "alice-demo"})
    assert r.status_code == 200
    body = r.json()
    assert body["user"] == {"id": "alice", "name": "Alice Adams", "projects": ["apollo", "borealis"]}
    claims = verify_token(api.settings, body["token"])
    assert claims["sub"] == "alice"
    assert body["expiresAt"] == int(claims["exp"]) * 1000  # type: ignore[call-overload]
    assert before * 1000 < body["expiresAt"] <= (time.time() + api.settings.token_ttl_s) * 1000
    assert r.headers["cache-control"] == "no-store"
    assert api.app.state.password_limiter.total_tokens == 2  # scrypt checks run off the loop, 2 at a time
    projects = api.client.get("/api/projects", headers={"Authorization": f"Bearer {body['token']}"})
    assert [p["id"] for p in projects.json()] == ["apollo", "borealis"]


def test_login_bob(api: Api) -> None:
    r = api.client.post("/api/auth/login", json={"username": "bob", "password": "bob-demo"})
    assert r.status_code == 200 and r.json()["user"]["projects"] == ["cassini"]


@pytest.mark.parametrize(
    "credentials",
    [
        {"username": "alice", "password": "bob-demo"},
        {"username": "alice", "password": ""},
        {"username": "mallory", "password": "alice-demo"},
        {"username": "ALICE", "password": "alice-demo"},
    ],
)
def test_login_wrong_credentials(api: Api, credentials: dict[str, str]) -> None:
    body = assert_error(api.client.post("/api/auth/login", json=credentials), 401, "invalid_credentials")
    assert "token" not in body


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b'"alice"',
        b"{}",
        b'{"username": "alice"}',
        b'{"username": 1, "password": "x"}',
        b'{"username": "alice", "password": null}',
        b'{"username": "", "password": "x"}',
        b'{"username": "' + b"a" * 65 + b'", "password": "x"}',
    ],
)
def test_login_invalid_body(api: Api, payload: bytes) -> None:
    r = api.client.post("/api/auth/login", content=payload, headers={"content-type": JSON})
    assert r.status_code == 422
    assert r.json()["error"] in {"invalid_json", "invalid_body"}


def test_login_failure_is_logged_without_the_password(api: Api) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("dashboard")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        api.client.post("/api/auth/login", json={"username": "alice", "password": "hunter2-secret"})
        ok = api.client.post("/api/auth/login", json={"username": "alice", "password": "alice-demo"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    failures = [r for r in records if r.getMessage() == "auth.login_failed"]
    assert len(failures) == 1
    assert failures[0].fields == {  # type: ignore[attr-defined]
        "username": "alice", "ip": "testclient", "reason": "bad_credentials"
    }
    dump = " ".join(str(r.__dict__) for r in records)
    assert "hunter2-secret" not in dump and "alice-demo" not in dump
    assert ok.json()["token"] not in dump


# -- authorization matrix -------------------------------------------------------------------------


def expired_headers(api: Api, user_id: str) -> dict[str, str]:
    token, _ = issue_token(api.settings, user_id, now=time.time() - 7200, ttl_s=60)
    return {"Authorization": f"Bearer {token}"}


def endpoints(api: Api, project_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    story = first_story(api, project_id, "todo")
    escalation = first_open_escalation(api, project_id)
    return [
        ("GET", f"/api/projects/{project_id}", {}),
        ("GET", f"/api/projects/{project_id}/stories", {}),
        ("GET", f"/api/projects/{project_id}/escalations", {}),
        ("POST", f"/api/projects/{project_id}/escalations", {"json": {"title": "Need a decision"}}),
        ("PATCH", f"/api/stories/{story['id']}", {"json": {"status": "in_progress"}}),
        ("POST", f"/api/escalations/{escalation['id']}/resolve", {}),
    ]


# What a non-member gets: 403 for project routes (unknown or not), 404 for story/escalation ids.
NON_MEMBER = {"/api/projects/": 403, "/api/stories/": 404, "/api/escalations/": 404}
MEMBER_OK = {"GET": 200, "PATCH": 200, "POST": 200}


@pytest.mark.parametrize(("member", "outsider", "project_id"), [("alice", "bob", "apollo"), ("bob", "alice", "cassini")])
def test_authorization_matrix(api: Api, recorder: Recorder, member: str, outsider: str, project_id: str) -> None:
    before = {
        "project": api.store.get_project(project_id),
        "stories": api.store.list_stories(project_id),
        "escalations": api.store.list_escalations(project_id),
    }
    for method, path, kwargs in endpoints(api, project_id):
        callers: list[tuple[str, dict[str, str], int, str]] = [
            ("no token", {}, 401, "unauthorized"),
            ("expired", expired_headers(api, member), 401, "unauthorized"),
            ("garbage", {"Authorization": "Bearer not.a.jwt"}, 401, "unauthorized"),
            ("basic", {"Authorization": "Basic YWxpY2U6YWxpY2UtZGVtbw=="}, 401, "unauthorized"),
            ("unknown user", api.headers("mallory"), 401, "unauthorized"),
        ]
        status = next(code for prefix, code in NON_MEMBER.items() if path.startswith(prefix))
        callers.append((outsider, api.headers(outsider), status, "forbidden" if status == 403 else "not_found"))
        for who, headers, expected, code in callers:
            r = api.client.request(method, path, headers=headers, **kwargs)
            assert r.status_code == expected, (who, method, path, r.text)
            assert_error(r, expected, code)
            if expected == 401:
                assert r.headers["www-authenticate"].startswith("Bearer")
    # Nothing was changed or published by any refused call.
    assert recorder.events == []
    assert before == {
        "project": api.store.get_project(project_id),
        "stories": api.store.list_stories(project_id),
        "escalations": api.store.list_escalations(project_id),
    }
    # The member may do all of it.
    for method, path, kwargs in endpoints(api, project_id):
        r = api.client.request(method, path, headers=api.headers(member), **kwargs)
        expected = 201 if method == "POST" and path.endswith("/escalations") else 200
        assert r.status_code == expected, (method, path, r.text)
    assert recorder.events and {e.project_id for e in recorder.events} == {project_id}


def test_project_list_shows_only_memberships(api: Api) -> None:
    alice = api.request("GET", "/api/projects", "alice").json()
    bob = api.request("GET", "/api/projects", "bob").json()
    assert [p["id"] for p in alice] == ["apollo", "borealis"]
    assert [p["id"] for p in bob] == ["cassini"]
    assert_error(api.request("GET", "/api/projects", None), 401, "unauthorized")
    assert_error(
        api.client.get("/api/projects", headers=expired_headers(api, "alice")), 401, "unauthorized"
    )


def test_unknown_project_is_403_like_a_foreign_one(api: Api) -> None:
    for path in ("/api/projects/nope", "/api/projects/nope/stories", "/api/projects/nope/escalations"):
        unknown = assert_error(api.request("GET", path), 403, "forbidden")
        foreign = assert_error(api.request("GET", path.replace("nope", "cassini")), 403, "forbidden")
        assert unknown == foreign  # same answer: existence does not leak
    r = api.request("POST", "/api/projects/nope/escalations", json={"title": "x"})
    assert_error(r, 403, "forbidden")


def test_unknown_and_foreign_ids_look_the_same(api: Api) -> None:
    foreign_story = first_story(api, "cassini")
    foreign_esc = first_open_escalation(api, "cassini")
    for path, method, kwargs in (
        (f"/api/stories/{foreign_story['id']}", "PATCH", {"json": {"status": "done"}}),
        ("/api/stories/99999", "PATCH", {"json": {"status": "done"}}),
        (f"/api/escalations/{foreign_esc['id']}/resolve", "POST", {}),
        ("/api/escalations/99999/resolve", "POST", {}),
    ):
        body = assert_error(api.request(method, path, **kwargs), 404, "not_found")
        assert "99999" not in body["message"]
    assert api.store.get_story(foreign_story["id"]) == foreign_story


# -- reads ---------------------------------------------------------------------------------------------


def test_project_shape(api: Api) -> None:
    project = api.request("GET", "/api/projects/apollo").json()
    assert set(project) == {"id", "name", "description", "updatedAt", "counts"}
    assert set(project["counts"]) == {"todo", "in_progress", "review", "done", "blocked", "openEscalations"}
    stories = api.request("GET", "/api/projects/apollo/stories").json()
    for status in ("todo", "in_progress", "review", "done", "blocked"):
        assert project["counts"][status] == sum(1 for s in stories if s["status"] == status)
    escalations = api.request("GET", "/api/projects/apollo/escalations").json()
    assert project["counts"]["openEscalations"] == sum(1 for e in escalations if e["status"] == "open")
    assert isinstance(project["updatedAt"], int) and project["updatedAt"] > 1_600_000_000_000


def test_story_and_escalation_shapes(api: Api) -> None:
    stories = api.request("GET", "/api/projects/borealis/stories").json()
    assert 5 <= len(stories) <= 8
    for s in stories:
        assert set(s) == {"id", "projectId", "title", "status", "assignee", "updatedAt"}
        assert isinstance(s["id"], int) and s["projectId"] == "borealis"
    escalations = api.request("GET", "/api/projects/borealis/escalations").json()
    assert 1 <= len(escalations) <= 3
    for e in escalations:
        assert set(e) == {"id", "projectId", "title", "status", "createdBy", "createdAt", "resolvedAt"}
        assert e["status"] in {"open", "resolved"} and (e["resolvedAt"] is None) == (e["status"] == "open")


# -- changes and their events ---------------------------------------------------------------------


def test_patch_story_publishes_status_change_and_project_update(api: Api, recorder: Recorder) -> None:
    story = first_story(api, "apollo", "todo")
    before = api.store.get_project("apollo")
    r = api.request(
        "PATCH", f"/api/stories/{story['id']}", json={"status": "review"}, headers={"X-Client-Mutation-Id": "m-42"}
    )
    assert r.status_code == 200
    moved = r.json()
    assert moved == {**story, "status": "review", "updatedAt": moved["updatedAt"]}
    assert moved["updatedAt"] >= story["updatedAt"]
    assert recorder.types() == ["story.status.changed", "project.updated"]
    changed, updated = recorder.events
    assert changed.project_id == "apollo"
    assert changed.data == {"storyId": story["id"], "from": "todo", "to": "review", "story": moved, "clientMutationId": "m-42"}
    assert updated.seq == changed.seq + 1 and updated.epoch == changed.epoch
    project = updated.data["project"]
    assert project == api.request("GET", "/api/projects/apollo").json()
    assert project["counts"]["todo"] == before["counts"]["todo"] - 1  # type: ignore[index]
    assert project["counts"]["review"] == before["counts"]["review"] + 1  # type: ignore[index]
    assert api.store.get_story(story["id"]) == moved


def test_patch_without_mutation_id_has_no_such_key(api: Api, recorder: Recorder) -> None:
    story = first_story(api, "apollo", "todo")
    api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "done"})
    assert "clientMutationId" not in recorder.events[0].data


def test_patch_to_same_status_changes_and_publishes_nothing(api: Api, recorder: Recorder) -> None:
    story = first_story(api, "apollo", "done")
    r = api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "done"})
    assert r.status_code == 200 and r.json() == story
    assert recorder.events == []


def test_create_escalation(api: Api, recorder: Recorder) -> None:
    open_before = api.store.get_project("borealis")["counts"]["openEscalations"]  # type: ignore[index]
    r = api.request(
        "POST", "/api/projects/borealis/escalations",
        json={"title": "  Agent stuck on a flaky test  ", "ignored": True},
        headers={"X-Client-Mutation-Id": "c1:2.3_x-y"},
    )
    assert r.status_code == 201
    escalation = r.json()
    assert escalation["title"] == "Agent stuck on a flaky test"
    assert escalation["status"] == "open" and escalation["createdBy"] == "alice" and escalation["resolvedAt"] is None
    assert escalation["projectId"] == "borealis" and isinstance(escalation["id"], int)
    assert recorder.types() == ["escalation.created", "project.updated"]
    assert recorder.events[0].data == {"escalation": escalation, "clientMutationId": "c1:2.3_x-y"}
    assert recorder.events[1].data["project"]["counts"]["openEscalations"] == open_before + 1
    assert escalation in api.request("GET", "/api/projects/borealis/escalations").json()


def test_resolve_escalation_and_resolving_again(api: Api, recorder: Recorder) -> None:
    escalation = first_open_escalation(api, "apollo")
    open_before = api.store.get_project("apollo")["counts"]["openEscalations"]  # type: ignore[index]
    r = api.request("POST", f"/api/escalations/{escalation['id']}/resolve", headers={"X-Client-Mutation-Id": "r1"})
    assert r.status_code == 200
    resolved = r.json()
    assert resolved["status"] == "resolved" and resolved["resolvedAt"] >= escalation["createdAt"]
    assert recorder.types() == ["escalation.resolved", "project.updated"]
    assert recorder.events[0].data == {"escalation": resolved, "clientMutationId": "r1"}
    assert recorder.events[1].data["project"]["counts"]["openEscalations"] == open_before - 1
    again = api.request("POST", f"/api/escalations/{escalation['id']}/resolve")
    assert again.status_code == 200 and again.json() == resolved
    assert len(recorder.events) == 2


def test_seq_counts_every_event_of_a_project(api: Api, recorder: Recorder) -> None:
    story = first_story(api, "apollo", "todo")
    for status in ("in_progress", "review", "done"):
        api.request("PATCH", f"/api/stories/{story['id']}", json={"status": status})
    api.request("POST", "/api/projects/apollo/escalations", json={"title": "t"})
    seqs = [e.seq for e in recorder.events]
    assert seqs == list(range(seqs[0], seqs[0] + 8))
    assert [e.data["to"] for e in recorder.events if e.event_type == "story.status.changed"] == ["in_progress", "review", "done"]


def test_metrics_count_requests_and_events(api: Api) -> None:
    story = first_story(api, "apollo", "todo")
    api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "review"})
    api.request("GET", "/api/projects/cassini")
    api.request("GET", "/api/projects", None)
    api.client.get("/api/does-not-exist")
    text = api.client.get("/metrics").text
    assert 'http_requests_total{route="/api/stories/{story_id}",status="200"} 1.0' in text
    assert 'http_requests_total{route="/api/projects/{project_id}",status="403"} 1.0' in text
    assert 'http_requests_total{route="/api/projects",status="401"} 1.0' in text
    assert 'http_requests_total{route="<unmatched>",status="404"} 1.0' in text
    assert 'websocket_events_published_total{event_type="story.status.changed"} 1.0' in text
    assert 'websocket_events_published_total{event_type="project.updated"} 1.0' in text


# -- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", "invalid_json"),
        (b"status=done", "invalid_json"),
        (b"[\"done\"]", "invalid_json"),
        (b"{\"status\": NaN}", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[" * 5000 + b"]" * 5000, "invalid_json"),
        (b"{}", "invalid_body"),
        (b"{\"status\": 3}", "invalid_body"),
        (b"{\"status\": null}", "invalid_body"),
        (b"{\"status\": \"finished\"}", "invalid_body"),
        (b"{\"status\": \"DONE\"}", "invalid_body"),
        (b"{\"status\": [\"done\"]}", "invalid_body"),
    ],
)
def test_patch_invalid_bodies(api: Api, recorder: Recorder, payload: bytes, code: str) -> None:
    story = first_story(api, "apollo", "todo")
    r = api.request("PATCH", f"/api/stories/{story['id']}", content=payload, headers={"content-type": JSON})
    assert_error(r, 422, code)
    assert recorder.events == [] and api.store.get_story(story["id"]) == story


@pytest.mark.parametrize(
    "title", ["", "   ", "x" * 201, 5, None, ["t"], {"t": 1}, "line\nbreak", "tab\there", "nul\x00"]
)
def test_escalation_invalid_titles(api: Api, recorder: Recorder, title: Any) -> None:
    r = api.request("POST", "/api/projects/apollo/escalations", json={"title": title})
    assert_error(r, 422, "invalid_body")
    assert recorder.events == []


def test_escalation_title_limits(api: Api) -> None:
    assert api.request("POST", "/api/projects/apollo/escalations", json={"title": "x" * 200}).status_code == 201
    assert api.request("POST", "/api/projects/apollo/escalations", json={"title": "Ünïcode ✓"}).status_code == 201
    assert_error(api.request("POST", "/api/projects/apollo/escalations", json={}), 422, "invalid_body")


@pytest.mark.parametrize("value", ["x" * 65, "has space", "\u00fcmlaut".encode(), "semi;colon", "a/b"])
def test_invalid_mutation_id_header(api: Api, recorder: Recorder, value: str | bytes) -> None:
    story = first_story(api, "apollo", "todo")
    r = api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "done"}, headers={"X-Client-Mutation-Id": value})
    assert_error(r, 422, "invalid_header")
    assert recorder.events == []


def test_longest_mutation_id_is_accepted(api: Api, recorder: Recorder) -> None:
    story = first_story(api, "apollo", "todo")
    mid = "a" * 64
    r = api.request("PATCH", f"/api/stories/{story['id']}", json={"status": "done"}, headers={"X-Client-Mutation-Id": mid})
    assert r.status_code == 200 and recorder.events[0].data["clientMutationId"] == mid


def test_body_size_limit(api: Api, recorder: Recorder) -> None:
    big = b'{"title": "' + b"x" * MAX_BODY_BYTES + b'"}'
    assert_error(
        api.request("POST", "/api/projects/apollo/escalations", content=big, headers={"content-type": JSON}),
        413, "payload_too_large",
    )

    def chunks() -> Any:  # no Content-Length: the limit applies while reading
        for _ in range(40):
            yield b" " * 1024

    r = api.request("POST", "/api/projects/apollo/escalations", content=chunks(), headers={"content-type": JSON})
    assert_error(r, 413, "payload_too_large")
    login = api.client.post("/api/auth/login", content=big, headers={"content-type": JSON})
    assert_error(login, 413, "payload_too_large")
    assert recorder.events == []


# -- Starlette's own errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/nothing-here", 404, "not_found"),
        ("GET", "/nothing-here", 404, "not_found"),
        ("PATCH", "/api/stories/abc", 404, "not_found"),
        ("PATCH", "/api/stories/-1", 404, "not_found"),
        ("PATCH", "/api/stories/99999999999999999999999", 404, "not_found"),
        ("POST", "/api/escalations/1e3/resolve", 404, "not_found"),
        ("DELETE", "/api/projects", 405, "method_not_allowed"),
        ("GET", "/api/auth/login", 405, "method_not_allowed"),
        ("PUT", "/api/projects/apollo/escalations", 405, "method_not_allowed"),
        ("GET", "/api/stories/1", 405, "method_not_allowed"),
    ],
)
def test_framework_errors_are_json(api: Api, method: str, path: str, status: int, code: str) -> None:
    r = api.request(method, path, json={"status": "done"})
    assert_error(r, status, code)
    if status == 405:
        assert r.headers["allow"]


def test_head_of_a_list_is_allowed(api: Api) -> None:
    r = api.request("HEAD", "/api/projects")
    assert r.status_code == 200


# -- persistence -------------------------------------------------------------------------------------


def test_file_database_keeps_changes_across_restarts(tmp_path: Any) -> None:
    from backend.app import create_app
    from backend.bus.memory import MemoryBus

    settings = make_settings(db=str(tmp_path / "data" / "dashboard.db"))
    with TestClient(create_app(settings, bus=MemoryBus(settings))) as client:
        token = issue_token(settings, "alice")[0]
        headers = {"Authorization": f"Bearer {token}"}
        stories = client.get("/api/projects/apollo/stories", headers=headers).json()
        target = next(s for s in stories if s["status"] == "todo")
        assert client.patch(f"/api/stories/{target['id']}", json={"status": "done"}, headers=headers).status_code == 200
    with TestClient(create_app(settings, bus=MemoryBus(settings))) as client:
        again = client.get("/api/projects/apollo/stories", headers=headers).json()
        assert len(again) == len(stories)  # not seeded twice
        assert next(s for s in again if s["id"] == target["id"])["status"] == "done"
