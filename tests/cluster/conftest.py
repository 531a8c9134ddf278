"""Fixtures for the cluster tests: a throw-away redis-server, and (in the modules that need one) a whole cluster from
`bench.cluster` (PostgreSQL, Redis, nodes, HAProxy on free ports). Skipped when a binary is missing; `make test`
installs them all."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bus"))
sys.path.insert(0, str(HERE.parent / "realtime"))
from redis_server import REDIS_BINARY, SKIP_REASON, RedisServer  # noqa: E402

from bench.cluster import HAPROXY  # noqa: E402
from tests.postgres_server import INITDB  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    if not REDIS_BINARY:
        pytest.skip(SKIP_REASON)
    with RedisServer() as server:
        yield server


def require_cluster_binaries() -> None:
    missing = [name for name, found in (("haproxy", HAPROXY), ("redis-server", REDIS_BINARY), ("postgres", INITDB),
                                        ("psql", shutil.which("psql"))) if not found]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (make test installs them)")
