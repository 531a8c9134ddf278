"""`realtime_endpoint(websocket)`: the `/ws/status-updates` WebSocket (protocol `dashboard.v1`).

Handshake: check the Origin, read the JWT from the `bearer.<jwt>` subprotocol (or `?token=`), always
`accept()` first (selecting `dashboard.v1`, never the token) and only then close with 4403/4401/4409 after an
error frame, so browsers can read the code. Then `_Connection.run()` reads client messages (→ `Session` +
`Hub`) in the endpoint's task, the `Outbox` writes, and the hub's `Deadlines` timer sends server pings and
enforces the dead-peer and token-expiry deadlines. See docs/protocol.md for the contract.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import random
import secrets
import time
from typing import Any
from urllib.parse import urlsplit

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..auth import AuthError, verify_token
from ..logs import log_event
from ..metrics import Metrics
from ..settings import Settings
from . import frames, leases
from .hub import Hub, Refused
from .outbox import Outbox
from .session import (
    SEND_PING,
    TIMED_OUT,
    TOKEN_EXPIRED,
    Hello,
    Invalid,
    Ping,
    Pong,
    Session,
    Subscribe,
    Unsubscribe,
    parse,
)

_log = logging.getLogger("dashboard")
_counter = itertools.count(1)
_background: set[asyncio.Future[None]] = set()  # membership re-checks of async stores in flight
TRY_AGAIN_LATER = 1013  # the store could not check the user: the client retries with a long backoff


def _client_id() -> str:
    return f"c-{next(_counter):x}{secrets.token_hex(3)}"


def origin_allowed(settings: Settings, origin: str | None, host: str | None) -> bool:
    """No Origin (non-browser client) → allowed; same host:port as the Host header → allowed;
    otherwise only exact entries of `settings.allowed_origins`."""
    if origin is None:
        return True
    normalised = origin.strip().rstrip("/").lower()
    if normalised in {o.rstrip("/").lower() for o in settings.allowed_origins}:
        return True
    try:
        parts = urlsplit(normalised)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or not host:
        return False
    return parts.netloc == host.strip().lower()


def credentials(websocket: WebSocket) -> tuple[str | None, str | None]:
    """`(token, subprotocol to select)`: the token from `bearer.<jwt>` or else `?token=`."""
    offered: list[str] = list(websocket.scope.get("subprotocols") or [])
    token = next((p[len(frames.BEARER_PREFIX) :] for p in offered if p.startswith(frames.BEARER_PREFIX)), None)
    if token is None:
        token = websocket.query_params.get("token")
    return token or None, frames.PROTOCOL if frames.PROTOCOL in offered else None


class _Connection:
    """The I/O around one `Session`. The reader runs in the endpoint's own task; the outbox writes without a
    task of its own; heartbeat and token-expiry deadlines sit on the hub's shared timer. So an idle
    connection costs no task, future or timer handle beyond what uvicorn already holds."""

    __slots__ = ("ws", "settings", "hub", "metrics", "store", "session", "outbox", "peer_code", "_task", "_reading",
                 "_stopping", "_deadline")

    def __init__(
        self, websocket: WebSocket, settings: Settings, hub: Hub, metrics: Metrics, store: Any, session: Session, outbox: Outbox
    ) -> None:
        self.ws = websocket
        self.settings = settings
        self.hub = hub
        self.metrics = metrics
        self.store = store
        self.session = session
        self.outbox = outbox
        self.peer_code: int | None = None  # close code sent by the client, if it closed first
        self._task: asyncio.Task[Any] | None = None
        self._reading = False
        self._stopping = False
        self._deadline: Any = None

    async def run(self) -> None:
        """Read until the client disconnects or the outbox is done (close sent, peer gone, close timed out)."""
        task = self._task = asyncio.current_task()
        self._reading = True
        self.outbox.attach(self.ws, self._writer_done)
        self._deadline = self.hub.deadlines.add(self.session.get_timer(), self._on_timer)
        try:
            await self._read()
        except asyncio.CancelledError:
            # Our own cancel (see `_stop_reading`) ends the read quietly; anyone else's propagates.
            if not self._stopping or task is None or task.uncancel() > 0:
                raise
        finally:
            self._reading = False
            if self._deadline is not None:
                self._deadline.cancel()
            self.outbox.detach()

    def _writer_done(self) -> None:
        # With uvicorn the reader already has the disconnect queued (it is queued when the close frame is sent,
        # or when the peer went away); give it one loop turn to take it, then stop it if it is still waiting.
        asyncio.get_running_loop().call_soon(self._stop_reading)

    def _stop_reading(self) -> None:
        if self._reading and self._task is not None and not self._stopping:
            self._stopping = True
            self._task.cancel()

    def _on_timer(self, now: float) -> float | None:
        """Heartbeat deadline reached: ping, or close on silence / token expiry. Returns the next deadline."""
        session, outbox = self.session, self.outbox
        if outbox.close_code is not None:
            return None
        for action in session.handle_timer(now):
            if action == SEND_PING:
                outbox.push(frames.PING)
                self._recheck_memberships()
            elif action == TIMED_OUT:
                if outbox.close(frames.HEARTBEAT_TIMEOUT, "heartbeat timeout"):
                    self.metrics.heartbeat_failures.inc()
                    log_event(
                        "ws.heartbeat_timeout",
                        logging.WARNING,
                        client_id=session.client_id,
                        user_id=session.user_id,
                        silent_s=round(now - session.last_received, 3),
                    )
                return None
            elif action == TOKEN_EXPIRED:
                outbox.close(
                    frames.AUTH_FAILED,
                    "token expired",
                    frame=frames.error("Authentication failed", "token expired"),
                )
                log_event("ws.token_expired", client_id=session.client_id, user_id=session.user_id)
                return None
        return session.get_timer()

    def _recheck_memberships(self) -> None:
        """At every server ping: drop each subscription whose membership was revoked since (`forbidden` error,
        the client stops expecting that project). A store error keeps the subscription until the next ping."""
        session = self.session
        for project_id in tuple(session.subscriptions):
            try:
                member = self.store.is_member(session.user_id, project_id)
            except Exception:
                _log.exception("membership re-check failed")
                continue
            if inspect.isawaitable(member):  # an async store: check in a task (kept referenced until done)
                task = asyncio.ensure_future(self._recheck_later(project_id, member))
                _background.add(task)
                task.add_done_callback(_background.discard)
            elif not member:
                self._revoke(project_id)

    async def _recheck_later(self, project_id: str, pending: Any) -> None:
        try:
            member = await pending
        except Exception:
            _log.exception("membership re-check failed")
            return
        if not member:
            self._revoke(project_id)

    def _revoke(self, project_id: str) -> None:
        session = self.session
        if project_id not in session.subscriptions or self.outbox.close_code is not None:
            return
        self.hub.unsubscribe(self.outbox, project_id)
        session.subscriptions.discard(project_id)
        self.outbox.push(frames.error("forbidden", "no longer a member of this project", projectId=project_id))
        self.metrics.subscriptions_revoked.inc()
        log_event("ws.membership_revoked", client_id=session.client_id, user_id=session.user_id, project_id=project_id)

    async def _read(self) -> None:
        ws, session, outbox = self.ws, self.session, self.outbox
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                self.peer_code = int(message.get("code") or 1005)
                return
            if outbox.close_code is not None:
                continue  # closing: ignore input until the close handshake ends
            now = time.monotonic()
            session.received(now)
            if not session.allow(now):
                self.metrics.rate_limited.inc()
                outbox.close(
                    frames.RATE_LIMITED,
                    "rate limited",
                    frame=frames.error("rate_limited", "too many messages; reconnect later"),
                )
                log_event("ws.rate_limited", logging.WARNING, client_id=session.client_id, user_id=session.user_id)
                continue
            text = message.get("text")
            if text is None:
                self.metrics.messages_received.labels(action="binary").inc()
                outbox.push(frames.error("invalid_message", "binary frames are not supported; send JSON text"))
                continue
            if len(text.encode()) > self.settings.max_message_bytes:  # uvicorn enforces this too (1009)
                outbox.close(frames.MESSAGE_TOO_BIG, "message too big")
                continue
            started = time.perf_counter()
            try:
                await self._handle(text)
            except Exception:  # a server bug answers this message with an error; the connection lives on
                _log.exception("failed to handle a client message")
                outbox.push(frames.error("internal_error", "the server could not handle this message"))
            self.metrics.message_duration.observe(time.perf_counter() - started)

    async def _handle(self, text: str) -> None:
        session, outbox, hub = self.session, self.outbox, self.hub
        command = parse(text)
        label = type(command).__name__.lower()
        self.metrics.messages_received.labels(action=label).inc()
        if isinstance(command, Invalid):
            outbox.push(frames.error(command.error, command.message))
        elif isinstance(command, Ping):
            outbox.push(frames.PONG)
        elif isinstance(command, Pong):
            pass
        elif isinstance(command, Hello):
            self.metrics.reconnections_total.inc()
            self.metrics.reconnect_downtime.observe(command.downtime_ms / 1000)
            log_event(
                "ws.hello",
                client_id=session.client_id,
                reconnect_attempts=command.reconnect_attempts,
                downtime_ms=command.downtime_ms,
            )
        elif isinstance(command, Unsubscribe):
            hub.unsubscribe(outbox, command.project_id)
            session.subscriptions.discard(command.project_id)
            outbox.push(frames.unsubscribed(command.project_id))
        elif isinstance(command, Subscribe):
            await self._subscribe(command)

    async def _subscribe(self, command: Subscribe) -> None:
        session, outbox, hub = self.session, self.outbox, self.hub
        project_id = command.project_id
        try:
            member = await self._is_member(project_id)  # checked on every subscribe, repeated ones too
        except Exception:  # the store could not answer: not a refusal, the client retries the subscribe
            _log.exception("membership check failed")
            outbox.push(frames.error("unavailable", "could not check the membership; retry the subscribe later",
                                     projectId=project_id))
            return
        if not member:
            if hub.unsubscribe(outbox, project_id):
                session.subscriptions.discard(project_id)
            outbox.push(frames.error("forbidden", "not a member of this project", projectId=project_id))
            log_event("ws.subscribe_forbidden", client_id=session.client_id, user_id=session.user_id, project_id=project_id)
            return
        if project_id not in session.subscriptions and not session.can_add_subscription():
            outbox.push(
                frames.error(
                    "too_many_subscriptions",
                    f"at most {session.max_subscriptions} subscriptions per connection",
                    projectId=project_id,
                )
            )
            return
        try:
            await hub.subscribe(outbox, project_id, command.since)
        except Exception:  # the bus is unreachable (e.g. Redis down): say so, keep the connection
            _log.exception("subscribe failed")
            outbox.push(frames.error("unavailable", "event bus unavailable; retry the subscribe later", projectId=project_id))
            return
        session.subscriptions.add(project_id)

    async def _is_member(self, project_id: str) -> bool:
        result = self.store.is_member(self.session.user_id, project_id)
        if inspect.isawaitable(result):
            result = await result
        return bool(result)


async def _refuse(websocket: WebSocket, code: int, error: str, message: str) -> None:
    """Send the error frame, then close with `code` (after accept, so the browser sees the code)."""
    try:
        await websocket.send_text(frames.error(error, message))
        await websocket.close(code, message[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


async def realtime_endpoint(websocket: WebSocket) -> None:
    """Serve one WebSocket connection from handshake to close."""
    app = websocket.app
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    store = app.state.store
    hub: Hub = app.state.hub
    token, subprotocol = credentials(websocket)
    origin = websocket.headers.get("origin")
    await websocket.accept(subprotocol=subprotocol)

    if not origin_allowed(settings, origin, websocket.headers.get("host")):
        metrics.auth_failures.labels(reason="origin").inc()
        metrics.connections_total.labels(status="origin_forbidden").inc()
        log_event("ws.auth_failed", logging.WARNING, reason="origin not allowed", origin=origin[:200] if origin else None)
        await _refuse(websocket, frames.ORIGIN_FORBIDDEN, "Origin not allowed", "this origin may not connect")
        return
    try:
        claims = verify_token(settings, token)
        user_id = str(claims["sub"])
        user = store.user(user_id) if hasattr(store, "user") else True
        if inspect.isawaitable(user):
            user = await user
        if not user:
            raise AuthError("unknown user")
    except AuthError as exc:
        reason = str(exc)
        metrics.auth_failures.labels(reason=reason.split(" (")[0].replace(" ", "_")).inc()
        metrics.connections_total.labels(status="auth_failed").inc()
        log_event("ws.auth_failed", logging.WARNING, reason=reason, via="subprotocol" if subprotocol else "query")
        await _refuse(websocket, frames.AUTH_FAILED, "Authentication failed", reason)
        return
    except Exception as exc:  # the store could not answer (down, or its pool saturated): come back later
        metrics.connections_total.labels(status="refused").inc()
        log_event("ws.refused", logging.WARNING, code=TRY_AGAIN_LATER, reason="user lookup failed", error=type(exc).__name__)
        await _refuse(websocket, TRY_AGAIN_LATER, "unavailable", "could not check the user; try again later")
        return

    client_id = _client_id()
    try:
        outbox = hub.connect(client_id, user_id)
    except Refused as refused:
        metrics.connections_total.labels(status="refused").inc()
        log_event("ws.refused", client_id=client_id, user_id=user_id, code=refused.code, reason=refused.message)
        if refused.code == frames.SERVICE_RESTART:
            try:
                await websocket.send_text(frames.restart(settings.restart_window_ms))
                await websocket.close(refused.code, "service restart")
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
        else:
            await _refuse(websocket, refused.code, refused.error, refused.message)
        return
    if not await leases.admit(websocket, hub, outbox, user_id, client_id):  # the per-user cap across nodes
        return

    now = time.monotonic()
    exp = claims.get("exp")
    expires_at = now + (float(exp) + settings.jwt_leeway_s - time.time()) if isinstance(exp, (int, float)) else None
    session = Session(
        settings, client_id=client_id, user_id=user_id, now=now, expires_at=expires_at, first_ping=0.5 + random.random() / 2
    )
    del claims, token, user  # this frame lives as long as the connection: keep only what is needed
    epoch = getattr(hub.bus, "epoch", "")
    outbox.push(frames.connected(client_id, user_id, settings.heartbeat_interval_ms, epoch))
    metrics.connections_total.labels(status="accepted").inc()
    log_event("ws.connect", client_id=client_id, user_id=user_id, origin=origin, via="subprotocol" if subprotocol else "query")
    connection = _Connection(websocket, settings, hub, metrics, store, session, outbox)
    try:
        await connection.run()
    finally:
        hub.disconnect(outbox)
        leases.release(websocket, user_id, client_id)
        code = outbox.close_code if outbox.close_code is not None else connection.peer_code or 1006
        initiator = "server" if outbox.close_code is not None else "client"
        metrics.disconnects.labels(code=str(code)).inc()
        log_event(
            "ws.close",
            client_id=client_id,
            user_id=user_id,
            code=code,
            initiator=initiator,
            reason=outbox.close_reason if initiator == "server" else None,
            duration_s=round(time.monotonic() - now, 3),
            subscriptions=len(session.subscriptions),
        )
        if websocket.application_state == WebSocketState.CONNECTED and outbox.close_code is None and connection.peer_code is None:
            try:
                await websocket.close(frames.GOING_AWAY)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass
