"""The app factory. Call `create_app(settings)` and serve it with uvicorn (see `backend.cli`).

It wires the pieces: `Store` (SQLite), the event bus (`bus.from_url`), the real-time `Hub`, the REST
routes of `backend.api`, the WebSocket endpoint, metrics, and the static page with its vendored runtimes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from . import api, demo
from .bytecode import mpy_mount
from .bus import EventBus, from_url
from .logs import log_event
from .metrics import Metrics
from .page_policy import PagePolicy
from .realtime.endpoint import realtime_endpoint
from .realtime.hub import Hub
from .settings import Settings
from .storage import Store

ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
VENDOR = {
    "pyscript": NODE_MODULES / "@pyscript" / "core" / "dist",
    "micropython": NODE_MODULES / "@micropython" / "micropython-webassembly-pyscript",
    "pyodide": NODE_MODULES / "pyodide",
}


def create_app(settings: Settings | None = None, *, bus: EventBus | None = None, store: Store | None = None) -> Starlette:
    """Build the ASGI app. `bus` overrides `settings.bus_url` (tests share one bus between apps);
    `store` replaces the SQLite store (it is then neither opened, seeded nor closed here)."""
    settings = settings or Settings.from_env()
    settings.resolved_jwt_secret()  # fail fast on a short key
    metrics = Metrics()
    own_store = store is None
    store = store if store is not None else Store(settings.db_path)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if own_store:
            store.open()
            if settings.demo:
                demo.seed_if_empty(store)
        event_bus = bus or from_url(settings.bus_url, settings)
        await event_bus.start()
        hub = Hub(settings, event_bus, metrics, store)
        await hub.start()
        app.state.bus = event_bus
        app.state.hub = hub
        activity = demo.DemoActivity(settings, store, event_bus, metrics) if settings.demo_activity else None
        if activity:
            await activity.start()
        log_event("server.start", bus=settings.bus_url if bus is None else type(bus).__name__, demo=settings.demo)
        try:
            yield
        finally:
            if activity:
                await activity.stop()
            await hub.stop()
            if bus is None:
                await event_bus.stop()
            if own_store:
                store.close()
            log_event("server.stop")

    page_policy = PagePolicy(ROOT / "index.html")  # CSP hashes of the page's inline scripts, computed at start-up

    async def index(request: Request) -> Response:
        return FileResponse(ROOT / "index.html", headers=page_policy.headers(request.query_params.get("runtime")))

    async def config(request: Request) -> Response:
        return JSONResponse(settings.client_config())

    async def healthz(request: Request) -> Response:
        hub: Hub | None = getattr(request.app.state, "hub", None)
        ok = hub is not None and not hub.draining
        return JSONResponse({"status": "ok" if ok else "draining"}, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    routes = [
        Route("/", index),
        Route("/index.html", index),
        Route("/api/config", config),
        Route("/healthz", healthz),
        Route("/metrics", metrics_endpoint),
        *api.routes(),
        WebSocketRoute(settings.ws_path, realtime_endpoint),
        mpy_mount(ROOT / "web" / "client"),  # compiled now, at start-up; served as static files
        Mount("/web", app=StaticFiles(directory=ROOT / "web", check_dir=False), name="web"),
    ]
    for name, directory in VENDOR.items():
        routes.append(Mount(f"/vendor/{name}", app=StaticFiles(directory=directory, check_dir=False), name=name))

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=api.exception_handlers())
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.store = store
    return app
