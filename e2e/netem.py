"""`ShapedLink`: a TCP proxy between the browser and the server that shapes the link like a slow mobile network.

Every byte the page exchanges with the server (page, REST, the WebSocket's frames) crosses it. `throttle(rtt_ms,
bytes_per_s)` delays each direction by half the round trip and paces it to the given throughput (what
Chromium's own emulation does not do to the frames of an open WebSocket); `black_hole_websockets()` accepts
WebSocket handshakes and never answers them (the socket never opens). The server behind it can be killed and
restarted on the same port: the proxy stays, new connections reach the new process. Call `start()`/`stop()`.
"""

from __future__ import annotations

import asyncio
import threading
import time

from .harness import free_port

CHUNK = 4096


class ShapedLink:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.delay_s = 0.0  # one way
        self.bytes_per_s: float | None = None
        self.swallow_handshakes = False
        self.handshakes_swallowed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name=f"shaped-link-{self.port}", daemon=True)
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control (from the test's thread) -----------------------------------------------------

    def throttle(self, rtt_ms: float, bytes_per_s: float) -> None:
        self.delay_s = rtt_ms / 2000
        self.bytes_per_s = bytes_per_s

    def black_hole_websockets(self) -> None:
        self.swallow_handshakes = True

    def start(self) -> ShapedLink:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the shaped link did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- the proxy ------------------------------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._server = loop.run_until_complete(asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.read(CHUNK)
            if self.swallow_handshakes and b"upgrade: websocket" in first.lower():
                self.handshakes_swallowed += 1
                await reader.read()  # never answer; wait until the browser gives up
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:
                return  # the server is down: the browser sees the connection close
            await asyncio.gather(self._pipe(reader, up_writer, first), self._pipe(up_reader, writer, b""))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, first: bytes) -> None:
        """Copy one direction: each chunk leaves after its transmission time at the throughput plus the delay."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, sink))
        line_free = time.monotonic()
        try:
            data = first
            while True:
                if data:
                    now = time.monotonic()
                    line_free = max(now, line_free) + (len(data) / self.bytes_per_s if self.bytes_per_s else 0)
                    queue.put_nowait((line_free + self.delay_s, data))
                data = await source.read(CHUNK)
                if not data:
                    break
        except OSError:
            pass
        queue.put_nowait((time.monotonic() + self.delay_s, b""))
        await sender

    async def _send(self, queue: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                sink.write(data)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()
