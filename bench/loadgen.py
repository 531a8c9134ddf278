"""A load-generator process: many WebSocket client connections, driven over stdin/stdout JSON lines.

The fan-out driver starts several of these (`python -m bench.loadgen`) so that the clients are not the
bottleneck. Each connection is a `picows` listener (a WebSocket client written in Cython): frames are parsed
in C and handed to `on_ws_frame` from the socket's read callback, with no task, queue or future per
connection or per frame; an event frame's bench stamps are read with one regular expression instead of a
JSON parse. Measured in the fan-out run (process CPU, kernel included): ~12-15 µs per frame, where the
`websockets` asyncio client with `json.loads` cost ~25-30 µs and filled the client core before the server's.
Commands, one JSON object per line, each answered by one JSON line:

- `{"cmd":"connect","url":...,"count":K,"subprotocols":[...],"origin":...,"project":"apollo"}`: open K
  connections (at most `concurrency` handshakes in flight), subscribe each to the project, wait for
  `subscribed`.
- `{"cmd":"reset","start":N}`: forget latencies; every connection now expects bench events N, N+1, ...
- `{"cmd":"wait","per_conn":M,"wait_s":S}`: until every open connection got M events (or timeout).
- `{"cmd":"dump","path":...}`: write the latencies (seconds, float64) to `path`; reply with counts.
- `{"cmd":"close"}`: close everything and exit.

Server pings (`{"type":"ping"}`) are answered with `{"action":"pong"}`. `dashboard.v2` batch frames are
unpacked: every event in them counts (deliveries are events, not frames); `frames` counts what was received.
A latency sample is the frame's receipt time minus the event's `data.bench.t`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from array import array
from typing import Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.env import run_worker, serve_commands

# `data.bench` as bench.server writes it (json.dumps, compact separators): {"n": number, "t": monotonic seconds}.
BENCH_STAMP = re.compile(rb'"bench":\{"n":(\d+),"t":([0-9.eE+-]+)\}')


class Conn(WSListener):
    """One client connection: `connected`, subscribe, `subscribed`, then counting bench events."""

    def __init__(self, gen: LoadGen, project: str) -> None:
        super().__init__()
        self.gen = gen
        self.project = project
        self.transport: WSTransport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stage = "connected"  # -> subscribing -> live
        self.parts: list[bytes] = []
        self.count = 0
        self.frames = 0
        self.expected = 1
        self.gaps = 0
        self.dups = 0
        self.close_code: int | None = None

    # picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.CONTINUATION:
            if frame.fin and not self.parts:
                self.on_text(frame.get_payload_as_bytes(), time.monotonic())
            else:  # a fragmented message (our servers do not fragment; kept correct anyway)
                self.parts.append(frame.get_payload_as_bytes())
                if frame.fin:
                    text, self.parts = b"".join(self.parts), []
                    self.on_text(text, time.monotonic())
        elif kind is WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(self.close_code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.close_code is None:
            self.close_code = 1006
        self.fail(ConnectionError(f"closed {self.close_code}"))

    # helpers
    def send(self, text: str) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.send(WSMsgType.TEXT, text.encode())

    def fail(self, exc: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # retrieved: open_one reports it, or nobody waits any more
            if self.transport is not None:
                self.transport.disconnect()

    def on_text(self, text: bytes, now: float) -> None:
        stamps = BENCH_STAMP.findall(text) if b'"bench":' in text else None
        if stamps:  # an event or batch frame of the benchmark: only its stamps are read (no JSON parse)
            self.frames += 1
            gen = self.gen
            for number, sent in stamps:
                gen.latencies.append(now - float(sent))
                if not gen.first_recv:
                    gen.first_recv = now
                gen.last_recv = now
                n = int(number)
                self.count += 1
                if n == self.expected:
                    self.expected = n + 1
                elif n > self.expected:
                    self.gaps += n - self.expected
                    self.expected = n + 1
                else:
                    self.dups += 1
            return
        msg = json.loads(text)
        typ = msg.get("type")
        if typ == "event" or typ == "batch":
            self.frames += 1  # an event without a bench stamp (not published by the benchmark)
        elif typ == "ping":
            self.send('{"action":"pong"}')
        elif self.stage == "connected":
            if typ != "connected":
                self.fail(RuntimeError(f"first frame {typ}:{msg.get('error')}"))
                return
            self.stage = "subscribing"
            self.send(json.dumps({"action": "subscribe", "projectId": self.project}))
        elif self.stage == "subscribing":
            if typ == "subscribed":
                self.stage = "live"
                if not self.ready.done():
                    self.ready.set_result(None)
            elif typ == "error":
                self.fail(RuntimeError(f"subscribe error {msg.get('error')}"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.send_close(WSCloseCode.OK)
            self.transport.disconnect()


class LoadGen:
    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.latencies = array("d")
        self.first_recv = 0.0
        self.last_recv = 0.0
        self.connect_errors: dict[str, int] = {}

    async def open_one(self, cfg: dict[str, Any], sem: asyncio.Semaphore) -> None:
        async with sem:
            conn = Conn(self, cfg["project"])
            headers = {"Sec-WebSocket-Protocol": ", ".join(cfg.get("subprotocols") or [])}
            if cfg.get("origin"):
                headers["Origin"] = cfg["origin"]
            try:
                await ws_connect(lambda: conn, cfg["url"], extra_headers=headers, max_frame_size=1 << 20,
                                 websocket_handshake_timeout=cfg.get("open_timeout", 30))
                await asyncio.wait_for(asyncio.shield(conn.ready), 20)
            except Exception as exc:  # noqa: BLE001 - counted and reported, never fatal
                key = f"{type(exc).__name__}: {str(exc)[:80]}"
                self.connect_errors[key] = self.connect_errors.get(key, 0) + 1
                if conn.transport is not None:
                    conn.transport.disconnect(graceful=False)
                return
            self.conns.append(conn)

    async def cmd_connect(self, cfg: dict[str, Any]) -> dict[str, Any]:
        t0 = time.monotonic()
        sem = asyncio.Semaphore(int(cfg.get("concurrency", 100)))
        await asyncio.gather(*(self.open_one(cfg, sem) for _ in range(int(cfg["count"]))))
        return {"open": len(self.conns), "errors": self.connect_errors, "secs": time.monotonic() - t0}

    def cmd_reset(self, start: int) -> dict[str, Any]:
        del self.latencies[:]  # in place: connections append to the same array
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
        for c in self.conns:
            c.close()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and self.open_conns():
            await asyncio.sleep(0.05)
        for c in self.open_conns():
            if c.transport is not None:
                c.transport.disconnect(graceful=False)
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
