"""Command line: `dashboard serve --host H --port P` (also `python -m backend serve …`).

Reads `Settings.from_env()`, sets up JSON logging (tokens redacted, uvicorn's access log included) and runs
uvicorn with the websockets-sansio protocol, no per-message deflate, `ws_max_size = max_message_bytes` and
`limit_concurrency` (`DASHBOARD_LIMIT_CONCURRENCY`).
On SIGTERM/SIGINT, `DashboardServer` marks the node draining at once (/readyz 503), waits
`DASHBOARD_DRAIN_DELAY_MS` for the load balancer to notice, drains the hub (restart frame + close 1012 to every
client) and only then lets uvicorn shut down.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn

from .app import create_app
from .logs import configure_logging, log_event
from .settings import Settings

DRAIN_WAIT_S = 3.0  # how long shutdown waits for clients to receive their restart frame and close
GRACEFUL_SHUTDOWN_S = 10  # then uvicorn's own bound for the remaining tasks


class DashboardServer(uvicorn.Server):
    """uvicorn server that drains the real-time hub before uvicorn closes the sockets itself.

    On SIGTERM/SIGINT the node is marked draining at once (in the signal handler): /readyz answers 503 and new
    WebSockets get the restart hint, while the sockets already open keep their events. After
    `DASHBOARD_DRAIN_DELAY_MS` (time for a load balancer's health checks to take the node out) the hub sends every
    client the restart hint and closes it with 1012, and only then does uvicorn stop listening and close what is
    left. Without this, uvicorn would close every WebSocket with 1012 before the lifespan shutdown runs, so the app
    could not say goodbye. Call `serve()` as usual; a second Ctrl-C skips the delay.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.drain_started: float | None = None  # monotonic time of the first exit signal
        self._drained = False

    def _hub(self) -> Any:
        return getattr(getattr(self.config.app, "state", None), "hub", None)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain_started is None:
            self.drain_started = time.monotonic()
            hub = self._hub()
            if hub is not None:
                hub.draining = True  # from this instant: /readyz 503, new sockets refused with the restart hint
        super().handle_exit(sig, frame)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        hub = self._hub()
        if hub is not None and not self._drained:
            self._drained = True
            settings = getattr(self.config.app.state, "settings", None)
            delay_s = (settings.drain_delay_ms if settings else 0) / 1000
            started = self.drain_started if self.drain_started is not None else time.monotonic()
            log_event("server.draining", connections=hub.connection_count, delay_ms=round(delay_s * 1000))
            while not self.force_exit and time.monotonic() - started < delay_s:  # still serving, /readyz says 503
                await asyncio.sleep(min(0.05, max(0.0, delay_s - (time.monotonic() - started))))
            try:
                await hub.drain(DRAIN_WAIT_S)
            except Exception:  # never let a drain problem block the shutdown
                logging.getLogger("dashboard").exception("drain failed")
        await super().shutdown(sockets=sockets)


def uvicorn_config(app: Any, settings: Settings, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    """The uvicorn settings the real-time layer relies on (tests reuse them for in-process servers)."""
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "httptools",
        "ws": "websockets-sansio",
        "ws_per_message_deflate": False,
        "ws_max_size": settings.max_message_bytes,
        "lifespan": "on",
        "log_config": None,  # keep configure_logging()'s JSON handlers and RedactingFilter
        "access_log": True,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        # Behind a proxy every client shares the proxy's address: believe X-Forwarded-For only from the proxies named
        # in DASHBOARD_TRUSTED_PROXIES (off by default), so limits per address see the real client.
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": list(settings.trusted_proxies) or None,
        "limit_concurrency": settings.limit_concurrency or None,  # over it, new HTTP requests get 503
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def _print_banner(settings: Settings, host: str, port: int) -> None:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # a wildcard bind is reachable on loopback
    print(f"Dashboard: http://{shown}:{port}/", file=sys.stderr, flush=True)
    if settings.demo:
        print("Demo logins: alice / alice-demo, bob / bob-demo", file=sys.stderr, flush=True)


GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Make full garbage collections rare: with thousands of connections a full pass walks every task and frame
    (≈0.5 s at 5000 sockets, the fan-out p99 in docs/performance.md). Objects alive after start-up are frozen out
    of the collector's reach and the generation-0 threshold is raised so per-delivery garbage triggers fewer passes."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def serve_metrics(app: Any, settings: Settings) -> None:
    """`DASHBOARD_METRICS_PORT`: serve /metrics on its own internal port (a prometheus_client thread)."""
    from prometheus_client import start_http_server

    start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=app.state.metrics.registry)
    log_event("metrics.listen", host=settings.metrics_host, port=settings.metrics_port)


def serve(host: str, port: int, settings: Settings | None = None) -> None:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    app = create_app(settings)
    if settings.metrics_port:
        serve_metrics(app, settings)
    if settings.gc_tuning:
        tune_gc()
    server = DashboardServer(uvicorn_config(app, settings, host, port))
    _print_banner(settings, host, port)
    log_event("server.listen", host=host, port=port, ws_path=settings.ws_path)
    server.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dashboard", description="Live dashboard for an agent orchestrator")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the web server (settings from DASHBOARD_* variables)")
    serve_cmd.add_argument("--host", default="127.0.0.1")
    serve_cmd.add_argument("--port", type=int, default=8000)
    commands.add_parser("migrate", help="apply the database migrations (also done at every start) and exit")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        parser.error(str(exc))
    if args.command == "serve":
        serve(args.host, args.port, settings)
    elif args.command == "migrate":
        return migrate(settings)
    return 0


def migrate(settings: Settings) -> int:
    """`dashboard migrate`: apply the missing migrations to `DASHBOARD_DATABASE_URL`; idempotent."""
    import asyncio

    from .store import open_store

    configure_logging(settings.log_level)

    async def run() -> tuple[list[int], int]:
        store = open_store(settings)
        await store.open(migrate=False)
        try:
            applied = await store.migrate()
            return applied, await store.schema_version()
        finally:
            await store.close()

    applied, version = asyncio.run(run())
    print(f"schema version {version}; applied {', '.join(map(str, applied)) if applied else 'nothing (up to date)'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
