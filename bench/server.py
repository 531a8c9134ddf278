"""The server side of the benchmarks: our app or a bare baseline, both under identical uvicorn settings.

Run `python -m bench.server --kind app|bare --port P`. Both kinds get the bench-only routes:

- `WS /bench/control`: JSON commands from the bench driver, one reply each:
  `{"cmd":"publish","n":N,"rate":R,"project":"apollo","start":K}` publishes N numbered events at R events per
  second (R=0: back to back) as changes of two events, the way the product's changes publish them
  (`story.status.changed` then `project.updated`, back to back; an odd last event is a lone `project.updated`),
  and replies when done; `{"cmd":"rss"}`; `{"cmd":"profile","action":"start"|"stop", "path":...}` (pyinstrument,
  in process).
- `GET /bench/pages/…`: the browser floors (app kind): `floor.html` (plain JavaScript doing what the dashboard
  page does), `floor-micropython.html` / `floor-pyodide.html` (PyScript + interpreter and nothing else).
- `GET /bench/ready`: 200 once the app has started.

`app` is `backend.app.create_app(Settings.from_env())` and publishes through `app.state.bus.publish`.
`bare` is the naive Starlette fan-out: it accepts `/ws/status-updates` (selecting `dashboard.v1`), answers
subscribe/ping, and a publish loops `await ws.send_text(text)` over every socket with the same event frame our
server sends, one frame per event.
Every event carries `data.bench = {"n": number, "t": CLOCK_MONOTONIC seconds}` so receivers can measure
publish-to-receipt latency (the clock is system-wide on Linux). In fixed-rate mode `t` is the scheduled
publish instant, so a publisher that falls behind shows up as latency (no coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from bench.env import raise_nofile

HERE = Path(__file__).resolve().parent
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
EVENT_TYPE = "story.status.changed"  # a change's first event; `project.updated` follows it
CLOSING_TYPE = "project.updated"


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE_SIZE


def event_data(n: int, t: float, project: str) -> dict[str, Any]:
    """A realistic `story.status.changed` payload plus the bench stamp."""
    story_id = 1000 + n % 50
    return {
        "storyId": story_id,
        "from": "todo",
        "to": "in_progress",
        "story": {
            "id": story_id,
            "projectId": project,
            "title": f"Bench story {story_id}: wire the status board to the live feed",
            "status": "in_progress",
            "assignee": "u-alice",
            "updatedAt": int(time.time() * 1000),
        },
        "bench": {"n": n, "t": t},
    }


def project_data(n: int, t: float, project: str) -> dict[str, Any]:
    """A realistic `project.updated` payload plus the bench stamp."""
    return {
        "project": {
            "id": project,
            "name": project.title(),
            "description": "Bench project: every story of the live feed",
            "updatedAt": int(time.time() * 1000),
            "counts": {"todo": 12, "in_progress": 7, "review": 3, "done": 41, "blocked": 1, "openEscalations": 2},
        },
        "bench": {"n": n, "t": t},
    }


def change_events(first: int, count: int, t: float, project: str) -> list[tuple[str, dict[str, Any]]]:
    """The `(event type, data)` of one change numbered `first`.. (`count` 2: status change + project update)."""
    if count == 1:
        return [(CLOSING_TYPE, project_data(first, t, project))]
    return [(EVENT_TYPE, event_data(first, t, project)), (CLOSING_TYPE, project_data(first + 1, t, project))]


class Publisher:
    """Publishes numbered events at a fixed rate, two per change, through `publish_one(event_type, data, project)`."""

    def __init__(self, publish_one: Any) -> None:
        self.publish_one = publish_one

    async def run(self, n: int, rate: float, start: int, project: str) -> dict[str, Any]:
        t0 = time.monotonic()
        lag_max = 0.0
        failed: list[int] = []
        errors: dict[str, int] = {}
        for i in range(0, n, 2):
            number = start + i
            if rate > 0:
                scheduled = t0 + i / rate
                delay = scheduled - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                lag_max = max(lag_max, time.monotonic() - scheduled)
                stamp = scheduled
            else:
                stamp = time.monotonic()
            for k, (event_type, data) in enumerate(change_events(number, min(2, n - i), stamp, project)):
                try:
                    await self.publish_one(event_type, data, project)
                except Exception as exc:  # noqa: BLE001 - a failed publish is counted, the run goes on
                    failed.append(number + k)
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            if rate <= 0:
                await asyncio.sleep(0)  # one change per loop turn, as separate requests would publish them
        return {"published": n - len(failed), "failed": failed, "errors": errors, "elapsed_s": time.monotonic() - t0,
                "lag_max_ms": lag_max * 1000}


class Profiling:
    def __init__(self) -> None:
        self.profiler: Any = None

    def start(self) -> None:
        from pyinstrument import Profiler

        self.profiler = Profiler(interval=0.0005, async_mode="disabled")
        self.profiler.start()

    def stop(self, path: str) -> dict[str, Any]:
        if self.profiler is None:
            return {"error": "not started"}
        self.profiler.stop()
        text = self.profiler.output_text(unicode=False, color=False, show_all=False)
        Path(path).write_text(text)
        Path(path).with_suffix(".html").write_text(self.profiler.output_html())
        self.profiler.last_session.save(str(Path(path).with_suffix(".pyisession")))
        self.profiler = None
        return {"written": path}


def tracemalloc_report(path: str, per: int) -> dict[str, Any]:
    """Write the top allocation sites (by traceback) still alive, divided by `per` connections; stop tracing."""
    if not tracemalloc.is_tracing():
        return {"error": "not tracing"}
    snapshot = tracemalloc.take_snapshot().filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
    ])
    tracemalloc.stop()
    total = sum(stat.size for stat in snapshot.statistics("filename"))
    lines = [f"# live Python allocations traced since start: {total / 2**20:.2f} MiB; per connection "
             f"(/{per}): {total / per / 1024:.2f} KiB", ""]
    lines.append("## by line (size per connection)")
    for stat in snapshot.statistics("lineno")[:30]:
        frame = stat.traceback[0]
        lines.append(f"{stat.size / per:9.0f} B  {stat.count / per:7.2f} blocks  {frame.filename}:{frame.lineno}")
    lines.append("")
    lines.append("## by file")
    for stat in snapshot.statistics("filename")[:20]:
        lines.append(f"{stat.size / per:9.0f} B  {stat.traceback[0].filename}")
    lines.append("")
    lines.append("## allocated from our code (backend/), by the innermost backend/ line on the traceback")
    ours: dict[str, list[int]] = {}
    for stat in snapshot.statistics("traceback"):
        site = next((f"{f.filename}:{f.lineno}" for f in reversed(stat.traceback) if "/backend/" in f.filename), None)
        if site is not None:
            entry = ours.setdefault(site, [0, 0])
            entry[0] += stat.size
            entry[1] += stat.count
    for site, (size, count) in sorted(ours.items(), key=lambda kv: -kv[1][0])[:25]:
        lines.append(f"{size / per:9.0f} B  {count / per:7.2f} blocks  {site}")
    Path(path).write_text("\n".join(lines) + "\n")
    return {"written": path, "traced_bytes": total, "per_conn_bytes": total / per}


class GcPauses:
    """Every cyclic-GC pass of this process, per generation: count, total and longest pause (ms)."""

    def __init__(self) -> None:
        self.stats = {g: [0, 0.0, 0.0] for g in range(3)}
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        ms = (time.perf_counter() - self._started) * 1000
        entry = self.stats[info.get("generation", 0)]
        entry[0] += 1
        entry[1] += ms
        entry[2] = max(entry[2], ms)

    def snapshot(self) -> dict[str, list[float]]:
        return {str(g): list(v) for g, v in self.stats.items()}


GC_PAUSES = GcPauses()


def bench_routes(publisher: Publisher, *, floor: bool) -> list[Any]:
    profiling = Profiling()

    async def control(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                msg = json.loads(await ws.receive_text())
                cmd = msg.get("cmd")
                if cmd == "publish":
                    reply = await publisher.run(int(msg["n"]), float(msg.get("rate", 0)), int(msg.get("start", 1)),
                                                str(msg.get("project", "apollo")))
                elif cmd == "rss":
                    reply = {"rss": rss_bytes(), "pid": os.getpid()}
                elif cmd == "gcstats":
                    reply = {"gc": GC_PAUSES.snapshot(), "objects": len(gc.get_objects()) if msg.get("count") else None}
                elif cmd == "profile" and msg.get("action") == "start":
                    profiling.start()
                    reply = {"profiling": True}
                elif cmd == "profile":
                    reply = profiling.stop(str(msg["path"]))
                elif cmd == "tracemalloc" and msg.get("action") == "start":
                    tracemalloc.start(int(msg.get("frames", 8)))
                    reply = {"tracing": True}
                elif cmd == "tracemalloc":
                    reply = tracemalloc_report(str(msg["path"]), int(msg.get("per", 1)))
                else:
                    reply = {"error": f"unknown cmd {cmd!r}"}
                await ws.send_text(json.dumps(reply))
        except WebSocketDisconnect:
            pass

    async def ready(request: Request) -> Response:
        return PlainTextResponse("ok")

    routes: list[Any] = [WebSocketRoute("/bench/control", control), Route("/bench/ready", ready)]
    if floor:
        routes.append(Mount("/bench/pages", app=StaticFiles(directory=HERE / "pages"), name="bench-pages"))
    return routes


class with_prefix:  # noqa: N801 - reads as a function
    """ASGI app routing `/bench/*` to `bench` and everything else (lifespan included) to `inner`."""

    def __init__(self, inner: Any, bench: Any, prefix: str = "/bench/") -> None:
        self.inner, self.bench, self.prefix = inner, bench, prefix
        self.state: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith(self.prefix):
            await self.bench(scope, receive, send)
        else:
            await self.inner(scope, receive, send)


def build_app_kind(settings: Any) -> tuple[Any, Any]:
    from backend.app import create_app

    inner = create_app(settings)

    async def publish_one(event_type: str, data: dict[str, Any], project: str) -> None:
        await inner.state.bus.publish(project, event_type, data)

    bench = Starlette(routes=bench_routes(Publisher(publish_one), floor=True))
    return inner, with_prefix(inner, bench)


def build_bare_kind() -> Any:
    clients: set[WebSocket] = set()
    seqs: dict[str, int] = {}
    epoch = "bare-" + os.urandom(4).hex()

    async def endpoint(ws: WebSocket) -> None:
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol="dashboard.v1" if "dashboard.v1" in offered else None)
        await ws.send_text(json.dumps({"type": "connected", "clientId": f"c-{id(ws):x}", "userId": "u-bare",
                                       "heartbeatMs": 30000, "epoch": epoch}))
        clients.add(ws)
        try:
            while True:
                text = await ws.receive_text()
                try:
                    msg = json.loads(text)
                except ValueError:
                    continue
                action = msg.get("action") if isinstance(msg, dict) else None
                if action == "subscribe":
                    project = str(msg.get("projectId"))
                    await ws.send_text(json.dumps({"type": "subscribed", "projectId": project, "recovered": False,
                                                   "replayed": 0, "seq": seqs.get(project, 0), "epoch": epoch}))
                elif action == "ping":
                    await ws.send_text('{"type":"pong"}')
        except WebSocketDisconnect:
            pass
        finally:
            clients.discard(ws)

    async def publish_one(event_type: str, data: dict[str, Any], project: str) -> None:
        seq = seqs[project] = seqs.get(project, 0) + 1
        text = json.dumps({"type": "event", "eventType": event_type, "projectId": project, "seq": seq,
                           "epoch": epoch, "timestamp": int(time.time() * 1000), "data": data},
                          separators=(",", ":"), ensure_ascii=False)
        for ws in list(clients):
            try:
                await ws.send_text(text)
            except Exception:  # noqa: BLE001 - a vanished client must not stop the loop
                clients.discard(ws)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    routes = [WebSocketRoute("/ws/status-updates", endpoint), Route("/healthz", healthz),
              *bench_routes(Publisher(publish_one), floor=False)]
    return Starlette(routes=routes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["app", "bare"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--variant", default="", help="bench-only experiments on our server, comma-separated (see bench.variants)")
    args = parser.parse_args()
    raise_nofile()
    if args.variant:
        from bench.variants import VARIANTS

        for name in args.variant.split(","):
            VARIANTS[name]()
    from backend.cli import DashboardServer, tune_gc, uvicorn_config
    from backend.logs import configure_logging
    from backend.settings import Settings

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    if args.kind == "app":
        inner, app = build_app_kind(settings)
        # DashboardServer finds the hub on `config.app.state`: expose the inner app's state on the wrapper.
        app.state = inner.state
        if settings.gc_tuning:  # as `dashboard serve` does
            tune_gc()
        DashboardServer(uvicorn_config(app, settings, args.host, args.port)).run()
    else:
        uvicorn.Server(uvicorn_config(build_bare_kind(), settings, args.host, args.port)).run()


if __name__ == "__main__":
    main()
