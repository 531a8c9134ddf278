"""Helpers shared by the server tests (the fixtures in conftest.py build on them)."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from backend.auth import issue_token
from backend.bus.events import Event
from backend.settings import Settings

__all__ = ["SECRET", "Api", "Recorder", "SyncStore", "TestClient", "make_settings"]

SECRET = "s" * 40


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"db": ":memory:", "jwt_secret": SECRET, "demo": True}
    values.update(overrides)
    return Settings(**values)


class Recorder:
    """Collects every event a bus delivers, in order."""

    def __init__(self, bus: Any) -> None:
        self.events: list[Event] = []
        self.unsubscribe = bus.listen(self.events.append)

    def types(self) -> list[str]:
        return [e.event_type for e in self.events]

    def clear(self) -> None:
        self.events.clear()


class SyncStore:
    """The app's async store, called from a test thread: `sync.list_stories("apollo")` runs the coroutine on the
    app's event loop (the TestClient's portal) and returns its result."""

    def __init__(self, client: TestClient) -> None:
        self._client = client

    @property
    def target(self) -> Any:
        return self._client.app.state.store  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.target, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._client.portal.call(lambda: method(*args, **kwargs))  # type: ignore[union-attr]

        return call


class Api:
    """The app under test: `client` (TestClient inside its lifespan) plus helpers for auth headers."""

    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    @property
    def app(self) -> Any:
        return self.client.app

    @property
    def store(self) -> SyncStore:
        return SyncStore(self.client)

    def flush(self) -> None:
        """Wait until the relay has published every change committed so far (events are published after the
        response, by the relay task)."""
        relay = getattr(self.client.app.state, "relay", None)  # type: ignore[attr-defined]
        if relay is not None:
            self.client.portal.call(relay.flushed)  # type: ignore[union-attr]

    def token(self, user_id: str, **kwargs: Any) -> str:
        return issue_token(self.settings, user_id, **kwargs)[0]

    def headers(self, user_id: str | None, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if user_id is not None:
            headers["Authorization"] = f"Bearer {self.token(user_id)}"
        return headers

    def request(self, method: str, path: str, user_id: str | None = "alice", **kwargs: Any) -> Any:
        headers = {**self.headers(user_id), **kwargs.pop("headers", {})}
        response = self.client.request(method, path, headers=headers, **kwargs)
        if method not in ("GET", "HEAD"):
            self.flush()
        return response
