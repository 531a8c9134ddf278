"""Drive the real client core against a real server: `ContractClient`, `ContractServer` and bounded waits.

`ContractClient` is the headless asyncio adapter of the benchmarks (`bench.headless.HeadlessClient`: the
`websockets` client for open/send/close, httpx for fetch with `Authorization: Bearer`, `now` =
monotonic ms, one timer re-armed at `rt.get_timer()`) plus what the contract tests observe: every
command with its time, every log record, the events the application handler received, a dial gate
(`hold_dials()`/`release_dials()`: a dial waits before its TCP connect, as on a slow network) and an
abrupt drop (`drop()`: the TCP connection is aborted, no close frame). Build it with `await
ContractClient.create(server, token, project)` inside the test's event loop, `start()` it, and
`await aclose()` it before the server stops.

`ContractServer` is the in-process uvicorn of the real-time tests (`realtime_harness.LiveServer`) on a
chosen port and an SQLite file, so a "restart" is a second server on the same address and data.
`FlakyBus` (from `realtime_harness`) is the in-process bus with a switch that makes it unreachable (`down = True`), as a Redis
outage looks to the hub.

`wait_until(predicate, what)` polls with a deadline; `quiet_for(predicate, seconds)` checks that
something does NOT happen during a bounded observation window.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from realtime_harness import FlakyBus, LiveServer, blocking
from websockets.asyncio.client import ClientConnection

from backend.bus import EventBus
from backend.cli import DashboardServer, uvicorn_config
from backend.demo import seed_if_empty
from backend.settings import Settings
from backend.store import Store
from backend.store.sqlite import SqliteEngine
from bench.headless import HeadlessClient, Recorder, now_ms

WAIT_S = 8.0  # upper bound of every wait (generous: the machine may be busy with other suites)
POLL_S = 0.01


class ContractServer(LiveServer):
    """`LiveServer` on `port` (default: a free one) with its data in the SQLite file `db` (demo data seeded once)."""

    def __init__(self, settings: Settings, db: Path, port: int | None = None, bus: EventBus | None = None) -> None:
        store = Store(SqliteEngine(str(db)))
        blocking(store.open)
        blocking(seed_if_empty, store)
        super().__init__(settings, store=store, bus=bus)
        if port is not None:
            self.port = port
            self.server = DashboardServer(uvicorn_config(self.app, settings, "127.0.0.1", port))


async def wait_until(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S,
                     detail: Callable[[], Any] | None = None) -> Any:
    """Poll `predicate` until it returns something truthy (returned); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"; {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        await asyncio.sleep(POLL_S)


async def quiet_for(predicate: Callable[[], Any], seconds: float, what: str) -> None:
    """Observe for `seconds`: fail as soon as `predicate` turns truthy (something that must not happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            raise AssertionError(f"unexpected: {what}")
        await asyncio.sleep(POLL_S)


async def client_config(http_base: str, **client_keys: Any) -> dict[str, Any]:
    """`GET /api/config` from the server (the timings a browser gets) plus client-only keys."""
    async with httpx.AsyncClient(base_url=http_base, timeout=WAIT_S, trust_env=False) as http:
        response = await http.get("/api/config")
        response.raise_for_status()
        config: dict[str, Any] = response.json()
    config.update(client_keys)
    return config


class ContractClient(HeadlessClient):
    """One `client.runtime.Runtime` on real sockets, with recordings for assertions (see the module docstring)."""

    def __init__(self, cfg: dict[str, Any], http: httpx.AsyncClient) -> None:
        super().__init__(0, cfg, Recorder(), http)
        self.commands: list[tuple[float, tuple[Any, ...]]] = []  # (now ms, command) in execution order
        self.records: list[dict[str, Any]] = []  # the runtime's ("log", record) payloads
        self.events: list[dict[str, Any]] = []  # what the application handler of cfg["project"] received
        self.gate = asyncio.Event()
        self.gate.set()
        self.inflight = 0  # adapter coroutines still running (dials/reads, sends, closes, fetches)
        self.closed = False
        self.muted: set[str] = set()  # client actions the adapter swallows instead of sending (e.g. "pong")
        self.offer: tuple[str, ...] | None = None  # protocols to offer instead of the core's (an older client)
        self.selected: list[str | None] = []  # the subprotocol the server selected, per socket

    @classmethod
    async def create(cls, server: LiveServer, token: str, project: str = "apollo", *,
                     offer: tuple[str, ...] | None = None, **client_keys: Any) -> ContractClient:
        """`offer`: the protocols the adapter offers in place of the core's (e.g. `("dashboard.v1",)` plays a
        client that predates `dashboard.v2`); the bearer token is always offered."""
        config = await client_config(server.http, **client_keys)
        http = httpx.AsyncClient(base_url=server.http, timeout=WAIT_S, trust_env=False)
        cfg = {"token": token, "config": config, "seed": random.randrange(1 << 30), "url": server.url,
               "project": project}
        client = cls(cfg, http)
        client.offer = offer
        return client

    # -- recordings -------------------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        super().on_event(event)

    def run(self, command: tuple[Any, ...]) -> None:
        self.commands.append((now_ms(), command))
        if command[0] == "log":
            self.records.append(command[1])
        if command[0] == "send" and self.muted and json.loads(command[2]).get("action") in self.muted:
            return
        super().run(command)

    def pump(self) -> None:
        if self.closed:  # after aclose(): nothing more is executed or scheduled
            self.rt.commands()
            return
        super().pump()

    def status(self) -> dict[str, Any]:
        return dict(self.rt.status)

    def opens(self) -> list[tuple[float, tuple[Any, ...]]]:
        return [(t, c) for t, c in self.commands if c[0] == "open"]

    def fetches(self, since: int = 0) -> list[str]:
        """Paths of the fetch commands, from command index `since` on."""
        return [c[3] for _, c in self.commands[since:] if c[0] == "fetch"]

    def sent(self) -> list[dict[str, Any]]:
        return [json.loads(c[2]) for _, c in self.commands if c[0] == "send"]

    def logged(self, event: str, since: int = 0) -> list[dict[str, Any]]:
        return [r for r in self.records[since:] if r.get("event") == event]

    def summary(self) -> str:
        tail = [(r.get("event"), r.get("state"), r.get("closeCode"), r.get("delayMs")) for r in self.records[-8:]]
        return f"status={self.rt.status} stats={self.rt.stats} last records={tail}"

    # -- I/O (bench adapter, counted so that aclose() can wait for it) -----------------------------

    async def open(self, sid: str, url: str, protocols: list[str]) -> None:
        self.inflight += 1
        if self.offer is not None:
            protocols = [*self.offer, *(p for p in protocols if p.startswith("bearer."))]
        try:
            await self.gate.wait()
            await super().open(sid, url, protocols)
        finally:
            self.inflight -= 1

    async def read(self, sid: str, ws: ClientConnection) -> None:
        self.selected.append(ws.subprotocol)
        await super().read(sid, ws)

    async def send(self, ws: ClientConnection, text: str) -> None:
        self.inflight += 1
        try:
            await super().send(ws, text)
        finally:
            self.inflight -= 1

    async def close(self, ws: ClientConnection, code: int, reason: str) -> None:
        self.inflight += 1
        try:
            await super().close(ws, code, reason)
        finally:
            self.inflight -= 1

    async def fetch(self, rid: str, method: str, path: str, body: Any = None, headers: Any = None) -> None:
        self.inflight += 1
        try:
            await super().fetch(rid, method, path, body, headers)
        finally:
            self.inflight -= 1

    # -- faults and control -------------------------------------------------------------------------

    def hold_dials(self) -> None:
        """From now on a dial waits (before connecting) until `release_dials()`."""
        self.gate.clear()

    def release_dials(self) -> None:
        self.gate.set()

    def drop(self) -> None:
        """Abort the current socket's TCP connection: no close frame, the adapter reports 1006."""
        ws = self.sockets[self.rt.connection.sid]
        assert ws.transport is not None
        ws.transport.abort()

    def watch(self, key: tuple[str, ...]) -> Callable[[], None]:
        """`rt.watch(key)` (starts its fetch when needed) and run the commands; returns unwatch."""
        unwatch = self.rt.watch(key, lambda entry: None, now_ms())
        self.pump()

        def stop() -> None:
            unwatch()
            self.pump()

        return stop

    def entry(self, key: tuple[str, ...]) -> Any:
        return self.rt.cache.get(key)

    def settled(self, *keys: tuple[str, ...]) -> bool:
        """Every key has fresh data, no fetch in flight and no coalesced refetch pending."""
        if self.rt.cache.get_timer() is not None:
            return False
        for key in keys:
            entry = self.rt.cache.get(key)
            if entry is None or entry.state != "success" or entry.stale or entry.fetching:
                return False
        return True

    async def until(self, predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        """`wait_until` with this client's status, stats and last records in the failure message."""
        return await wait_until(predicate, what, timeout, detail=self.summary)

    def input(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call a runtime input with `now`, then run its commands (e.g. `client.input(client.rt.retry_now)`)."""
        fn(*args, now_ms())
        self.pump()

    async def aclose(self) -> None:
        """Stop the runtime (close 1000), wait for every adapter coroutine, close the HTTP client."""
        if not self.closed:
            self.stop()
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
            self.release_dials()
            for task in list(self.dialing.values()):
                task.cancel()
            for ws in list(self.sockets.values()):
                await asyncio.wait_for(ws.close(), WAIT_S)
            await wait_until(lambda: self.inflight == 0, "the adapter's coroutines to finish")
        await self.http.aclose()
