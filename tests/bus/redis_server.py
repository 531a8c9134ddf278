"""Start a throw-away `redis-server` on a free 127.0.0.1 port for one test module: no persistence, or
append-only with `appendonly=True`. `kill()` SIGKILLs it, `pause()`/`resume()` SIGSTOP/SIGCONT it, `start()` again
after a kill keeps the port (and, with append-only, the data)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REDIS_BINARY = shutil.which("redis-server")
SKIP_REASON = "redis-server binary not found (install it with `make browser` or apt-get install redis-server)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """`with RedisServer() as redis: redis.url` → `redis://127.0.0.1:<port>/0`; stopped on exit."""

    def __init__(self, *, appendonly: bool = False) -> None:
        assert REDIS_BINARY, SKIP_REASON
        self.appendonly = appendonly
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._dir = tempfile.TemporaryDirectory(prefix="redis-test-")
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def restart(self) -> None:
        """Stop the server (its data is lost: no persistence) and start a fresh one on the same port."""
        self.stop()
        self.start()

    def start(self) -> RedisServer:
        self._proc = subprocess.Popen(
            [REDIS_BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
             "--dir", self._dir.name, "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.__exit__()
        raise RuntimeError("redis-server did not start within 10 s")

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._dir.cleanup()

    def stop(self) -> None:
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)  # a paused server cannot exit
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None

    def kill(self) -> None:
        """SIGKILL: connections drop at once; without append-only persistence the data is gone."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
            self._proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered until `resume()`."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            assert sock.recv(16).startswith(b"+OK")
