"""Machine facts, versions, ports and child processes shared by every benchmark.

Call `machine_info()` for the header every run prints, `raise_nofile()` before opening thousands of
sockets, `free_port()` for a loopback port, and `Child` to start a subprocess that is always killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RAW = RESULTS / "raw"
PYTHON = sys.executable
HOST = "127.0.0.1"

UVICORN_FIELDS = ("ws", "ws_per_message_deflate", "ws_max_size", "ws_ping_interval", "ws_ping_timeout", "loop",
                  "http", "backlog", "access_log", "timeout_graceful_shutdown", "limit_concurrency")


def uvicorn_settings() -> dict[str, object]:
    """The uvicorn options both benchmark servers run with: the product's own (`backend.cli.uvicorn_config`)."""
    from backend.cli import uvicorn_config
    from backend.settings import Settings

    config = uvicorn_config(None, Settings.from_env(), HOST, 0)
    return {name: getattr(config, name) for name in UVICORN_FIELDS}


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit and return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_mb() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def _git_head() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, object]:
    """Everything a reader needs to judge the numbers: machine, versions, load at start."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "mem_total_mb": _mem_total_mb(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "nofile": raise_nofile(),
        "versions": {
            "python": platform.python_version(),
            "uvicorn": _version("uvicorn"),
            "starlette": _version("starlette"),
            "websockets": _version("websockets"),
            "uvloop": _version("uvloop"),
            "httptools": _version("httptools"),
            "playwright": _version("playwright"),
        },
        "git_head": _git_head(),
        "uvicorn_settings": uvicorn_settings(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def print_header(title: str, info: dict[str, object], settings: dict[str, object]) -> None:
    v = info["versions"]
    assert isinstance(v, dict)
    print(f"== {title}", flush=True)
    print(f"   machine: nproc={info['nproc']} mem={info['mem_total_mb']} MB cpu={info['cpu_model']!r} "
          f"load={info['loadavg_at_start']} nofile={info['nofile']}", flush=True)
    print("   versions: " + " ".join(f"{k}={v[k]}" for k in ("python", "uvicorn", "starlette", "websockets",
                                                            "uvloop", "httptools")), flush=True)
    print(f"   uvicorn: {json.dumps(info['uvicorn_settings'], sort_keys=True)}", flush=True)
    print(f"   settings: {json.dumps(settings, sort_keys=True, default=str)}", flush=True)


_CHILDREN: list[Child] = []


def _cleanup() -> None:
    for child in list(_CHILDREN):
        with contextlib.suppress(Exception):
            child.kill()


def install_cleanup() -> None:
    """Kill every `Child` still running at exit, and turn SIGTERM/SIGHUP into a normal exit (finally blocks run)."""
    import atexit

    atexit.register(_cleanup)

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


class Child:
    """A subprocess in its own process group, killed (group-wide, by its own pgid) on `stop()`.

    Use as a context manager; `stop()` tries SIGTERM, then SIGKILL after `grace_s`.
    """

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, log: Path | None = None,
                 stdin: int | None = None, stdout: int | None = None, cpus: set[int] | None = None) -> None:
        self.args = args
        self.log_path = log
        self._log = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONPATH", f"{ROOT}{os.pathsep}{ROOT / 'web'}")
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=full_env, stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else self._log, stderr=self._log, start_new_session=True,
        )
        if cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, cpus)
        _CHILDREN.append(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace_s: float = 5.0) -> int | None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=5)
        else:
            # The leader is gone; make sure nothing it started survives in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
            self._log = subprocess.DEVNULL
        if self in _CHILDREN:
            _CHILDREN.remove(self)
        return self.proc.returncode

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_http(url: str, timeout_s: float, child: Child | None = None) -> None:
    """Poll `url` until it answers 2xx; raise `TimeoutError` (or `RuntimeError` if `child` died)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"server exited with {child.proc.returncode}; see {child.log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
                if 200 <= resp.status < 300:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout_s}s ({last})")


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100); NaN when empty."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


class Redis:
    """A private redis-server on a free loopback port, no persistence."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.child = Child(["redis-server", "--port", str(self.port), "--bind", HOST, "--save", "",
                            "--appendonly", "no", "--dir", str(tmp), "--protected-mode", "yes"],
                           log=RAW / f"redis-{self.port}.log")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        self.child.stop()


class JsonLineChild:
    """A `python -m <module>` child driven over stdin/stdout JSON lines (`bench.loadgen`, `bench.headless`).

    `await JsonLineChild.start(module)`, then `await child.call(cmd=...)` (one reply line per command), and
    `await child.stop()` (sends `{"cmd": "close"|"stop"}`, then kills it if it is still there).
    """

    def __init__(self, proc: Any, stop_cmd: str) -> None:
        self.proc = proc
        self.stop_cmd = stop_cmd

    @classmethod
    async def start(cls, module: str, *, stop_cmd: str, cpus: set[int] | None = None) -> JsonLineChild:
        import asyncio

        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'web'}")
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", module, cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, start_new_session=True, limit=1 << 24)
        if cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(proc.pid, cpus)
        return cls(proc, stop_cmd)

    async def call(self, timeout: float = 120, **msg: Any) -> dict[str, Any]:
        import asyncio

        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"child {self.proc.pid} exited")
        return dict(json.loads(line))

    def cpu_s(self) -> float:
        import psutil

        with contextlib.suppress(psutil.Error):
            t = psutil.Process(self.proc.pid).cpu_times()
            return float(t.user + t.system)
        return 0.0

    async def stop(self) -> None:
        import asyncio

        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call(timeout=20, cmd=self.stop_cmd)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 10)


async def serve_commands(handle: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]], final: str,
                         on_eof: Callable[[], Awaitable[Any]]) -> None:
    """A worker process's control loop: one JSON command per stdin line, `await handle(msg)` written back as one
    JSON line. Returns after answering the `final` command, or after `await on_eof()` when stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            await on_eof()
            return
        msg = json.loads(line)
        reply = await handle(msg)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if msg.get("cmd") == final:
            return


def run_worker(main: Callable[[], Awaitable[None]]) -> None:
    """Run a worker's coroutine on uvloop when available, with the file-descriptor limit raised."""
    raise_nofile()
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())  # type: ignore[arg-type]
    else:
        uvloop.run(main())  # type: ignore[arg-type]
