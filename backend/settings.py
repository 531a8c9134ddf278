"""Settings from the environment (`DASHBOARD_*`). Call `Settings.from_env()`, then pass it to `create_app()`.

Every field has an environment variable named `DASHBOARD_<FIELD>` in upper case; the README lists them.
Tests build `Settings(...)` directly with scaled-down timings instead of patching constants.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

MIN_SECRET_BYTES = 32
# DASHBOARD_RECONNECT_JITTER -> the client core's `backoff` option (web/client/backoff.py)
RECONNECT_JITTER = {"full": "jitter", "none": "seed"}


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _parse_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


_SECRETS: dict[Path, bytes] = {}  # generated JWT keys, by file, read once per process


def _read_or_create_secret(path: Path) -> bytes:
    """The key in `path`, creating it first if missing. The new key is written to a temporary file and linked into
    place, so a process starting at the same moment either sees no file or the whole key, never a partial one."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(48))
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # atomic, and fails if another process won the race: then theirs is used
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip().encode()


@dataclass(frozen=True)
class Settings:
    """All server settings; times are in the unit their name says (`_ms`, `_s`)."""

    var_dir: str = "var"
    database_url: str = ""  # empty: sqlite:///<db> ; postgresql://user:pass@host:port/db for PostgreSQL
    db: str = ""  # SQLite path alias kept for older set-ups; empty: <var_dir>/dashboard.db; ":memory:" for tests
    database_pool_size: int = 10  # PostgreSQL connections per node
    jwt_secret: str = ""  # empty: generated once and kept in <var_dir>/jwt-secret
    jwt_issuer: str = "orchestrator-dashboard"
    jwt_audience: str = "dashboard"
    jwt_leeway_s: int = 0
    token_ttl_s: int = 900
    refresh_ttl_s: int = 604800  # refresh cookie lifetime, sliding with each refresh
    session_max_s: int = 2592000  # a sign-in session ends this long after sign-in, refreshed or not
    heartbeat_interval_ms: int = 30000
    heartbeat_misses: int = 2
    reconnect_base_ms: int = 1000
    reconnect_max_ms: int = 16000
    reconnect_max_attempts: int = 10
    connect_timeout_ms: int = 10000
    suspended_retry_ms: int = 60000
    reconnect: bool = True  # `off`: the browser makes no timed retries (Retry, `online` and a visible tab still dial)
    reconnect_jitter: str = "full"  # `full` jitter, or `none`: the exact 1, 2, 4, 8, 16 s doubling table
    demo: bool = False
    demo_activity: bool = False
    demo_activity_interval_ms: int = 4000
    allowed_origins: tuple[str, ...] = ()  # empty: same-origin only
    max_connections_per_user: int = 20  # 0 = no cap
    max_connections_per_ip: int = 100  # open WebSockets per client address; 0 = no cap
    limit_concurrency: int = 10000  # uvicorn: connections + tasks before HTTP requests get 503; 0 = no limit
    max_subscriptions: int = 64
    max_message_bytes: int = 65536
    rate_limit_per_s: float = 20.0  # sustained client messages per second per connection
    rate_limit_burst: int = 60
    send_queue_size: int = 256  # per-connection outbound queue (live frames and replies); overflow closes 4008
    send_queue_bytes: int = 1048576  # per-connection outbound budget in characters of JSON, replays included
    restart_window_ms: int = 5000  # clients spread their reconnect over this after SIGTERM
    restart_rate: int = 250  # handshakes per second one node re-admits: a node of N sockets hints >= N / this; 0 = off
    drain_delay_ms: int = 0  # after SIGTERM: /readyz 503 this long (load balancer notices) before the restart hint
    history_size: int = 1000
    history_ttl_s: float = 120.0
    bus_url: str = "memory://"
    bus_outage_s: float = 30.0  # events not numbered for longer than this start a new epoch (clients refetch)
    outbox_retention_s: int = 3600  # published outbox rows are kept this long, then pruned
    idempotency_ttl_s: int = 86400  # first responses to change requests are kept this long per (user, mutation id)
    log_level: str = "info"
    metrics_token: str = ""  # when set, GET /metrics needs `Authorization: Bearer <token>`
    metrics_port: int = 0  # when set, /metrics is served only on this internal port (on metrics_host)
    metrics_host: str = "127.0.0.1"
    trusted_proxies: tuple[str, ...] = ()  # addresses whose X-Forwarded-For is believed (uvicorn forwarded_allow_ips)
    gc_tuning: bool = True  # `dashboard serve` freezes start-up objects and makes full GC passes rare
    ws_path: str = "/ws/status-updates"
    extra: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read every known `DASHBOARD_*` variable; a malformed or out-of-range value raises `ValueError`."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name == "extra":
                continue
            raw = env.get(f"DASHBOARD_{f.name.upper()}")
            if raw is None:
                continue
            default = f.default
            try:
                if isinstance(default, bool):
                    values[f.name] = _parse_bool(raw)
                elif isinstance(default, int):
                    values[f.name] = int(raw)
                elif isinstance(default, float):
                    values[f.name] = float(raw)
                elif isinstance(default, tuple):
                    values[f.name] = _parse_list(raw)
                else:
                    values[f.name] = raw
            except ValueError as exc:
                raise ValueError(f"DASHBOARD_{f.name.upper()}: {exc}") from None
        return cls(**values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        positive = (
            "token_ttl_s", "heartbeat_interval_ms", "heartbeat_misses", "reconnect_base_ms", "reconnect_max_ms",
            "reconnect_max_attempts", "connect_timeout_ms", "suspended_retry_ms", "demo_activity_interval_ms",
            "max_subscriptions", "max_message_bytes", "rate_limit_per_s", "rate_limit_burst", "send_queue_size",
            "send_queue_bytes", "history_size", "history_ttl_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"DASHBOARD_{name.upper()} must be positive, got {getattr(self, name)!r}")
        for name in ("jwt_leeway_s", "max_connections_per_user", "max_connections_per_ip", "limit_concurrency",
                     "restart_window_ms", "restart_rate", "drain_delay_ms", "metrics_port"):
            if getattr(self, name) < 0:
                raise ValueError(f"DASHBOARD_{name.upper()} must not be negative, got {getattr(self, name)!r}")
        if self.reconnect_max_ms < self.reconnect_base_ms:
            raise ValueError("DASHBOARD_RECONNECT_MAX_MS must be at least DASHBOARD_RECONNECT_BASE_MS")
        if self.reconnect_jitter not in RECONNECT_JITTER:
            raise ValueError(f"DASHBOARD_RECONNECT_JITTER must be one of {', '.join(RECONNECT_JITTER)}, got {self.reconnect_jitter!r}")
        if not self.ws_path.startswith("/"):
            raise ValueError("DASHBOARD_WS_PATH must start with /")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def db_path(self) -> str:
        return self.db or str(Path(self.var_dir) / "dashboard.db")

    @property
    def resolved_database_url(self) -> str:
        """`DASHBOARD_DATABASE_URL`, or the SQLite file of `DASHBOARD_DB` / `var_dir` as a `sqlite:///` URL."""
        if self.database_url:
            return self.database_url
        path = self.db_path
        return "sqlite:///" + path  # an absolute path gives four slashes, as SQLAlchemy spells it

    def resolved_jwt_secret(self) -> bytes:
        """The HS256 key: the configured one, or one generated once under `var_dir` and reused. Read from disk once
        per process (cached), never on the request path after start-up."""
        if self.jwt_secret:
            key = self.jwt_secret.encode()
        else:
            path = (Path(self.var_dir) / "jwt-secret").resolve()
            key = _SECRETS.get(path) or b""
            if not key:
                key = _SECRETS[path] = _read_or_create_secret(path)
        if len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"DASHBOARD_JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes")
        return key

    def client_config(self) -> dict[str, object]:
        """What `GET /api/config` hands the browser client."""
        return {
            "wsPath": self.ws_path,
            "heartbeatIntervalMs": self.heartbeat_interval_ms,
            "heartbeatMisses": self.heartbeat_misses,
            "reconnectBaseMs": self.reconnect_base_ms,
            "reconnectMaxMs": self.reconnect_max_ms,
            "reconnectMaxAttempts": self.reconnect_max_attempts,
            "connectTimeoutMs": self.connect_timeout_ms,
            "suspendedRetryMs": self.suspended_retry_ms,
            "restartWindowMs": self.restart_window_ms,
            "backoff": RECONNECT_JITTER[self.reconnect_jitter],
            "reconnect": self.reconnect,
        }
