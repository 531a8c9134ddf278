"""Sign-in sessions over REST: the refresh cookie, rotation, reuse detection, sign-out, lifetimes, and logs that
never carry a token or a cookie value."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from server_fixtures import TestClient, make_settings

from backend.app import create_app
from backend.auth import verify_token
from backend.bus.memory import MemoryBus
from backend.sessions import COOKIE

LOGIN = {"username": "alice", "password": "alice-demo"}


@pytest.fixture
def client() -> Any:
    settings = make_settings()
    with TestClient(create_app(settings, bus=MemoryBus(settings)), base_url="http://testserver") as c:
        yield c


def sign_in(client: TestClient) -> tuple[str, str]:
    r = client.post("/api/auth/login", json=LOGIN)
    assert r.status_code == 200
    return r.json()["token"], r.cookies[COOKIE]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def refresh(client: TestClient, value: str, headers: dict[str, str] | None = None) -> Any:
    client.cookies.clear()
    return client.post("/api/auth/refresh", json={}, headers={"Cookie": f"{COOKIE}={value}", **(headers or {})})


def refresh_metric(client: TestClient, result: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'dashboard_auth_refresh_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


def test_sign_in_sets_the_refresh_cookie_and_a_short_token_with_sid_and_jti(client: TestClient) -> None:
    r = client.post("/api/auth/login", json=LOGIN)
    body = r.json()
    assert set(body) == {"token", "expiresAt", "user"}
    claims = verify_token(client.app.state.settings, body["token"])  # type: ignore[attr-defined]
    assert isinstance(claims["sid"], str) and isinstance(claims["jti"], str)
    assert int(claims["exp"]) - int(claims["iat"]) == 900  # type: ignore[call-overload]
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(COOKIE + "=")
    attrs = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attrs and "secure" not in attrs  # plain http here
    assert "Path=/api/auth" in cookie and "SameSite=strict" in cookie
    value = r.cookies[COOKIE]
    stored = client.app.state.store  # type: ignore[attr-defined]
    rows = client.portal.call(lambda: stored.engine.run(__import__("backend.store.sql", fromlist=["all_rows"]).all_rows(  # type: ignore[union-attr]
        "SELECT hash FROM refresh_tokens")))
    assert value not in {row[0] for row in rows}  # stored hashed only


def test_refresh_rotates_and_a_rotated_value_presented_again_revokes_the_session(client: TestClient) -> None:
    token, first = sign_in(client)
    r = refresh(client, first)
    assert r.status_code == 200
    second = r.cookies[COOKIE]
    assert second != first
    new_token = r.json()["token"]
    assert verify_token(client.app.state.settings, new_token)["sid"] == verify_token(  # type: ignore[attr-defined]
        client.app.state.settings, token)["sid"]  # type: ignore[attr-defined]
    assert client.get("/api/projects", headers=bearer(new_token)).status_code == 200
    stolen = refresh(client, first)  # the old value again: someone kept a copy
    assert stolen.status_code == 401 and stolen.json()["error"] == "refresh_failed"
    assert stolen.json()["reason"] == "reused"
    for t in (token, new_token):  # every access token of the session is dead at once
        assert client.get("/api/projects", headers=bearer(t)).status_code == 401
    assert refresh(client, second).json()["reason"] == "revoked"
    assert refresh_metric(client, "reused") == 1 and refresh_metric(client, "ok") == 1
    assert refresh_metric(client, "revoked") == 1


def test_refresh_needs_the_cookie_json_and_an_allowed_origin(client: TestClient) -> None:
    _, value = sign_in(client)
    client.cookies.clear()
    missing = client.post("/api/auth/refresh", json={})
    assert missing.status_code == 401 and missing.json()["reason"] == "invalid"
    assert refresh(client, "not-a-real-value").json()["reason"] == "invalid"
    plain = client.post("/api/auth/refresh", content="{}", headers={"content-type": "text/plain", "Cookie": f"{COOKIE}={value}"})
    assert plain.status_code == 415
    foreign = refresh(client, value, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403
    same = refresh(client, value, headers={"Origin": "http://testserver"})
    assert same.status_code == 200


def test_logout_kills_the_session_not_the_users_other_sessions(client: TestClient) -> None:
    token_a, value_a = sign_in(client)
    token_b, value_b = sign_in(client)  # another browser
    r = client.post("/api/auth/logout", headers=bearer(token_a))
    assert r.status_code == 204
    assert client.get("/api/projects", headers=bearer(token_a)).status_code == 401
    assert refresh(client, value_a).json()["reason"] == "revoked"
    assert client.get("/api/projects", headers=bearer(token_b)).status_code == 200
    assert refresh(client, value_b).status_code == 200
    assert client.post("/api/auth/logout").status_code == 401  # needs a bearer token


def test_a_sign_out_sent_late_ends_the_session_with_its_expired_token_and_only_that_session(client: TestClient) -> None:
    from backend.auth import issue_token

    settings = client.app.state.settings  # type: ignore[attr-defined]
    token, value = sign_in(client)
    _, other = sign_in(client)  # signed in again since
    sid = verify_token(settings, token)["sid"]
    expired, _ = issue_token(settings, "alice", now=time.time() - 3600, sid=str(sid))  # the page's token, an hour on
    assert client.get("/api/projects", headers=bearer(expired)).status_code == 401  # no use for anything else
    assert client.post("/api/auth/logout", headers=bearer(expired)).status_code == 204
    assert refresh(client, value).json()["reason"] == "revoked"
    assert refresh(client, other).status_code == 200
    assert client.post("/api/auth/logout", headers=bearer(expired)).status_code == 204  # sent twice: still 204
    forged = expired[:-4] + ("AAAA" if not expired.endswith("AAAA") else "BBBB")
    assert client.post("/api/auth/logout", headers=bearer(forged)).status_code == 401  # the signature still counts


def test_refresh_lifetime_slides_and_the_session_cap_holds(client: TestClient) -> None:
    store = client.app.state.store  # type: ignore[attr-defined]
    settings = client.app.state.settings  # type: ignore[attr-defined]
    now = [int(time.time() * 1000)]
    store.clock = lambda: now[0]
    _, value = sign_in(client)
    day = 86_400_000
    for _ in range(3):  # refreshed every 6 days: alive beyond the 7-day refresh lifetime
        now[0] += 6 * day
        r = refresh(client, value)
        assert r.status_code == 200, r.json()
        value = r.cookies[COOKIE]
    now[0] += 8 * day  # not refreshed for longer than the refresh lifetime
    assert refresh(client, value).json()["reason"] == "expired"
    _, value = sign_in(client)
    signed_in_at = now[0]
    while now[0] + 6 * day < signed_in_at + settings.session_max_s * 1000:
        now[0] += 6 * day
        r = refresh(client, value)
        assert r.status_code == 200
        value = r.cookies[COOKIE]
    now[0] += 6 * day  # past the 30 days from sign-in, refreshed or not
    assert refresh(client, value).json()["reason"] == "expired"


def test_logs_carry_neither_tokens_nor_cookie_values(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dashboard")
    token, value = sign_in(client)
    r = refresh(client, value)
    value2 = r.cookies[COOKIE]
    refresh(client, value)  # reuse
    client.post("/api/auth/logout", headers=bearer(r.json()["token"]))
    dump = " ".join(str(record.__dict__) for record in caplog.records)
    assert "auth.refresh_reused" in dump
    for secret in (token, value, value2, r.json()["token"]):
        assert secret not in dump


def test_the_refresh_cookie_is_secure_when_served_over_https() -> None:
    settings = make_settings()
    with TestClient(create_app(settings, bus=MemoryBus(settings)), base_url="https://testserver") as c:
        r = c.post("/api/auth/login", json=LOGIN)
        cookie = r.headers["set-cookie"]
        attrs = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"secure", "httponly"} <= attrs and "Path=/api/auth" in cookie and "SameSite=strict" in cookie
        rotated = c.post("/api/auth/refresh", json={})
        assert rotated.status_code == 200
        assert "secure" in {part.strip().split("=")[0].lower() for part in rotated.headers["set-cookie"].split(";")[1:]}
