"""`UserLeases`: the per-user socket cap (`DASHBOARD_MAX_CONNECTIONS_PER_USER`) counted across every node, in Redis.

Each user has a sorted set `{dashboard}:conns:<user>` whose members are the user's open connections on every node
(`<node id>/<client id>`), scored by the end of their lease (Redis's clock, ms). A node renews the leases of its own
connections every `refresh_s`, so the connections of a node that crashed (SIGKILL, power loss) stop counting at
most `lease_s` later. Expired members are dropped whenever the set is touched.

The endpoint calls `await admit(websocket, hub, outbox, user_id, client_id)` after `hub.connect()` admitted the
connection on this node (False: it was refused with 4409 and is already closed), and `release(websocket, user_id,
client_id)` when the connection ends. The app builds `UserLeases(redis, cap)` when the bus is Redis and the cap is
not 0, `await start()`, and `await stop()` at shutdown. If Redis cannot be reached, each node's own cap decides
(`Hub.connect`), so connecting never depends on Redis being up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import Any

from ..logs import log_event
from . import frames

LEASE_S = 15.0  # a crashed node's connections stop counting this long after its last renewal
REFRESH_S = 5.0  # how often a node renews the leases of its connections
CALL_TIMEOUT_S = 1.0  # a slow or paused Redis never holds a handshake longer than this
MAX_RELEASES = 100_000  # releases kept for retry while Redis is down (leases expire by themselves anyway)

# KEYS[1]: the user's set. ARGV: member, cap, lease (ms). 1 = admitted (member added), 0 = the cap is reached.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lease)
return 1
"""

# KEYS[1]: the user's set. ARGV: lease (ms), then this node's members for that user. Re-adds members Redis lost.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], lease)
return #ARGV - 1
"""


class UserLeases:
    """Cluster-wide connection counts per user, on the bus's Redis client."""

    def __init__(self, redis: Any, cap: int, *, prefix: str = "{dashboard}", lease_s: float = LEASE_S,
                 refresh_s: float = REFRESH_S) -> None:
        self.redis = redis
        self.cap = cap
        self.prefix = prefix
        self.lease_ms = int(lease_s * 1000)
        self.refresh_s = refresh_s
        self.node_id = secrets.token_hex(4)
        self._held: dict[str, set[str]] = {}  # user → this node's members (renewed until released)
        self._releases: list[tuple[str, str]] = []  # (user, member) to remove from Redis
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._failing = False

    def key(self, user_id: str) -> str:
        return f"{self.prefix}:conns:{user_id}"

    def member(self, client_id: str) -> str:
        return f"{self.node_id}/{client_id}"

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="user-leases")

    async def stop(self) -> None:
        """Stop renewing and give back every lease still held (best effort: they expire anyway)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for user_id, members in self._held.items():
            self._releases.extend((user_id, m) for m in members)
        self._held.clear()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self._flush_releases()

    # -- per connection -------------------------------------------------------------------------

    async def acquire(self, user_id: str, client_id: str) -> bool:
        """Count this connection for `user_id` on every node: False when the user already has `cap` connections.
        True as well when Redis does not answer (this node's own cap applies then)."""
        member = self.member(client_id)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                admitted = bool(int(await self._acquire(keys=[self.key(user_id)],
                                                        args=[member, self.cap, self.lease_ms])))
        except Exception as exc:  # noqa: BLE001 - Redis down or slow: fail open, the local cap still applies
            self._report(exc)
            admitted = True
        else:
            self._recovered()
        if admitted:
            self._held.setdefault(user_id, set()).add(member)
        return admitted

    def release(self, user_id: str, client_id: str) -> None:
        """The connection ended: stop counting it (sent to Redis by the background task; never awaits)."""
        member = self.member(client_id)
        members = self._held.get(user_id)
        if members is None or member not in members:
            return
        members.discard(member)
        if not members:
            del self._held[user_id]
        if len(self._releases) < MAX_RELEASES:
            self._releases.append((user_id, member))
        self._wake.set()

    def held(self) -> int:
        """Connections of this node currently counted."""
        return sum(len(m) for m in self._held.values())

    # -- background: releases and renewals, in one task so a renewal never re-adds a released member -------

    async def _run(self) -> None:
        next_renew = time.monotonic() + self.refresh_s
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_renew - time.monotonic())):
                    await self._wake.wait()
            self._wake.clear()
            try:
                async with asyncio.timeout(CALL_TIMEOUT_S * 5):
                    await self._flush_releases()
                    if time.monotonic() >= next_renew:
                        next_renew = time.monotonic() + self.refresh_s
                        await self._renew_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried at the next wake-up or renewal
                self._report(exc)
                next_renew = min(next_renew, time.monotonic() + 1.0)
            else:
                self._recovered()

    async def _flush_releases(self) -> None:
        if not self._releases:
            return
        batch = self._releases[:1000]
        async with self.redis.pipeline(transaction=False) as pipe:
            for user_id, member in batch:
                pipe.zrem(self.key(user_id), member)
            await pipe.execute()
        del self._releases[: len(batch)]
        if self._releases:
            self._wake.set()

    async def _renew_all(self) -> None:
        held = [(user_id, sorted(members)) for user_id, members in self._held.items() if members]
        for start in range(0, len(held), 500):
            async with self.redis.pipeline(transaction=False) as pipe:
                for user_id, members in held[start:start + 500]:
                    await self._renew(keys=[self.key(user_id)], args=[self.lease_ms, *members], client=pipe)
                await pipe.execute()

    def _report(self, exc: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log_event("ws.user_leases_local", logging.WARNING, error=type(exc).__name__)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log_event("ws.user_leases_shared")


async def admit(websocket: Any, hub: Any, outbox: Any, user_id: str, client_id: str) -> bool:
    """After `hub.connect()`: count the connection cluster-wide. False: the user is at the cap on the cluster, the
    connection was taken out of the hub and closed with 4409 after an error frame."""
    state = websocket.app.state
    leases: UserLeases | None = getattr(state, "user_leases", None)
    if leases is None or await leases.acquire(user_id, client_id):
        return True
    hub.disconnect(outbox)
    state.metrics.connections_total.labels(status="refused").inc()
    log_event("ws.refused", client_id=client_id, user_id=user_id, code=frames.TOO_MANY_CONNECTIONS,
              reason="per-user cap (cluster)")
    message = f"at most {leases.cap} connections per user"
    with contextlib.suppress(Exception):
        await websocket.send_text(frames.error("Too many connections", message))
        await websocket.close(frames.TOO_MANY_CONNECTIONS, message)
    return False


def release(websocket: Any, user_id: str, client_id: str) -> None:
    """The connection ended (any way): its cluster-wide lease is given back."""
    leases: UserLeases | None = getattr(websocket.app.state, "user_leases", None)
    if leases is not None:
        leases.release(user_id, client_id)
