"""A load-balanced dashboard on 127.0.0.1: PostgreSQL, redis-server (append-only), N `dashboard serve` nodes and
HAProxy with `deploy/haproxy.cfg`, every process started here and stopped by `stop()`.

`python -m bench.cluster` is `make cluster` (HAProxy on port 8000, or `PORT`; demo data seeded once; Ctrl-C stops
everything). The cluster tests (`tests/cluster/`) and the cluster benchmark (`bench/cluster_fanout.py`) build
`Cluster(...)` with free ports and scaled-down timings, then use `start()`, `node(i).kill()` / `.term()` /
`.start()`, `restart_redis()`, `postgres.stop()` / `.start()`, `proxy.wait_status(...)` and `stop()`.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.env import HOST, ROOT, free_port

HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
DEMO_USERS = "alice / alice-demo (Apollo, Borealis), bob / bob-demo (Cassini)"


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll `predicate` until it returns something true (returned); `TimeoutError` naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)


def http_status(url: str, timeout_s: float = 2.0) -> int:
    """The status code of `GET url`, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 - loopback only
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


def proxy_maxconn(wanted: int = 20000) -> int:
    """HAProxy needs two descriptors per proxied connection: stay within this machine's hard limit."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        return wanted
    return max(100, min(wanted, (hard - 100) // 2))


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without any DASHBOARD_*/PROXY_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DASHBOARD_", "PROXY_"))}
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{ROOT / 'web'}"
    env.update(extra)
    return env


def serve_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "backend", "serve", "--host", HOST, "--port", str(port)]


class Node:
    """One `python -m backend serve` process (or `argv(port)`) on a fixed port; restartable on that port."""

    def __init__(self, name: str, port: int, env: dict[str, str], log: Path,
                 argv: Callable[[int], list[str]] | None = None) -> None:
        self.name = name
        self.port = port
        self.env = env
        self.log = log
        self.argv = argv or serve_argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, wait: bool = True, timeout_s: float = 60.0) -> Node:
        assert not self.alive(), f"{self.name} already runs"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(self.port), cwd=ROOT, env=_clean_env(self.env), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.proc and self.proc.returncode}: {self.log_tail()}")
            return http_status(self.url + "/readyz") == 200

        wait_for(ready, timeout_s, f"{self.name} ready (log: {self.log})")

    def readyz(self) -> int:
        return http_status(self.url + "/readyz")

    def kill(self) -> None:
        """SIGKILL: a crash; every socket of this node drops at once."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def term(self, wait: bool = True, timeout_s: float = 30.0) -> int | None:
        """SIGTERM: /readyz 503 at once, restart hint after DASHBOARD_DRAIN_DELAY_MS, then exit."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        if not wait:
            return None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.alive():
            try:
                self.term(timeout_s=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


class HAProxy:
    """`haproxy -db -f deploy/haproxy.cfg` with its PROXY_* variables; `status()` reads the stats page."""

    def __init__(self, env: dict[str, str], log: Path, cfg: Path = HAPROXY_CFG) -> None:
        self.env = env
        self.log = log
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def stats_url(self) -> str:
        return f"http://{self.env['PROXY_STATS_BIND']}/"

    def check(self) -> None:
        done = subprocess.run([HAPROXY or "haproxy", "-c", "-q", "-f", str(self.cfg)], env=_clean_env(self.env),
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"haproxy -c failed: {done.stdout}{done.stderr}")

    def start(self) -> HAProxy:
        self.check()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([HAPROXY or "haproxy", "-db", "-f", str(self.cfg)], env=_clean_env(self.env),
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self.status() or self._exited(), 20, "haproxy stats page")
        return self

    def _exited(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"haproxy exited with {self.proc.returncode}: {self.log.read_text(errors='replace')[-2000:]}")
        return False

    def stats(self) -> list[dict[str, str]]:
        """The stats page as CSV rows (`pxname`, `svname`, `status`, `scur` = current sessions, …)."""
        with urllib.request.urlopen(self.stats_url + ";csv", timeout=2) as resp:  # noqa: S310 - loopback only
            return list(csv.DictReader(io.StringIO(resp.read().decode().lstrip("# "))))

    def status(self) -> dict[str, str]:
        """`{server name: "UP" | "DOWN" | "UP 1/2" | "NOLB" | …}` of the `nodes` backend ({} if not answering)."""
        try:
            rows = self.stats()
        except (urllib.error.URLError, OSError):
            return {}
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "nodes" and row["svname"] not in
                ("FRONTEND", "BACKEND")}

    def wait_status(self, server: str, status: str, timeout_s: float = 20.0) -> float:
        """Wait until HAProxy reports `server` exactly `status` ("UP", "DOWN"); returns the seconds it took."""
        started = time.monotonic()
        wait_for(lambda: self.status().get(server) == status or self._exited(), timeout_s,
                 f"haproxy: {server} {status} (now {self.status()})", interval_s=0.02)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# Node settings for a production-like run; tests and benchmarks override timings.
NODE_DEFAULTS = {
    "DASHBOARD_LOG_LEVEL": "warning",
    "DASHBOARD_DRAIN_DELAY_MS": "2000",  # covers PROXY_CHECK_INTER 1s + (fall 2 - 1) x fastinter 250ms
    "DASHBOARD_TRUSTED_PROXIES": HOST,  # HAProxy connects from 127.0.0.1: believe its X-Forwarded-For
    # Each node takes half the clients of a node that stops: their handshakes and subscribes check the database.
    "DASHBOARD_DATABASE_POOL_SIZE": "20",
}


class Cluster:
    """PostgreSQL + Redis (append-only) + `nodes` nodes + HAProxy, all on 127.0.0.1.

    `node_env` is added to every node's environment (DASHBOARD_*), `proxy_env` to HAProxy's (PROXY_*).
    `proxy_port=None` picks a free port. `workdir` holds the logs (a temporary directory if None).
    """

    def __init__(self, *, nodes: int = 2, proxy_port: int | None = None, node_env: dict[str, str] | None = None,
                 proxy_env: dict[str, str] | None = None, workdir: Path | None = None, demo: bool = True,
                 node_argv: Callable[[int], list[str]] | None = None) -> None:
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="dashboard-cluster-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proxy_port = proxy_port or free_port()
        self.node_count = nodes
        self.node_env = dict(node_env or {})
        self.proxy_env = dict(proxy_env or {})
        self.demo = demo
        self.node_argv = node_argv
        self.jwt_secret = secrets.token_urlsafe(48)
        self.postgres: Any = None
        self.database_url = ""
        self.redis: Any = None
        self.nodes: list[Node] = []
        self.proxy: HAProxy | None = None

    # -- addresses --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.proxy_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.proxy_port}/ws/status-updates"

    def node(self, index: int) -> Node:
        return self.nodes[index]

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> Cluster:
        """Start everything and wait until HAProxy sees every node UP. Stops what it started if anything fails."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from tests.bus.redis_server import RedisServer
        from tests.postgres_server import PostgresServer

        if not HAPROXY:
            raise RuntimeError("haproxy is not installed (make test installs Debian's haproxy package)")
        self.postgres = PostgresServer()
        self.postgres.start()
        database_url = self.database_url = self.postgres.create_database("dashboard")
        self.redis = RedisServer(appendonly=True).start()
        env = dict(NODE_DEFAULTS)
        env.update({
            "DASHBOARD_DATABASE_URL": database_url,
            "DASHBOARD_BUS_URL": self.redis.url,
            "DASHBOARD_JWT_SECRET": self.jwt_secret,
            "DASHBOARD_VAR_DIR": str(self.workdir),
            "DASHBOARD_DEMO": "1" if self.demo else "0",
        })
        env.update(self.node_env)
        self.nodes = [Node(f"node{i + 1}", free_port(), env, self.workdir / f"node{i + 1}.log", self.node_argv)
                      for i in range(self.node_count)]
        # The first node applies the migrations and seeds the demo data; the others find both done.
        self.nodes[0].start()
        for node in self.nodes[1:]:
            node.start(wait=False)
        for node in self.nodes[1:]:
            node.wait_ready()
        proxy_env = {
            "PROXY_BIND": f"{HOST}:{self.proxy_port}",
            "PROXY_STATS_BIND": f"{HOST}:{free_port()}",
            "PROXY_MAXCONN": str(proxy_maxconn()),
        }
        proxy_env.update({f"PROXY_NODE{i + 1}": f"{HOST}:{node.port}" for i, node in enumerate(self.nodes[:2])})
        if len(self.nodes) == 1:
            proxy_env["PROXY_NODE2"] = f"{HOST}:{free_port()}"  # nothing listens there: it stays DOWN
        proxy_env.update(self.proxy_env)
        cfg = self._proxy_cfg()
        self.proxy = HAProxy(proxy_env, self.workdir / "haproxy.log", cfg).start()
        for node in self.nodes:
            self.proxy.wait_status(node.name, "UP", 30)

    def _proxy_cfg(self) -> Path:
        """deploy/haproxy.cfg itself for two nodes; for more, a copy with one `server` line per extra node."""
        if len(self.nodes) <= 2:
            return HAPROXY_CFG
        text = HAPROXY_CFG.read_text()
        anchor = '    server node2 "${PROXY_NODE2-127.0.0.1:8002}"\n'
        extra = "".join(f'    server node{i + 1} "{HOST}:{node.port}"\n' for i, node in enumerate(self.nodes) if i >= 2)
        path = self.workdir / "haproxy.cfg"
        path.write_text(text.replace(anchor, anchor + extra))
        return path

    def restart_redis(self, down_s: float = 0.0) -> None:
        """Stop redis-server (its append-only file keeps the data), wait `down_s`, start it on the same port."""
        self.redis.stop()
        if down_s:
            time.sleep(down_s)
        self.redis.start()

    def stop(self) -> None:
        """Stop HAProxy, the nodes, Redis and PostgreSQL (whatever of them runs), then remove the temporary files."""
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.stop()
        for node in self.nodes:  # all drain at once
            with contextlib.suppress(Exception):
                node.term(wait=False)
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.__exit__()
            self.redis = None
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.__exit__()
            self.postgres = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> int:
    """`make cluster`: the load-balanced dashboard on http://127.0.0.1:8000/ until Ctrl-C."""
    from bench.env import install_cleanup

    install_cleanup()  # SIGTERM/SIGHUP → SystemExit, so the finally below runs
    port = int(os.environ.get("PORT", "8000"))
    print(f"Starting PostgreSQL, redis-server, two dashboard nodes and HAProxy on http://{HOST}:{port}/ …", flush=True)
    cluster = Cluster(proxy_port=port, node_env={"DASHBOARD_DEMO_ACTIVITY": "1", "DASHBOARD_LOG_LEVEL": "info"},
                      workdir=Path(tempfile.mkdtemp(prefix="dashboard-cluster-")))
    try:
        cluster.start()
        print(f"""
Dashboard (through HAProxy): {cluster.url}/
  demo logins:               {DEMO_USERS}
HAProxy stats:               {cluster.proxy.stats_url if cluster.proxy else '?'}   (Prometheus: …/metrics)""", flush=True)
        for node in cluster.nodes:
            print(f"{node.name}:                       {node.url}/   /readyz, /metrics; log {node.log}", flush=True)
        print(f"""PostgreSQL:                  {cluster.postgres.url}
Redis (append-only):         {cluster.redis.url}
Logs:                        {cluster.workdir}
Ctrl-C stops everything.""", flush=True)
        while all(node.alive() for node in cluster.nodes) and cluster.proxy and cluster.proxy.proc \
                and cluster.proxy.proc.poll() is None:
            time.sleep(0.5)
        print("a process of the cluster exited; stopping the rest", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nstopping …", flush=True)
        return 0
    finally:
        cluster.stop()
        shutil.rmtree(cluster.workdir, ignore_errors=True)
        print("stopped: HAProxy, nodes, Redis, PostgreSQL", flush=True)


if __name__ == "__main__":
    sys.exit(main())
