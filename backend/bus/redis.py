"""`RedisBus`: the event bus on Redis Streams (`redis://host:port/db`), for several server processes.

Layout (all keys share the hash tag `{dashboard}` so a Lua script may touch them together):
- `{dashboard}:seq:<project>`    counter of the project's last `seq` (INCR inside the publish script)
- `{dashboard}:epoch:<project>`  the project's epoch; replaced only when its history is lost
- `{dashboard}:stream:<project>` the history: one entry per event with id `<seq>-0`, `XADD MAXLEN ~ history_size`
- `{dashboard}:pseq:<project>`   the last outbox number taken (`publish(pseq=…)` takes each once, in order)
- `{dashboard}:all`              every event of every project, read by each node's reader task (`XREAD BLOCK`)

`publish()` runs one Lua script, so numbering, history and fan-out are atomic and ordered across nodes.
Every node (the publisher too) delivers events to its listeners from its reader task. If the reader falls
behind the trimmed `:all` stream, it fills per-project gaps from the history before delivering.
The epoch lives in Redis, so it survives node restarts; it changes when a project's stream disappears
(flush, eviction), and clients then get `recovered:false`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..logs import log_event
from ..settings import Settings
from .events import Event, Listener, ListenerSet, OutboxGap, Unsubscribe, new_epoch

PREFIX = "{dashboard}"
READ_BLOCK_MS = 100  # also how long stop() may wait for the reader to notice
READ_COUNT = 500
ALL_STREAM_FACTOR = 10  # the fan-out stream holds this many times history_size entries (at least 10 000)

# Shared by both scripts: detect a lost history and start a new epoch with seq 0.
# KEYS: seq, epoch, stream. ARGV[1]: a fresh epoch to use if needed.
_ENSURE_EPOCH = """
local epoch = redis.call('GET', KEYS[2])
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local exists = redis.call('EXISTS', KEYS[3])
if (not epoch) or (seq > 0 and exists == 0) or (seq == 0 and exists == 1) then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
  redis.call('SET', KEYS[1], 0)
  redis.call('DEL', KEYS[3])
  seq = 0
end
"""

# KEYS: seq, epoch, stream, all, pseq. ARGV: fresh epoch, project, event type, data (JSON), maxlen, all maxlen,
# outbox number ('' for none), '1' to start a new epoch first.
# An outbox number already taken answers {'dup', last}; one that would skip numbers answers {'gap', last}.
_PUBLISH = (
    _ENSURE_EPOCH
    + """
local fresh = ARGV[8] == '1'
local p = nil
if ARGV[7] ~= '' then
  p = tonumber(ARGV[7])
  local last = redis.call('GET', KEYS[5])
  if last then
    last = tonumber(last)
    if p <= last then return {'dup', tostring(last)} end
    if p > last + 1 and not fresh then return {'gap', tostring(last)} end
  end
end
if fresh then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
  redis.call('SET', KEYS[1], 0)
  redis.call('DEL', KEYS[3])
end
if p then redis.call('SET', KEYS[5], p) end
seq = redis.call('INCR', KEYS[1])
local now = redis.call('TIME')
local ts = string.format('%.0f', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], seq .. '-0', 't', ARGV[3], 'e', epoch, 'ts', ts, 'd', ARGV[4])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'p', ARGV[2], 's', seq, 't', ARGV[3], 'e', epoch, 'ts', ts, 'd', ARGV[4])
return {seq, epoch, ts}
"""
)

_POSITION = _ENSURE_EPOCH + "\nreturn {seq, epoch}\n"

# KEYS: seq, epoch, stream, pseq. ARGV: new epoch, outbox number ('' for none).
_RESTART = """
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], 0)
redis.call('DEL', KEYS[3])
if ARGV[2] == '' then redis.call('DEL', KEYS[4]) else redis.call('SET', KEYS[4], ARGV[2]) end
return ARGV[1]
"""


def _encode(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


REDIS_MAX_CONNECTIONS = 64
REDIS_POOL_TIMEOUT_S = 20.0
REDIS_SOCKET_TIMEOUT_S = 5.0  # a stopped Redis fails calls after this instead of hanging them (XREAD blocks 0.1 s)
REDIS_CONNECT_TIMEOUT_S = 2.0

class RedisBus:
    """`EventBus` on Redis Streams. `await start()` connects and starts the reader task."""

    def __init__(self, url: str, settings: Settings, *, prefix: str = PREFIX) -> None:
        self.url = url
        self.settings = settings
        self.prefix = prefix
        self.epoch = new_epoch()  # this node's incarnation (the `connected` frame); projects have their own
        self._listeners = ListenerSet()
        self._redis: aioredis.Redis | None = None
        self._reader: asyncio.Task[None] | None = None
        self._last_seen: dict[str, tuple[str, int]] = {}
        self._all_maxlen = max(10_000, settings.history_size * ALL_STREAM_FACTOR)
        self._stopping = False
        self._control: list[Any] = []
        self._control_task: asyncio.Task[None] | None = None

    # -- keys -----------------------------------------------------------------------------------

    def _keys(self, project_id: str) -> list[str]:
        return [
            f"{self.prefix}:seq:{project_id}",
            f"{self.prefix}:epoch:{project_id}",
            f"{self.prefix}:stream:{project_id}",
        ]

    @property
    def _all(self) -> str:
        return f"{self.prefix}:all"

    @property
    def client(self) -> aioredis.Redis | None:
        """The started Redis client, shared with what else keeps cluster-wide state (sign-in limits)."""
        return self._redis

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError("RedisBus is not started")
        return self._redis

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        # A blocking pool: a burst of bus calls larger than the pool (a reconnect storm re-subscribing, REST writes)
        # waits for a free connection instead of failing with "Too many connections".
        # A stale pooled connection (Redis restarted since it was last used) fails its first command: retry once on a
        # fresh connection before the caller sees an error.
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=REDIS_MAX_CONNECTIONS, timeout=REDIS_POOL_TIMEOUT_S,
            decode_responses=True, health_check_interval=30, retry=Retry(NoBackoff(), 1),
            socket_timeout=REDIS_SOCKET_TIMEOUT_S, socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        )
        self._redis = aioredis.Redis.from_pool(pool)
        self._publish = self._redis.register_script(_PUBLISH)
        self._position = self._redis.register_script(_POSITION)
        self._restart = self._redis.register_script(_RESTART)
        await self._redis.ping()
        last = await self._redis.xrevrange(self._all, count=1)
        last_id = last[0][0] if last else "0-0"
        self._stopping = False
        self._reader = asyncio.create_task(self._read_loop(last_id), name="redis-bus-reader")
        self._control_task = asyncio.create_task(self._control_loop(), name="redis-bus-control")
        log_event("bus.redis.start", last_id=last_id)

    async def stop(self) -> None:
        self._stopping = True
        if self._control_task is not None:
            self._control_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._control_task
            self._control_task = None
        if self._reader is not None:
            # Let the reader finish its current XREAD (≤ READ_BLOCK_MS) rather than cancelling a blocked
            # read, which would leave a half-read connection behind.
            done, _ = await asyncio.wait({self._reader}, timeout=READ_BLOCK_MS / 1000 * 4)
            if not done:
                self._reader.cancel()
                await asyncio.wait({self._reader})
            self._reader = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # -- control messages (every node, e.g. "close the sockets of this session") ---------------------

    def on_control(self, callback: Any) -> None:
        self._control.append(callback)

    async def send_control(self, message: dict[str, Any]) -> None:
        """Deliver `message` to the control listeners of every node (this one included), through Redis pub/sub."""
        await self.redis.publish(f"{self.prefix}:control", _encode(message))

    async def _control_loop(self) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(f"{self.prefix}:control")
                    delay = 0.1
                    while not self._stopping:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is None:
                            continue
                        try:
                            payload = json.loads(message["data"])
                        except (TypeError, ValueError):
                            continue
                        for callback in list(self._control):
                            try:
                                callback(payload)
                            except Exception:  # noqa: BLE001 - one listener's bug must not stop the others
                                logging.getLogger("dashboard").exception("control listener failed")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log_event("bus.redis.control_error", logging.WARNING, error=type(exc).__name__, retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def ping(self) -> None:
        """Raise unless Redis answers (readiness)."""
        await self.redis.ping()

    def listen(self, callback: Listener) -> Unsubscribe:
        return self._listeners.add(callback)

    # -- EventBus -------------------------------------------------------------------------------

    async def publish(
        self, project_id: str, event_type: str, data: dict[str, Any], *, pseq: int | None = None, fresh_epoch: bool = False
    ) -> Event | None:
        result = await self._publish(
            keys=[*self._keys(project_id), self._all, self._pseq_key(project_id)],
            args=[new_epoch(), project_id, event_type, _encode(data), self.settings.history_size, self._all_maxlen,
                  "" if pseq is None else str(pseq), "1" if fresh_epoch else "0"],
        )
        if result[0] == "dup":
            return None
        if result[0] == "gap":
            raise OutboxGap(project_id, int(result[1]))
        seq, epoch, ts = result
        return Event(project_id, event_type, int(seq), str(epoch), int(ts), data)

    def _pseq_key(self, project_id: str) -> str:
        return f"{self.prefix}:pseq:{project_id}"

    async def last_pseq(self, project_id: str) -> int | None:
        raw = await self.redis.get(self._pseq_key(project_id))
        return None if raw is None else int(raw)

    async def restart_epoch(self, project_id: str, pseq: int | None) -> str:
        epoch = await self._restart(
            keys=[*self._keys(project_id), self._pseq_key(project_id)], args=[new_epoch(), "" if pseq is None else str(pseq)]
        )
        return str(epoch)

    async def server_id(self) -> str:
        """Redis's `run_id`: it changes when Redis restarts (the relay then checks nothing was lost)."""
        info = await self.redis.info("server")
        return str(info.get("run_id", ""))

    async def position(self, project_id: str) -> tuple[str, int]:
        seq, epoch = await self._position(keys=self._keys(project_id), args=[new_epoch()])
        return str(epoch), int(seq)

    async def replay(self, project_id: str, epoch: str, seq: int) -> list[Event] | None:
        seq_key, epoch_key, stream_key = self._keys(project_id)
        async with self.redis.pipeline(transaction=True) as pipe:  # one consistent snapshot (MULTI/EXEC)
            pipe.get(epoch_key)
            pipe.get(seq_key)
            pipe.xrange(stream_key, min=f"{seq + 1}-0", max="+", count=self.settings.history_size + 1)
            current_epoch, current_seq, entries = await pipe.execute()
        current = int(current_seq or 0)
        if current_epoch != epoch or seq < 0 or seq > current:
            return None
        missing = current - seq
        if missing == 0:
            return []
        if missing > self.settings.history_size or len(entries) != missing or entries[0][0] != f"{seq + 1}-0":
            return None  # trimmed or lost: never replay a part
        cutoff = time.time() * 1000 - self.settings.history_ttl_s * 1000
        if int(entries[0][1]["ts"]) < cutoff:
            return None  # older than the history TTL
        return [
            Event(project_id, fields["t"], int(entry_id.partition("-")[0]), fields["e"], int(fields["ts"]), json.loads(fields["d"]))
            for entry_id, fields in entries
        ]

    # -- reader ---------------------------------------------------------------------------------

    async def _read_loop(self, last_id: str) -> None:
        delay = 0.1
        while not self._stopping:
            try:
                response = await self.redis.xread({self._all: last_id}, count=READ_COUNT, block=READ_BLOCK_MS)
                delay = 0.1
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._stopping:
                    return
                log_event("bus.redis.read_error", logging.WARNING, error=type(exc).__name__, retry_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for _stream, entries in response or ():
                for entry_id, fields in entries:
                    last_id = entry_id
                    try:
                        event = Event(
                            fields["p"], fields["t"], int(fields["s"]), fields["e"], int(fields["ts"]), json.loads(fields["d"])
                        )
                    except (KeyError, ValueError):
                        log_event("bus.redis.bad_entry", logging.ERROR, entry_id=entry_id)
                        continue
                    await self._deliver(event)
                    await asyncio.sleep(0)  # let the connection writers drain between events of a big batch

    async def _deliver(self, event: Event) -> None:
        """Dispatch in per-project order, once; fill a gap from the history if the reader fell behind."""
        seen = self._last_seen.get(event.project_id)
        if seen is not None and seen[0] == event.epoch:
            if event.seq <= seen[1]:
                return
            if event.seq > seen[1] + 1:
                try:
                    missed = await self.replay(event.project_id, event.epoch, seen[1])
                except (RedisError, OSError):
                    missed = None
                if missed is None:
                    log_event("bus.redis.gap", logging.WARNING, project_id=event.project_id, after=seen[1], next=event.seq)
                for earlier in missed or ():
                    if earlier.seq < event.seq:
                        self._listeners.dispatch(earlier)
        self._last_seen[event.project_id] = (event.epoch, event.seq)
        self._listeners.dispatch(event)
