"""Helpers shared by the browser suite and `python -m e2e.screenshots`.

`DashboardServer` runs `python -m backend serve` on a free 127.0.0.1 port with scaled-down timings
and can be SIGKILLed, SIGTERMed, SIGSTOPped/SIGCONTed and restarted on the same port with the same
database and JWT secret. `Api` is a second client talking REST with httpx. `CHROMIUM_ARGS` are the
flags Debian's Chromium needs here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]
# Scaled-down timings: the whole suite relies on these being small.
FAST_TIMINGS = {
    "DASHBOARD_HEARTBEAT_INTERVAL_MS": "1000",
    "DASHBOARD_HEARTBEAT_MISSES": "2",
    "DASHBOARD_RECONNECT_BASE_MS": "200",
    "DASHBOARD_RECONNECT_MAX_MS": "1000",
    "DASHBOARD_RECONNECT_MAX_ATTEMPTS": "3",
    "DASHBOARD_CONNECT_TIMEOUT_MS": "2000",
    "DASHBOARD_SUSPENDED_RETRY_MS": "5000",
    "DASHBOARD_RESTART_WINDOW_MS": "1000",
}
JWT_SECRET = "e2e-only-secret-" + "x" * 40
USERS = {"alice": "alice-demo", "bob": "bob-demo"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout_s: float, interval_s: float = 0.05, message: str = "condition") -> None:
    """Poll `predicate` until it is true; raise TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {message}")


class DashboardServer:
    """One `python -m backend serve` process on a fixed port; `start()`, `kill()`, `restart()`, `stop()`."""

    def __init__(self, workdir: Path, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.env = dict(FAST_TIMINGS)
        self.env.update(
            {
                "DASHBOARD_DB": str(self.workdir / "dashboard.db"),
                "DASHBOARD_VAR_DIR": str(self.workdir),
                "DASHBOARD_JWT_SECRET": JWT_SECRET,
                "DASHBOARD_DEMO": "1",
                "DASHBOARD_DEMO_ACTIVITY": "0",
                "DASHBOARD_LOG_LEVEL": "warning",
            }
        )
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.log_path = self.workdir / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> DashboardServer:
        """Start the process and wait until `/healthz` answers 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASHBOARD_")}
        env.update(self.env)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.starts += 1
        wait_until(self._healthy, timeout_s, message=f"server on port {self.port} (see {self.log_path})")
        return self

    def _healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"server exited with {self.proc and self.proc.returncode}: {self.log_tail()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample of `GET /metrics` (0 when absent), e.g. `websocket_active_connections`."""
        text = httpx.get(self.url + "/metrics", timeout=5.0).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    return sample.value
        return 0.0

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: every socket drops at once (the browser sees close 1006)."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM: graceful drain (restart frame, close 1012); wait for the exit."""
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def pause(self) -> None:
        """SIGSTOP: a hung server; sockets stay open but nothing moves."""
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def restart(self) -> DashboardServer:
        """Start again on the same port with the same database and secret (after kill/terminate)."""
        return self.start()

    def stop(self) -> None:
        """Stop whatever is left (also a stopped process), never leaving a child behind."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        end_process(proc)


def end_process(proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Api:
    """Another client of the REST API (httpx), signed in as one demo user."""

    def __init__(self, base_url: str, username: str = "alice") -> None:
        self.base_url = base_url
        self.client = httpx.Client(base_url=base_url, timeout=10.0)
        response = self.client.post("/api/auth/login", json={"username": username, "password": USERS[username]})
        response.raise_for_status()
        self.client.headers["Authorization"] = "Bearer " + response.json()["token"]

    def stories(self, project_id: str) -> list[dict]:
        response = self.client.get(f"/api/projects/{project_id}/stories")
        response.raise_for_status()
        return response.json()

    def move_story(self, story_id: int, status: str) -> dict:
        response = self.client.patch(f"/api/stories/{story_id}", json={"status": status})
        response.raise_for_status()
        return response.json()

    def create_escalation(self, project_id: str, title: str) -> dict:
        response = self.client.post(f"/api/projects/{project_id}/escalations", json={"title": title})
        response.raise_for_status()
        return response.json()

    def close(self) -> None:
        self.client.close()


def pick_move(stories: list[dict], avoid: tuple[str, ...] = ()) -> tuple[dict, str]:
    """A story and a status it is not in yet (deterministic: the lowest id, then the next status)."""
    order = ["todo", "in_progress", "review", "done", "blocked"]
    story = sorted(stories, key=lambda s: s["id"])[0]
    for status in order[order.index(story["status"]) + 1 :] + order:
        if status != story["status"] and status not in avoid:
            return story, status
    raise AssertionError("no status to move to")
