"""The app factory. Call `create_app(settings)` and serve it with uvicorn (see `backend.cli`).

It wires the pieces: the `Store` (`store.open_store`: SQLite or PostgreSQL), the event bus (`bus.from_url`), the
outbox `Relay`, the real-time `Hub`, the REST routes of `backend.api`, the WebSocket endpoint, metrics, health and
readiness, and the static page with its vendored runtimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
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
from .realtime.leases import UserLeases
from .limits import RedisLoginLimiter
from .relay import Relay
from .sessions import Sessions
from .settings import Settings
from .store import Store, open_store

READY_CHECK_TIMEOUT_S = 2.0
ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
VENDOR = {
    "pyscript": NODE_MODULES / "@pyscript" / "core" / "dist",
    "micropython": NODE_MODULES / "@micropython" / "micropython-webassembly-pyscript",
    "pyodide": NODE_MODULES / "pyodide",
}


async def _probe(check: object) -> str:
    """"ok", or why the check failed (bounded in time)."""
    try:
        await asyncio.wait_for(check, READY_CHECK_TIMEOUT_S)  # type: ignore[arg-type]
    except TimeoutError:
        return "timeout"
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return type(exc).__name__
    return "ok"


def create_app(settings: Settings | None = None, *, bus: EventBus | None = None, store: Store | None = None) -> Starlette:
    """Build the ASGI app. `bus` overrides `settings.bus_url` (tests share one bus between apps); `store` replaces the
    store of `settings.database_url` (it is then neither opened, seeded nor closed here)."""
    settings = settings or Settings.from_env()
    settings.resolved_jwt_secret()  # fail fast on a short key; read once, here
    metrics = Metrics()
    own_store = store is None
    store = store if store is not None else open_store(settings, max_size=settings.database_pool_size)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if own_store:
            await store.open()
            if settings.demo:
                await demo.seed_if_empty(store)
        event_bus = bus or from_url(settings.bus_url, settings)
        await event_bus.start()
        hub = Hub(settings, event_bus, metrics, store)
        await hub.start()
        relay = Relay(settings, store, event_bus, metrics)
        await relay.start()
        sessions = Sessions(settings, store, event_bus, hub, metrics)
        await sessions.start()
        app.state.sessions = sessions
        redis = getattr(event_bus, "client", None)  # the Redis connection pool, when the bus is Redis
        if redis is not None and not hasattr(app.state, "login_limiter"):
            app.state.login_limiter = RedisLoginLimiter(redis)  # sign-in windows shared by every node
        user_leases = UserLeases(redis, settings.max_connections_per_user) \
            if redis is not None and settings.max_connections_per_user else None
        if user_leases is not None:
            await user_leases.start()  # the per-user socket cap counted on every node
        app.state.user_leases = user_leases
        app.state.token_checker = sessions.check
        app.state.bus = event_bus
        app.state.hub = hub
        app.state.relay = relay
        activity = demo.DemoActivity(settings, store, relay, metrics) if settings.demo_activity else None
        if activity:
            await activity.start()
        log_event("server.start", bus=settings.bus_url if bus is None else type(bus).__name__, demo=settings.demo,
                  store=store.kind)
        try:
            yield
        finally:
            if activity:
                await activity.stop()
            await hub.stop()
            if user_leases is not None:
                await user_leases.stop()
            await relay.stop()
            if bus is None:
                await event_bus.stop()
            if own_store:
                await store.close()
            log_event("server.stop")

    page_policy = PagePolicy(ROOT / "index.html")  # CSP hashes of the page's inline scripts, computed at start-up

    async def index(request: Request) -> Response:
        return FileResponse(ROOT / "index.html", headers=page_policy.headers(request.query_params.get("runtime")))

    async def service_worker(request: Request) -> Response:
        """The offline cache of the page and its last reads (web/sw.js), at the root so its scope is the site."""
        return FileResponse(ROOT / "web" / "sw.js", media_type="text/javascript",
                            headers={"Cache-Control": "no-cache", "Service-Worker-Allowed": "/"})

    async def config(request: Request) -> Response:
        return JSONResponse(settings.client_config())

    async def healthz(request: Request) -> Response:
        """Liveness: the process serves requests (and is not draining)."""
        hub: Hub | None = getattr(request.app.state, "hub", None)
        ok = hub is not None and not hub.draining
        return JSONResponse({"status": "ok" if ok else "draining"}, status_code=200 if ok else 503)

    async def readyz(request: Request) -> Response:
        """Readiness for a load balancer: 200 when the store and the bus answer and the node is not draining."""
        hub: Hub | None = getattr(request.app.state, "hub", None)
        checks: dict[str, str] = {}
        if hub is None or hub.draining:
            checks["node"] = "draining"
        else:
            checks["node"] = "ok"
        checks["store"] = await _probe(store.ping())
        bus_ping = getattr(getattr(request.app.state, "bus", None), "ping", None)
        checks["bus"] = await _probe(bus_ping()) if bus_ping is not None else "ok"
        ok = all(value == "ok" for value in checks.values())
        return JSONResponse({"status": "ready" if ok else "unavailable", **checks}, status_code=200 if ok else 503,
                            headers={"Cache-Control": "no-store"})

    async def metrics_endpoint(request: Request) -> Response:
        if settings.metrics_port:  # served on the internal port only
            return JSONResponse({"error": "not_found", "message": "no such resource"}, status_code=404)
        if settings.metrics_token:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.metrics_token}".encode()):
                return JSONResponse({"error": "unauthorized", "message": "metrics need the metrics token"},
                                    status_code=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
        return Response(metrics.render(), media_type=metrics.content_type)

    routes = [
        Route("/", index),
        Route("/index.html", index),
        Route("/sw.js", service_worker),
        Route("/api/config", config),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
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
