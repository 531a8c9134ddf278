"""Fixtures for the cluster tests: a throw-away redis-server, and (in the modules that need one) a whole cluster from
`bench.cluster` (PostgreSQL, Redis, nodes, HAProxy on free ports). Skipped when a binary is missing; `make test`
installs them all."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bus"))
sys.path.insert(0, str(HERE.parent / "realtime"))
from redis_server import REDIS_BINARY, SKIP_REASON, RedisServer  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    if not REDIS_BINARY:
        pytest.skip(SKIP_REASON)
    with RedisServer() as server:
        yield server
