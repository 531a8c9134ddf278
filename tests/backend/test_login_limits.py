"""Sign-in under a flood, against a real uvicorn: attempts are counted before the password check, a username is
limited from any address, waiting sign-ins are capped (429 + Retry-After at once), the body must be JSON, and behind
a trusted proxy the limits see the real client address."""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend.limits import LoginGate, LoginLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "realtime"))
from realtime_harness import LiveServer, demo_store, make_settings  # noqa: E402

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def server(**overrides: Any) -> LiveServer:
    return LiveServer(make_settings(**overrides), store=demo_store())


async def test_concurrent_wrong_passwords_are_limited_even_while_being_checked() -> None:
    with server() as live:
        async with httpx.AsyncClient(base_url=live.http, timeout=30) as http:
            wrong = {"username": "alice", "password": "not-it"}
            answers = await asyncio.gather(*(http.post("/api/auth/login", json=wrong) for _ in range(60)))
    codes = Counter(r.status_code for r in answers)
    assert codes[401] <= 5, codes  # at most the per (address, user) window got to a password check
    assert codes[429] >= 55, codes
    assert all(r.headers.get("retry-after", "").isdigit() for r in answers if r.status_code == 429)


async def test_a_real_sign_in_during_a_flood_from_elsewhere_is_not_queued_behind_it() -> None:
    with server(trusted_proxies=("127.0.0.1",)) as live:  # the flood and the user come from two addresses
        gate = live.app.state.login_gate = LoginGate(per_ip=4, total=32)
        async with httpx.AsyncClient(base_url=live.http, timeout=30) as http:
            flood = [
                http.post("/api/auth/login", json={"username": f"u{i}", "password": "x"},
                          headers={"X-Forwarded-For": "198.51.100.7"})
                for i in range(150)
            ]
            tasks = [asyncio.ensure_future(f) for f in flood]
            await asyncio.sleep(0)  # the flood is on its way
            real = await http.post("/api/auth/login", json={"username": "bob", "password": "bob-demo"},
                                   headers={"X-Forwarded-For": "203.0.113.9"})
            answers = await asyncio.gather(*tasks)
    assert real.status_code == 200, real.text
    codes = Counter(r.status_code for r in answers)
    # One address may have at most 4 sign-ins waiting: the rest of the flood is refused at once, not queued.
    assert codes[429] >= 100, codes
    assert gate.waiting == 0
    busy = [r for r in answers if r.status_code == 429 and r.json()["error"] == "too_many_requests"]
    assert busy and all(r.headers["retry-after"] == "1" for r in busy)


async def test_a_username_is_limited_whatever_the_address() -> None:
    limiter = LoginLimiter(per_user_ip=100, per_ip=100, per_user=3, window_s=60, clock=lambda: 0.0)
    for n in range(3):
        wait, _ = await limiter.reserve(f"10.0.0.{n}", "alice")
        assert wait == 0
    assert (await limiter.reserve("10.9.9.9", "alice"))[0] == 60
    assert (await limiter.reserve("10.9.9.9", "bob"))[0] == 0


async def test_limiter_windows_release_and_success() -> None:
    now = [0.0]
    limiter = LoginLimiter(per_user_ip=3, per_ip=4, per_user=100, window_s=10, clock=lambda: now[0])
    for user in ("a", "b", "c", "d"):
        wait, _ = await limiter.reserve("1.2.3.4", user)
        assert wait == 0
    assert (await limiter.reserve("1.2.3.4", "e"))[0] == 10  # address cap reached
    assert (await limiter.reserve("5.6.7.8", "a"))[0] == 0  # other addresses are unaffected
    now[0] = 10.0
    assert (await limiter.reserve("1.2.3.4", "e"))[0] == 0  # window passed
    tokens = [(await limiter.reserve("9.9.9.9", "x"))[1] for _ in range(2)]
    await limiter.succeeded("9.9.9.9", "x", tokens[1])
    assert limiter.retry_after("9.9.9.9", "x") == 0  # success cleared this address's failures for x
    _, token = await limiter.reserve("7.7.7.7", "y")
    await limiter.release("7.7.7.7", "y", token)  # never checked: not counted
    assert not any(key[-1] == "y" for key in limiter._failures)


def test_limiter_memory_is_bounded() -> None:
    limiter = LoginLimiter(max_keys=10, clock=lambda: 0.0)
    for i in range(100):
        asyncio.run(limiter.reserve(f"10.0.0.{i}", "u"))
    assert len(limiter._failures) <= 10


async def test_sign_in_needs_a_json_body() -> None:
    with server() as live:
        async with httpx.AsyncClient(base_url=live.http, timeout=10) as http:
            body = '{"username": "alice", "password": "alice-demo"}'
            for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
                headers = {"content-type": content_type} if content_type else {}
                r = await http.post("/api/auth/login", content=body, headers=headers)
                assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type", (content_type, r.text)
            ok = await http.post("/api/auth/login", content=body, headers={"content-type": "application/json; charset=utf-8"})
            assert ok.status_code == 200


async def test_behind_a_trusted_proxy_the_limits_see_the_forwarded_address() -> None:
    for trusted, expect_separate in ((("127.0.0.1",), True), ((), False)):
        with server(trusted_proxies=trusted) as live:
            live.app.state.login_limiter = LoginLimiter(per_user_ip=100, per_ip=2, per_user=100)
            async with httpx.AsyncClient(base_url=live.http, timeout=10) as http:
                async def attempt(client_ip: str) -> int:
                    r = await http.post("/api/auth/login", json={"username": "alice", "password": "no"},
                                        headers={"X-Forwarded-For": client_ip})
                    return r.status_code

                first = [await attempt("203.0.113.1") for _ in range(3)]
                other = await attempt("203.0.113.2")
        assert first == [401, 401, 429]
        assert (other == 401) is expect_separate, (trusted, other)
