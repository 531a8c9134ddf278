"""Sign-in limits: failed-attempt windows (`LoginLimiter`, or `RedisLoginLimiter` for a cluster) and a cap on
sign-ins waiting for a password check (`LoginGate`).

The login route calls `wait, token = await limiter.reserve(ip, username)` *before* checking the password (0 means
go ahead: the attempt is already counted as a failure), then `gate.enter(ip)` / `gate.leave(ip)` around the check,
and finally `succeeded(ip, username, token)` (the attempt is un-counted and that address's failures for that user
forgotten) or nothing (it stays a failure); `release(ip, username, token)` un-counts an attempt that never got
checked. Three windows apply: per address, per username from any address, and per (address, username).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .logs import log_event

PER_USER_IP = 5  # failures per (address, username) per window
PER_IP = 20  # failures per address per window
PER_USER = 10  # failures per username, from any address, per window
WINDOW_S = 300.0
MAX_WAITING_PER_IP = 4  # sign-ins waiting for a password check, per address
MAX_WAITING = 32  # … and in total


class LoginLimiter:
    """Sliding windows of failed (or in-progress) sign-ins, in this process. `clock` gives seconds."""

    def __init__(
        self, *, per_user_ip: int = PER_USER_IP, per_ip: int = PER_IP, per_user: int = PER_USER,
        window_s: float = WINDOW_S, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000,
    ) -> None:
        self.per_user_ip = per_user_ip
        self.per_ip = per_ip
        self.per_user = per_user
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._failures: dict[tuple[str, ...], deque[float]] = {}

    def _keys(self, ip: str, username: str) -> tuple[tuple[tuple[str, ...], int], ...]:
        return ((("ip", ip), self.per_ip), (("user", username), self.per_user), (("ipuser", ip, username), self.per_user_ip))

    def _recent(self, key: tuple[str, ...], now: float) -> deque[float]:
        times = self._failures.get(key)
        if times is None:
            return deque()
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
        return times

    def retry_after(self, ip: str, username: str) -> float:
        """Seconds until another attempt is allowed; 0 when it is allowed now."""
        now = self._clock()
        wait = 0.0
        for key, limit in self._keys(ip, username):
            times = self._recent(key, now)
            if len(times) >= limit:
                wait = max(wait, times[len(times) - limit] + self.window_s - now)
        return wait

    async def reserve(self, ip: str, username: str) -> tuple[float, Any]:
        """`(wait, token)`: wait > 0 refuses the attempt; else it is counted now (as a failure until `succeeded`)."""
        wait = self.retry_after(ip, username)
        if wait > 0:
            return wait, None
        now = self._clock()
        self._make_room(now)
        for key, _ in self._keys(ip, username):
            self._failures.setdefault(key, deque()).append(now)
        return 0.0, now

    async def release(self, ip: str, username: str, token: Any) -> None:
        """Un-count a reserved attempt that was never checked."""
        for key, _ in self._keys(ip, username):
            self._forget(key, token)

    async def succeeded(self, ip: str, username: str, token: Any) -> None:
        """The password was right: un-count the attempt and forget this address's failures for this user."""
        self._forget(("ip", ip), token)
        self._forget(("user", username), token)
        self._failures.pop(("ipuser", ip, username), None)

    def _forget(self, key: tuple[str, ...], token: Any) -> None:
        times = self._failures.get(key)
        if times is not None and token in times:
            times.remove(token)
            if not times:
                del self._failures[key]

    def _make_room(self, now: float) -> None:
        if len(self._failures) + 3 <= self._max_keys:
            return
        for key in list(self._failures):
            self._recent(key, now)
        while len(self._failures) + 3 > self._max_keys:  # still full: forget the oldest keys
            del self._failures[next(iter(self._failures))]


# KEYS: the three window keys. ARGV: now (ms), window (ms), member, then the three limits.
_RESERVE = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local wait = 0
for i = 1, 3 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  local limit = tonumber(ARGV[3 + i])
  local count = redis.call('ZCARD', KEYS[i])
  if count >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
    local w = tonumber(oldest[2]) + window - now
    if w > wait then wait = w end
  end
end
if wait > 0 then return tostring(wait) end
for i = 1, 3 do
  redis.call('ZADD', KEYS[i], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[i], window)
end
return '0'
"""


class RedisLoginLimiter:
    """The same windows shared by every node through Redis (sorted sets with expiry). If Redis cannot be reached,
    this node's own `LoginLimiter` decides, so sign-in never depends on Redis being up."""

    def __init__(self, redis: Any, *, prefix: str = "{dashboard}", window_s: float = WINDOW_S,
                 per_user_ip: int = PER_USER_IP, per_ip: int = PER_IP, per_user: int = PER_USER) -> None:
        self.redis = redis
        self.prefix = prefix
        self.window_s = window_s
        self.limits = (per_ip, per_user, per_user_ip)
        self.local = LoginLimiter(per_user_ip=per_user_ip, per_ip=per_ip, per_user=per_user, window_s=window_s)
        self._script = redis.register_script(_RESERVE)
        self._ids = itertools.count()

    def _keys(self, ip: str, username: str) -> list[str]:
        return [f"{self.prefix}:login:ip:{ip}", f"{self.prefix}:login:user:{username}",
                f"{self.prefix}:login:ipuser:{ip}:{username}"]

    async def reserve(self, ip: str, username: str) -> tuple[float, Any]:
        member = f"{secrets.token_hex(4)}-{next(self._ids)}"
        try:
            wait = float(await self._script(
                keys=self._keys(ip, username),
                args=[int(time.time() * 1000), int(self.window_s * 1000), member, *self.limits],
            ))
        except Exception as exc:  # noqa: BLE001 - Redis down: limit locally
            log_event("auth.limiter_local", logging.WARNING, error=type(exc).__name__)
            wait, token = await self.local.reserve(ip, username)
            return wait, ("local", token)
        return wait / 1000, (None if wait > 0 else ("redis", member))

    async def release(self, ip: str, username: str, token: Any) -> None:
        await self._drop(ip, username, token, clear=False)

    async def succeeded(self, ip: str, username: str, token: Any) -> None:
        await self._drop(ip, username, token, clear=True)

    async def _drop(self, ip: str, username: str, token: Any, *, clear: bool) -> None:
        if not token:
            return
        where, value = token
        if where == "local":
            await (self.local.succeeded if clear else self.local.release)(ip, username, value)
            return
        keys = self._keys(ip, username)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in keys[:2] if clear else keys:
                    pipe.zrem(key, value)
                if clear:
                    pipe.delete(keys[2])
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - the window expires by itself
            log_event("auth.limiter_local", logging.WARNING, error=type(exc).__name__)


class LoginGate:
    """Counts sign-ins waiting for (or in) a password check; `enter(ip)` is False above the caps."""

    def __init__(self, *, per_ip: int = MAX_WAITING_PER_IP, total: int = MAX_WAITING) -> None:
        self.per_ip = per_ip
        self.total = total
        self.waiting = 0
        self._by_ip: dict[str, int] = {}

    def enter(self, ip: str) -> bool:
        if self.waiting >= self.total or self._by_ip.get(ip, 0) >= self.per_ip:
            return False
        self.waiting += 1
        self._by_ip[ip] = self._by_ip.get(ip, 0) + 1
        return True

    def leave(self, ip: str) -> None:
        self.waiting -= 1
        left = self._by_ip.get(ip, 1) - 1
        if left > 0:
            self._by_ip[ip] = left
        else:
            self._by_ip.pop(ip, None)
