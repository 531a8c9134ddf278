"""Headless clients: the real client core (`client.runtime.Runtime`) driven by asyncio and `websockets`.

`HeadlessClient` is an adapter like the browser's (`client.browser.adapter`): it runs the runtime's
commands (open/send/close with the `websockets` client, fetch with httpx, logs dropped), feeds every
socket event back with `now` (CLOCK_MONOTONIC milliseconds) and keeps exactly one timer armed at
`rt.get_timer()`. It records what the storm benchmark needs: every dial (`open` command), every
completed handshake, every `subscribed` frame, state changes and the bench numbers of the events the
application handler received.

`python -m bench.headless` is a worker process holding many clients, driven over stdin/stdout JSON
lines by `bench.storm`: `start`, `status`, `collect`, `stop` (see `Worker.serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from bench.env import run_worker, serve_commands


def now_ms() -> float:
    return time.monotonic() * 1000.0


class Recorder:
    """Timelines shared by every client of one worker (monotonic seconds)."""

    def __init__(self) -> None:
        self.dials: list[float] = []
        self.handshakes: list[float] = []
        self.dial_failures: list[float] = []
        self.close_codes: dict[str, int] = {}
        self.logs: dict[str, int] = {}
        self.hinted_ms: float | None = None  # the longest `reconnectWithinMs` a `restart` frame gave


class HeadlessClient:
    """One runtime, its sockets and its single timer."""

    def __init__(self, idx: int, cfg: dict[str, Any], rec: Recorder, http: Any) -> None:
        from client.runtime import Runtime

        self.idx = idx
        self.cfg = cfg
        self.rec = rec
        self.http = http
        self.token = cfg["token"]
        self.rt = Runtime(cfg["config"], lambda: self.token, rand=random.Random(cfg["seed"] + idx).random,
                          ws_url=cfg["url"])
        self.rt.subscribe(cfg["project"], self.on_event)
        self.sockets: dict[str, ClientConnection] = {}
        self.dialing: dict[str, asyncio.Task[None]] = {}
        self.abandoned: set[str] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_deadline: float | None = None
        self.state = "idle"
        self.states: list[tuple[float, str]] = []
        self.subscribed: list[tuple[float, bool | None]] = []
        self.numbers: set[int] = set()
        self.seq_gaps = 0
        self.last_seq: tuple[str, int] | None = None
        self.loop = asyncio.get_running_loop()

    # -- application side --------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        data = event.get("data")
        stamp = data.get("bench") if isinstance(data, dict) else None
        if isinstance(stamp, dict) and isinstance(stamp.get("n"), int):
            self.numbers.add(stamp["n"])
        epoch, seq = event.get("epoch"), event.get("seq")
        if isinstance(seq, int) and isinstance(epoch, str):
            if self.last_seq is not None and self.last_seq[0] == epoch and seq != self.last_seq[1] + 1:
                self.seq_gaps += 1
            self.last_seq = (epoch, seq)

    # -- pumping -----------------------------------------------------------------------------

    def start(self) -> None:
        self.rt.start(now_ms())
        self.pump()

    def stop(self) -> None:
        self.rt.stop(now_ms())
        self.pump()
        if self.timer:
            self.timer.cancel()

    def pump(self) -> None:
        for _ in range(20):
            commands = self.rt.commands()
            if not commands:
                break
            for command in commands:
                self.run(command)
        self.arm_timer()
        state = self.rt.status["state"]
        if state != self.state:
            self.state = state
            self.states.append((time.monotonic(), state))

    def run(self, command: tuple[Any, ...]) -> None:
        kind = command[0]
        if kind == "open":
            sid = command[1]
            self.rec.dials.append(time.monotonic())
            self.dialing[sid] = asyncio.create_task(self.open(sid, command[2], list(command[3] or [])))
        elif kind == "send":
            ws = self.sockets.get(command[1])
            if ws is not None:
                asyncio.create_task(self.send(ws, command[2]))
        elif kind == "close":
            sid = command[1]
            task = self.dialing.pop(sid, None)
            if task is not None:
                self.abandoned.add(sid)
                task.cancel()
            ws = self.sockets.pop(sid, None)
            if ws is not None:
                code = int(command[2]) if len(command) > 2 else 1000
                asyncio.create_task(self.close(ws, code, str(command[3]) if len(command) > 3 else ""))
        elif kind == "fetch":
            asyncio.create_task(self.fetch(*command[1:]))
        elif kind == "log":
            event = str(command[1].get("event")) if isinstance(command[1], dict) else "?"
            self.rec.logs[event] = self.rec.logs.get(event, 0) + 1
            if event == "restart-hint" and isinstance(command[1].get("delayMs"), (int, float)):
                self.rec.hinted_ms = max(self.rec.hinted_ms or 0, float(command[1]["delayMs"]))

    def arm_timer(self) -> None:
        deadline = self.rt.get_timer()
        if deadline == self.timer_deadline and (deadline is None or self.timer is not None):
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_deadline = deadline
        if deadline is None:
            return
        delay = max(0.0, (deadline - now_ms()) / 1000.0 + 0.001)
        self.timer = self.loop.call_later(delay, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        self.timer_deadline = None
        self.rt.handle_timer(now_ms())
        self.pump()

    # -- I/O -----------------------------------------------------------------------------------

    async def open(self, sid: str, url: str, protocols: list[str]) -> None:
        try:
            ws = await connect(url, subprotocols=protocols, origin=self.cfg.get("origin"),  # type: ignore[arg-type]
                               compression=None, proxy=None, ping_interval=None, open_timeout=30, close_timeout=2)
        except asyncio.CancelledError:
            return
        except Exception:  # noqa: BLE001 - refused, reset, HTTP error: the browser reports 1006
            self.dialing.pop(sid, None)
            self.rec.dial_failures.append(time.monotonic())
            self.rec.close_codes["1006"] = self.rec.close_codes.get("1006", 0) + 1
            self.rt.socket_closed(sid, 1006, "", now_ms())
            self.pump()
            return
        self.dialing.pop(sid, None)
        if sid in self.abandoned:
            await self.close(ws, 1000, "")
            return
        self.rec.handshakes.append(time.monotonic())
        self.sockets[sid] = ws
        self.rt.socket_opened(sid, now_ms())
        self.pump()
        await self.read(sid, ws)

    async def read(self, sid: str, ws: ClientConnection) -> None:
        project = self.cfg["project"]
        try:
            async for text in ws:
                if isinstance(text, bytes):
                    text = text.decode()
                if '"type":"subscribed"' in text[:40]:
                    with contextlib.suppress(ValueError):
                        msg = json.loads(text)
                        if msg.get("projectId") == project:
                            self.subscribed.append((time.monotonic(), msg.get("recovered")))
                self.rt.socket_message(sid, text, now_ms())
                self.pump()
        except websockets.ConnectionClosed:
            pass
        except Exception:  # noqa: BLE001
            pass
        code = ws.close_code if ws.close_code is not None else 1006
        self.rec.close_codes[str(code)] = self.rec.close_codes.get(str(code), 0) + 1
        if self.sockets.get(sid) is ws:
            del self.sockets[sid]
            self.rt.socket_closed(sid, code, ws.close_reason or "", now_ms())
            self.pump()

    async def send(self, ws: ClientConnection, text: str) -> None:
        with contextlib.suppress(Exception):
            await ws.send(text)

    async def close(self, ws: ClientConnection, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await ws.close(code if code == 1000 or 3000 <= code <= 4999 else 1000, reason[:120])

    async def fetch(self, rid: str, method: str, path: str, body: Any = None, headers: Any = None) -> None:
        hdrs = dict(headers or {})
        hdrs["Authorization"] = "Bearer " + self.token
        status, text = 0, ""
        try:
            resp = await self.http.request(method, path, headers=hdrs,
                                           content=None if body is None else (body if isinstance(body, str)
                                                                             else json.dumps(body)))
            status, text = resp.status_code, resp.text
        except Exception:  # noqa: BLE001 - network error: status 0
            pass
        self.rt.fetch_result(rid, status, text, now_ms())
        self.pump()


class Worker:
    """Many clients in one process, controlled over stdin/stdout JSON lines (`client_class` of each)."""

    client_class: type[HeadlessClient] = HeadlessClient

    def __init__(self) -> None:
        self.clients: list[HeadlessClient] = []
        self.rec = Recorder()
        self.http: Any = None

    async def cmd_start(self, msg: dict[str, Any]) -> dict[str, Any]:
        import httpx

        self.http = httpx.AsyncClient(base_url=msg["http_base"], timeout=15,
                                      limits=httpx.Limits(max_connections=100), trust_env=False)
        base = int(msg.get("first_index", 0))
        for i in range(int(msg["count"])):
            client = self.client_class(base + i, msg, self.rec, self.http)
            self.clients.append(client)
        spread = float(msg.get("start_spread_s", 0))
        for i, client in enumerate(self.clients):
            client.start()
            if spread and i % 10 == 9:
                await asyncio.sleep(spread * 10 / len(self.clients))
        return {"clients": len(self.clients)}

    def cmd_status(self, since: float) -> dict[str, Any]:
        states: dict[str, int] = {}
        for c in self.clients:
            states[c.state] = states.get(c.state, 0) + 1
        resubscribed = sum(1 for c in self.clients if c.state == "live" and c.subscribed and c.subscribed[-1][0] >= since)
        return {"states": states, "resubscribed": resubscribed, "clients": len(self.clients)}

    def cmd_have(self, upto: int, exclude: list[int]) -> dict[str, Any]:
        skip = set(exclude)
        wanted = [n for n in range(1, upto + 1) if n not in skip]
        complete = sum(1 for c in self.clients if all(n in c.numbers for n in wanted))
        return {"complete": complete, "clients": len(self.clients)}

    def cmd_collect(self, total: int, since: float, exclude: list[int]) -> dict[str, Any]:
        expected = set(range(1, total + 1)) - set(exclude)
        per_client = []
        for c in self.clients:
            missing = sorted(expected - c.numbers)
            back = next((t for t, _ in c.subscribed if t >= since), None)
            recovered = next((r for t, r in c.subscribed if t >= since), None)
            live_at = next((t for t, s in c.states if t >= since and s == "live"), None)
            per_client.append({"idx": c.idx, "missing": len(missing), "missing_first": missing[:5],
                               "resubscribed_at": back, "recovered": recovered, "live_at": live_at,
                               "seq_gaps": c.seq_gaps, "stats": c.rt.stats, "state": c.state})
        return {"dials": self.rec.dials, "handshakes": self.rec.handshakes, "dial_failures": self.rec.dial_failures,
                "close_codes": self.rec.close_codes, "logs": self.rec.logs, "hinted_ms": self.rec.hinted_ms,
                "clients": per_client}

    async def cmd_stop(self) -> dict[str, Any]:
        for c in self.clients:
            with contextlib.suppress(Exception):
                c.stop()
        await asyncio.sleep(0.2)
        sockets = [ws for c in self.clients for ws in c.sockets.values()]
        await asyncio.gather(*(asyncio.wait_for(ws.close(), 2) for ws in sockets), return_exceptions=True)
        for c in self.clients:
            for task in c.dialing.values():
                task.cancel()
        if self.http is not None:
            await self.http.aclose()
        return {"stopped": len(self.clients)}

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg.get("cmd")
        if cmd == "start":
            return await self.cmd_start(msg)
        if cmd == "status":
            return self.cmd_status(float(msg.get("since", 0)))
        if cmd == "have":
            return self.cmd_have(int(msg["upto"]), list(msg.get("exclude", [])))
        if cmd == "collect":
            return self.cmd_collect(int(msg["total"]), float(msg.get("since", 0)), list(msg.get("exclude", [])))
        if cmd == "stop":
            return await self.cmd_stop()
        return {"error": f"unknown cmd {cmd!r}"}

    async def serve(self) -> None:
        await serve_commands(self.handle, final="stop", on_eof=self.cmd_stop)


def main() -> None:
    run_worker(lambda: Worker().serve())


if __name__ == "__main__":
    main()
