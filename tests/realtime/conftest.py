"""Fixtures for the real-time tests; the helpers themselves live in `realtime_harness`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from realtime_harness import LiveServer, make_settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bus"))
from redis_server import REDIS_BINARY, SKIP_REASON, RedisServer  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """One server for a module: small limits so that caps are reachable, production heartbeat."""
    settings = make_settings(
        max_connections_per_user=4,
        max_subscriptions=8,
        rate_limit_per_s=20.0,
        rate_limit_burst=40,
        allowed_origins=("https://dash.example.com",),
    )
    with LiveServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    if not REDIS_BINARY:
        pytest.skip(SKIP_REASON)
    with RedisServer() as server:
        yield server.url
