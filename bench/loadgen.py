"""A load-generator process: many `websockets` client connections, driven over stdin/stdout JSON lines.

The fan-out driver starts several of these (`python -m bench.loadgen`) so that the clients are not the
bottleneck. Commands, one JSON object per line, each answered by one JSON line:

- `{"cmd":"connect","url":...,"count":K,"subprotocols":[...],"origin":...,"project":"apollo"}`: open K
  connections (at most `concurrency` handshakes in flight), subscribe each to the project, wait for
  `subscribed`.
- `{"cmd":"reset","start":N}`: forget latencies; every connection now expects bench events N, N+1, ...
- `{"cmd":"wait","per_conn":M,"wait_s":S}`: until every open connection got M events (or timeout).
- `{"cmd":"dump","path":...}`: write the latencies (seconds, float64) to `path`; reply with counts.
- `{"cmd":"close"}`: close everything and exit.

Server pings (`{"type":"ping"}`) are answered with `{"action":"pong"}`. `dashboard.v2` batch frames are
unpacked: every event in them counts (deliveries are events, not frames); `frames` counts what was received.
"""

from __future__ import annotations

import asyncio
import json
import time
from array import array
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from bench.env import run_worker, serve_commands


class Conn:
    __slots__ = ("ws", "count", "frames", "expected", "gaps", "dups", "close_code", "task")

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.count = 0
        self.frames = 0
        self.expected = 1
        self.gaps = 0
        self.dups = 0
        self.close_code: int | None = None
        self.task: asyncio.Task[None] | None = None


class LoadGen:
    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.latencies = array("d")
        self.first_recv = 0.0
        self.last_recv = 0.0
        self.connect_errors: dict[str, int] = {}

    async def reader(self, c: Conn) -> None:
        lat = self.latencies
        mono = time.monotonic
        try:
            async for text in c.ws:
                msg = json.loads(text)
                typ = msg.get("type")
                if typ == "event" or typ == "batch":
                    now = mono()
                    c.frames += 1
                    for event in msg["events"] if typ == "batch" else (msg,):
                        stamp = event.get("data", {}).get("bench")
                        if stamp is None:
                            continue
                        lat.append(now - stamp["t"])
                        if not self.first_recv:
                            self.first_recv = now
                        self.last_recv = now
                        n = stamp["n"]
                        c.count += 1
                        if n == c.expected:
                            c.expected = n + 1
                        elif n > c.expected:
                            c.gaps += n - c.expected
                            c.expected = n + 1
                        else:
                            c.dups += 1
                elif typ == "ping":
                    await c.ws.send('{"action":"pong"}')
        except websockets.ConnectionClosed:
            pass
        finally:
            c.close_code = c.ws.close_code if c.ws.close_code is not None else 1006

    async def open_one(self, cfg: dict[str, Any], sem: asyncio.Semaphore) -> None:
        async with sem:
            try:
                ws = await connect(
                    cfg["url"], subprotocols=cfg.get("subprotocols"), origin=cfg.get("origin"), compression=None,
                    proxy=None, ping_interval=None, open_timeout=cfg.get("open_timeout", 30), close_timeout=2,
                    max_queue=64,
                )
                first = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if first.get("type") != "connected":
                    raise RuntimeError(f"first frame {first.get('type')}:{first.get('error')}")
                await ws.send(json.dumps({"action": "subscribe", "projectId": cfg["project"]}))
                while True:
                    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if reply.get("type") == "subscribed":
                        break
                    if reply.get("type") == "error":
                        raise RuntimeError(f"subscribe error {reply.get('error')}")
            except Exception as exc:  # noqa: BLE001 - counted and reported, never fatal
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                self.connect_errors[key] = self.connect_errors.get(key, 0) + 1
                return
            c = Conn(ws)
            c.task = asyncio.create_task(self.reader(c))
            self.conns.append(c)

    async def cmd_connect(self, cfg: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        sem = asyncio.Semaphore(int(cfg.get("concurrency", 100)))
        await asyncio.gather(*(self.open_one(cfg, sem) for _ in range(int(cfg["count"]))))
        return {"open": len(self.conns), "errors": self.connect_errors, "secs": time.monotonic() - t0}

    def cmd_reset(self, start: int) -> dict[str, Any]:
        del self.latencies[:]  # in place: readers hold a reference
        self.first_recv = self.last_recv = 0.0
        for c in self.conns:
            c.count = c.frames = c.gaps = c.dups = 0
            c.expected = start
        return {"ok": True}

    def open_conns(self) -> list[Conn]:
        return [c for c in self.conns if c.close_code is None]

    async def cmd_wait(self, per_conn: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.count >= per_conn for c in self.open_conns()):
                break
            await asyncio.sleep(0.02)
        live = self.open_conns()
        return {"complete": sum(c.count >= per_conn for c in live), "open": len(live),
                "received": sum(c.count for c in self.conns), "first_recv": self.first_recv,
                "last_recv": self.last_recv, "timed_out": time.monotonic() >= deadline}

    def cmd_dump(self, path: str) -> dict[str, Any]:
        with open(path, "wb") as fh:
            self.latencies.tofile(fh)
        codes: dict[str, int] = {}
        for c in self.conns:
            if c.close_code is not None:
                codes[str(c.close_code)] = codes.get(str(c.close_code), 0) + 1
        counts = [c.count for c in self.conns] or [0]
        return {"samples": len(self.latencies), "received": sum(counts), "frames": sum(c.frames for c in self.conns),
                "min_per_conn": min(counts),
                "max_per_conn": max(counts), "gaps": sum(c.gaps for c in self.conns),
                "dups": sum(c.dups for c in self.conns), "closed": codes, "open": len(self.open_conns()),
                "first_recv": self.first_recv, "last_recv": self.last_recv}

    async def cmd_close(self) -> dict[str, Any]:
        async def close(c: Conn) -> None:
            try:
                await asyncio.wait_for(c.ws.close(), 3)
            except Exception:  # noqa: BLE001
                pass

        await asyncio.gather(*(close(c) for c in self.conns))
        for c in self.conns:
            if c.task:
                c.task.cancel()
        return {"closed": len(self.conns)}

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg.get("cmd")
        if cmd == "connect":
            return await self.cmd_connect(msg)
        if cmd == "reset":
            return self.cmd_reset(int(msg.get("start", 1)))
        if cmd == "wait":
            return await self.cmd_wait(int(msg["per_conn"]), float(msg.get("wait_s", 30)))
        if cmd == "dump":
            return self.cmd_dump(str(msg["path"]))
        if cmd == "close":
            return await self.cmd_close()
        return {"error": f"unknown cmd {cmd!r}"}

    async def serve(self) -> None:
        await serve_commands(self.handle, final="close", on_eof=self.cmd_close)


def main() -> None:
    run_worker(lambda: LoadGen().serve())


if __name__ == "__main__":
    main()
