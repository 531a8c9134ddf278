"""Bench-only experiments on our server, to measure a proposed change before anyone makes it.

`bench.server --kind app --variant NAME[,NAME]` calls the installers below before building the app; they patch
the running process only. A change that proves itself moves into the product, and its variant then only
reproduces the old experiment (see docs/performance.md, "History").

`gc`: `gc.freeze()` after start-up and a generation-0 threshold of 50 000 allocations (now the product default:
`backend.cli.tune_gc`, `DASHBOARD_GC_TUNING`).

`redispool`: `RedisBus` with a `BlockingConnectionPool` (callers wait for a free connection) instead of
redis-py's default pool, which raises `MaxConnectionsError` beyond 100 concurrent commands (now the product
default, with 64 connections).

(The `direct` fan-out and `lean` connection experiments were replaced by the product's own flusher-based
outbox and task-free connections; git history has them.)
"""

from __future__ import annotations

from typing import Any


def install_blocking_redis_pool() -> None:
    import types

    import redis.asyncio as aioredis

    from backend.bus import redis as busredis

    def from_url(url: str, **kwargs: Any) -> Any:
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=100, timeout=20, **kwargs)
        return aioredis.Redis(connection_pool=pool)

    proxy = types.SimpleNamespace(**{k: getattr(aioredis, k) for k in dir(aioredis) if not k.startswith("__")})
    proxy.from_url = from_url
    busredis.aioredis = proxy  # type: ignore[assignment]


def install_gc_tuning() -> None:
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


VARIANTS = {"gc": install_gc_tuning, "redispool": install_blocking_redis_pool}
