"""Fixtures for the server tests: settings, a seeded store, the app under Starlette's TestClient with
the in-process bus, tokens for the demo users, and the events the bus saw."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest

with warnings.catch_warnings():
    # Starlette 1.10 warns at import that it prefers `httpx2` over the installed `httpx`.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from backend.app import create_app
from backend.auth import issue_token
from backend.bus.events import Event
from backend.bus.memory import MemoryBus
from backend.metrics import Metrics
from backend.settings import Settings
from backend.storage import Store

SECRET = "s" * 40


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"db": ":memory:", "jwt_secret": SECRET, "demo": True}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def store() -> Iterator[Store]:
    """An open, empty in-memory store."""
    s = Store(":memory:")
    s.open()
    yield s
    s.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


class Recorder:
    """Collects every event a bus delivers, in order."""

    def __init__(self, bus: Any) -> None:
        self.events: list[Event] = []
        self.unsubscribe = bus.listen(self.events.append)

    def types(self) -> list[str]:
        return [e.event_type for e in self.events]

    def clear(self) -> None:
        self.events.clear()


@pytest.fixture
def bus(settings: Settings) -> MemoryBus:
    return MemoryBus(settings)


@pytest.fixture
def recorder(bus: MemoryBus) -> Recorder:
    return Recorder(bus)


class Api:
    """The app under test: `client` (TestClient inside its lifespan) plus helpers for auth headers."""

    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings

    @property
    def app(self) -> Any:
        return self.client.app

    @property
    def store(self) -> Store:
        store: Store = self.client.app.state.store  # type: ignore[attr-defined]
        return store

    def token(self, user_id: str, **kwargs: Any) -> str:
        return issue_token(self.settings, user_id, **kwargs)[0]

    def headers(self, user_id: str | None, **extra: str) -> dict[str, str]:
        headers = dict(extra)
        if user_id is not None:
            headers["Authorization"] = f"Bearer {self.token(user_id)}"
        return headers

    def request(self, method: str, path: str, user_id: str | None = "alice", **kwargs: Any) -> Any:
        headers = {**self.headers(user_id), **kwargs.pop("headers", {})}
        return self.client.request(method, path, headers=headers, **kwargs)


@pytest.fixture
def api(settings: Settings, bus: MemoryBus) -> Iterator[Api]:
    """The demo-seeded app (alice: apollo + borealis, bob: cassini) on an in-memory database."""
    with TestClient(create_app(settings, bus=bus)) as client:
        yield Api(client, settings)
