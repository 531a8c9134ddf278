"""Start a throw-away PostgreSQL (Debian's `postgresql` package) on a free 127.0.0.1 port in a temporary
directory. `with PostgresServer() as pg: pg.url` → `postgresql://dashboard@127.0.0.1:<port>/dashboard`.

PostgreSQL refuses to run as root: when the tests run as root, the server runs as the `postgres` system user
(created by the package) through `runuser`. `stop()`/`start()` restart it on the same port with the same data;
`kill()` SIGKILLs it (crash), `fresh_database()` gives a test its own empty database.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

def _binary(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


INITDB = _binary("initdb")
POSTGRES = _binary("postgres")
SKIP_REASON = "PostgreSQL is not installed (make test installs Debian's postgresql package)"
_names = itertools.count(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    def __init__(self, port: int | None = None) -> None:
        assert INITDB and POSTGRES, SKIP_REASON
        self.port = port or free_port()
        self.url = f"postgresql://dashboard@127.0.0.1:{self.port}/dashboard"
        self._tmp = tempfile.TemporaryDirectory(prefix="pg-test-")
        self.data = os.path.join(self._tmp.name, "data")
        self.sockets = os.path.join(self._tmp.name, "run")
        self.log = os.path.join(self._tmp.name, "postgres.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")  # the package's system user
            os.chmod(self._tmp.name, 0o755)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._initdb()

    def _initdb(self) -> None:
        os.makedirs(self.data)
        os.makedirs(self.sockets)
        if self._as:
            shutil.chown(self.data, "postgres")
            shutil.chown(self.sockets, "postgres")
            shutil.chown(self._tmp.name, "postgres")
        subprocess.run(
            [*self._as, INITDB, "-D", self.data, "-U", "dashboard", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120,
        )

    def __enter__(self) -> PostgresServer:
        self.start()
        self.create_database("dashboard")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()

    def start(self, timeout_s: float = 30.0) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self._proc = subprocess.Popen(
            [*self._as, POSTGRES, "-D", self.data, "-p", str(self.port), "-k", self.sockets,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",  # fsync off survives a process crash, not an OS one
             "-c", "full_page_writes=off", "-c", "max_connections=200", "-c", "shared_buffers=32MB"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}: {self.log_tail()}")
            if self._psql("SELECT 1", check=False) == "1":
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("postgres did not start within %s s: %s" % (timeout_s, self.log_tail()))

    def _psql(self, sql: str, *, database: str = "postgres", check: bool = True) -> str:
        psql = _binary("psql") or "psql"
        done = subprocess.run(
            [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "dashboard", "-d", database, "-tAc", sql],
            capture_output=True, text=True, timeout=30,
        )
        if check and done.returncode != 0:
            raise RuntimeError(done.stderr)
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        self._psql(f'CREATE DATABASE "{name}"')
        return f"postgresql://dashboard@127.0.0.1:{self.port}/{name}"

    def fresh_database(self) -> str:
        """The URL of a new empty database (one per test keeps tests independent)."""
        return self.create_database(f"t{os.getpid()}_{next(_names)}")

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash); `start()` brings it back with the same data."""
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(10)
            self._proc = None
        pid_file = os.path.join(self.data, "postmaster.pid")
        deadline = time.monotonic() + 10
        while os.path.exists(pid_file) and time.monotonic() < deadline:  # children exit once the postmaster is gone
            try:
                with open(pid_file) as fh:
                    os.kill(int(fh.readline()), 0)
            except (OSError, ValueError):
                os.unlink(pid_file)
                break
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            os.killpg(self._proc.pid, signal.SIGINT)  # fast shutdown
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(5)
            self._proc = None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            with open(self.log, errors="replace") as fh:
                return fh.read()[-chars:]
        except OSError:
            return ""
