"""Helpers for the real-time tests: settings with scaled-down timings, the real SQLite store with the demo data
(`demo_store`, `set_members`), a fake store for the sans-I/O units, tokens, an in-process uvicorn server
(`LiveServer`, real sockets, same uvicorn options as `dashboard serve`) and small `websockets` client helpers
with timeouts.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from backend.app import create_app
from backend.auth import issue_token
from backend.bus import Event, EventBus
from backend.bus.memory import MemoryBus
from backend.cli import DashboardServer, uvicorn_config
from backend.demo import seed_if_empty
from backend.settings import Settings
from backend.store import Store
from backend.store.sqlite import SqliteEngine

SECRET = "test-secret-" + "x" * 40
V2 = ("dashboard.v2", "dashboard.v1")  # what the client core offers
MEMBERS = {"alice": {"apollo", "borealis"}, "bob": {"cassini"}}
TIMEOUT = 5.0


def make_settings(**overrides: Any) -> Settings:
    base = Settings(jwt_secret=SECRET, db=":memory:", var_dir="var-test-unused", heartbeat_interval_ms=30000)
    return base.with_overrides(**overrides)


def blocking(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    """Run `await fn(*args)` to completion from synchronous code, even inside a running event loop (on a helper
    thread with its own loop). The SQLite store may be used from any loop: its calls run in its own thread."""
    result: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(_call(fn, *args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=run, name="blocking-store-call")
    thread.start()
    thread.join(TIMEOUT * 4)
    if thread.is_alive():
        raise TimeoutError(f"{fn} did not finish")
    if error:
        raise error[0]
    return result[0]


async def _call(fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    return await fn(*args, **kwargs)


def demo_store() -> Store:
    """A fresh in-memory `Store` with the demo data: alice ∈ {apollo, borealis}, bob ∈ {cassini}."""
    store = Store(SqliteEngine(":memory:"))
    blocking(store.open)
    blocking(seed_if_empty, store)
    return store


async def _set_members(store: Store, user_id: str, projects: set[str]) -> None:
    if not await store.has_user(user_id):
        await store.add_user(user_id, user_id.title(), password_hash="scrypt$00$00")  # cannot log in; tokens are issued directly
    for project_id in projects:
        if await store.get_project(project_id) is None:
            await store.add_project(project_id, project_id.title())
    current = set(await store.project_ids_for(user_id))
    for project_id in current - projects:
        await store.remove_member(user_id, project_id)
    for project_id in projects - current:
        await store.add_member(user_id, project_id)


def set_members(store: Store, user_id: str, projects: set[str]) -> None:
    """Make `user_id` (created if needed) a member of exactly `projects` (created if needed)."""
    blocking(_set_members, store, user_id, projects)


class FlakyBus(MemoryBus):
    """`MemoryBus` whose history reads fail while `down` is set (subscribes then answer `unavailable`)."""

    down = False

    async def position(self, project_id: str) -> tuple[str, int]:
        if self.down:
            raise ConnectionError("event bus down")
        return await super().position(project_id)

    async def replay(self, project_id: str, epoch: str, seq: int) -> list[Event] | None:
        if self.down:
            raise ConnectionError("event bus down")
        return await super().replay(project_id, epoch, seq)


class FakeStore:
    """Stands in for `backend.store.Store` in the sans-I/O unit tests, where only membership matters."""

    def __init__(self, members: dict[str, set[str]] | None = None) -> None:
        self.members = {user: set(projects) for user, projects in (members or MEMBERS).items()}
        self.membership_checks = 0

    def open(self) -> None: ...

    def close(self) -> None: ...

    def is_member(self, user_id: str, project_id: str) -> bool:
        self.membership_checks += 1
        return project_id in self.members.get(user_id, ())

    def user(self, user_id: str) -> dict[str, Any] | None:
        if user_id not in self.members:
            return None
        return {"id": user_id, "name": user_id.title(), "projects": sorted(self.members[user_id])}


def token_for(settings: Settings, user_id: str = "alice", **kwargs: Any) -> str:
    return issue_token(settings, user_id, **kwargs)[0]


def token_with(settings: Settings, user_id: str = "alice", *, ttl_s: float = 3600, **claims: Any) -> str:
    """A token with extra claims (e.g. `sid`, `jti`) signed like `issue_token`'s."""
    import jwt

    now = int(time.time())
    payload = {"sub": user_id, "iat": now, "exp": now + ttl_s, "aud": settings.jwt_audience, "iss": settings.jwt_issuer,
               **claims}
    return jwt.encode(payload, settings.resolved_jwt_secret(), algorithm="HS256")


async def events_of(ws: ClientConnection, count: int, *, timeout: float = TIMEOUT) -> tuple[list[dict[str, Any]], int]:
    """Read until `count` events arrived (batches unpacked); returns `(events, frames read)`."""
    events: list[dict[str, Any]] = []
    frames = 0
    while len(events) < count:
        message = await recv(ws, timeout=timeout)
        frames += 1
        if message["type"] == "batch":
            events.extend(message["events"])
        else:
            assert message["type"] == "event", message
            events.append(message)
    return events, frames


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """A real uvicorn (`DashboardServer`) serving `create_app(settings)` in a background thread,
    on the real store with the demo data unless `store` is given."""

    def __init__(self, settings: Settings, store: Any | None = None, bus: EventBus | None = None) -> None:
        self.settings = settings
        self.store = store if store is not None else demo_store()
        self.app = create_app(settings, bus=bus, store=self.store)
        self.port = free_port()
        self.server = DashboardServer(uvicorn_config(self.app, settings, "127.0.0.1", self.port))
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=f"uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{self.settings.ws_path}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve()

        asyncio.run(main())

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(20)
        assert not self._thread.is_alive(), "uvicorn did not stop"
        close = getattr(self.store, "close", None)
        if close is not None and asyncio.iscoroutinefunction(close):
            blocking(close)

    def sigterm(self) -> None:
        """What uvicorn does on SIGTERM (signal handlers only exist in the main thread)."""
        self.server.handle_exit(signal.SIGTERM, None)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()

    # -- calling into the server's loop ---------------------------------------------------------

    async def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), TIMEOUT)

    async def publish(self, project_id: str, event_type: str = "story.created", data: dict[str, Any] | None = None) -> Any:
        return await self.call(self.app.state.bus.publish, project_id, event_type, data or {})

    async def publish_many(self, project_id: str, count: int, event_type: str = "story.created") -> list[Any]:
        async def run() -> list[Any]:
            return [await self.app.state.bus.publish(project_id, event_type, {"n": n}) for n in range(count)]

        return await self.call(run)

    @property
    def metrics(self) -> Any:
        return self.app.state.metrics

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.metrics.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    async def wait_metric(self, name: str, expected: float, labels: dict[str, str] | None = None) -> float:
        """Wait (bounded) until a metric reaches `expected`: the server records a close after the client saw it."""
        try:
            async with asyncio.timeout(TIMEOUT):
                while self.metric(name, labels) != expected:
                    await asyncio.sleep(0.01)
        except TimeoutError:
            pass
        return self.metric(name, labels)


# -- client helpers -----------------------------------------------------------------------------


def open_ws(server: LiveServer, token: str | None = None, *, via: str = "subprotocol",
            protocols: tuple[str, ...] = ("dashboard.v1",), **kwargs: Any) -> Any:
    """`async with open_ws(server, token) as ws:`; `via` is "subprotocol" or "query"; `protocols` are offered
    before the bearer token (a `dashboard.v1` client by default; `V2` for one that also speaks batches)."""
    url = server.url
    subprotocols = list(protocols)
    if token is not None and via == "subprotocol":
        subprotocols.append("bearer." + token)
    elif token is not None:
        url += "?token=" + token
    kwargs.setdefault("open_timeout", TIMEOUT)
    kwargs.setdefault("close_timeout", 2)
    return connect(url, subprotocols=subprotocols, **kwargs)  # type: ignore[arg-type]


async def recv(ws: ClientConnection, *, skip_pings: bool = True, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next JSON message (server pings skipped unless asked)."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if skip_pings and message.get("type") == "ping":
            continue
        return message


async def recv_type(ws: ClientConnection, type_: str, *, timeout: float = TIMEOUT) -> dict[str, Any]:
    message = await recv(ws, timeout=timeout)
    assert message.get("type") == type_, message
    return message


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


async def subscribe(ws: ClientConnection, project_id: str, since: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Send subscribe; return every message up to and including the `subscribed` reply."""
    payload: dict[str, Any] = {"action": "subscribe", "projectId": project_id}
    if since is not None:
        payload["since"] = since
    await send(ws, payload)
    messages = []
    while True:
        message = await recv(ws)
        messages.append(message)
        if message.get("type") in ("subscribed", "error"):
            return messages


async def close_code(ws: ClientConnection, *, timeout: float = TIMEOUT) -> tuple[int | None, list[dict[str, Any]]]:
    """Read until the server closes; return `(close code, messages read meanwhile)`."""
    messages: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                messages.append(json.loads(await ws.recv()))
    except ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), messages
