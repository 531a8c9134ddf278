"""`realtime_endpoint(websocket)`: the `/ws/status-updates` WebSocket (protocols `dashboard.v2`, `dashboard.v1`).

Handshake: count the client's address against its cap, check the Origin, read the JWT from the
`bearer.<jwt>` subprotocol (or `?token=`), ask `app.state.token_checker(claims)` (if the app has one) whether
its sign-in session is still valid, always `accept()` first (selecting the newest protocol offered, never the
token) and only then close with 4409/4403/4401 after an error frame, so browsers can read the code. Then
`_Connection.run()` reads client messages (→ `Session` + `Hub`) in the endpoint's task, the `Outbox` writes,
and the hub's `Deadlines` timer sends server pings and enforces the dead-peer and token-expiry deadlines.
An in-band `{"action":"auth","token":…}` moves the expiry deadline to the new token's. See docs/protocol.md.
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
from ..sessions import proves_user
from ..settings import Settings
from . import frames, leases
from .hub import Hub, Refused
from .outbox import Outbox
from .session import (
    SEND_PING,
    TIMED_OUT,
    TOKEN_EXPIRED,
    Auth,
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


def _header(scope: Any, name: bytes) -> str | None:
    """One request header straight from the ASGI scope (`websocket.headers` would build a header map that the
    connection then keeps for its whole life)."""
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


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
    """`(token, subprotocol to select)`: the token from `bearer.<jwt>` or else `?token=`; the newest protocol
    of ours the client offers (None: it offered none and speaks `dashboard.v1`)."""
    offered: list[str] = list(websocket.scope.get("subprotocols") or [])
    token = next((p[len(frames.BEARER_PREFIX) :] for p in offered if p.startswith(frames.BEARER_PREFIX)), None)
    if token is None:
        token = websocket.query_params.get("token")
    return token or None, frames.select_protocol(offered)


def _expires_at(settings: Settings, claims: dict[str, object], now: float) -> tuple[float | None, int | None]:
    """The token's expiry as `(monotonic deadline, epoch milliseconds)`, leeway included in the deadline."""
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        return None, None
    return now + (float(exp) + settings.jwt_leeway_s - time.time()), int(exp * 1000)


def _session_id(claims: dict[str, object]) -> str | None:
    sid = claims.get("sid")
    return sid if isinstance(sid, str) and sid else None


async def session_refusal(app: Any, claims: dict[str, object]) -> str | None:
    """Ask `app.state.token_checker(claims)` (if the app has one) whether this token's sign-in session is still
    valid: None when it is (the checker answered None or True), else why not (the checker's string, or
    "session revoked" for False). Without a checker every valid token is accepted. Exceptions propagate (the
    caller answers "try again later")."""
    checker = getattr(app.state, "token_checker", None)
    if checker is None:
        return None
    result = checker(claims)
    if inspect.isawaitable(result):
        result = await result
    if result is None or result is True:
        return None
    return result if isinstance(result, str) and result else "session revoked"


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
            message = text = None  # an idle connection does not keep its last message alive while it waits
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
        elif isinstance(command, Hello):  # figures already clamped by `parse`
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
        elif isinstance(command, Auth):
            await self._reauthenticate(command.token)

    async def _subscribe(self, command: Subscribe) -> None:
        session, outbox, hub = self.session, self.outbox, self.hub
        project_id = command.project_id
        if not session.allow_subscribe(project_id, time.monotonic()):
            outbox.push(frames.error("subscribe_rate_limited", "too many subscribes to this project; retry later",
                                     projectId=project_id))
            return
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
        held = project_id in session.subscriptions or hub.is_retrying(outbox, project_id)
        if not held and len(session.subscriptions) + hub.retry_count(outbox) >= session.max_subscriptions:
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
        except Exception as exc:  # the bus is unreachable (e.g. Redis down): say so, keep trying in the background
            log_event("ws.subscribe_unavailable", logging.WARNING, client_id=session.client_id, project_id=project_id,
                      error=type(exc).__name__)
            outbox.push(frames.error("unavailable", "event bus unavailable; retrying", projectId=project_id))
            hub.retry_subscribe(outbox, project_id, command.since, session.subscriptions.add)
            return
        session.subscriptions.add(project_id)

    async def _reauthenticate(self, token: str) -> None:
        """In-band token refresh: the same user's valid token moves the expiry deadline; anything else closes 4401."""
        session, outbox = self.session, self.outbox
        try:
            claims = verify_token(self.settings, token)
        except AuthError as exc:
            reason = str(exc)
            self.metrics.auth_failures.labels(reason=_reason_label(reason)).inc()
            log_event("ws.auth_failed", logging.WARNING, reason=reason, client_id=session.client_id, via="in-band")
            outbox.close(frames.AUTH_FAILED, reason[:120], frame=frames.error("Authentication failed", reason))
            return
        if str(claims["sub"]) != session.user_id:
            self.metrics.auth_failures.labels(reason="auth_mismatch").inc()
            log_event("ws.auth_failed", logging.WARNING, reason="auth mismatch", client_id=session.client_id,
                      user_id=session.user_id, via="in-band")
            outbox.close(frames.AUTH_FAILED, "auth mismatch",
                         frame=frames.error("auth_mismatch", "the token belongs to another user"))
            return
        try:
            refused = await session_refusal(self.ws.app, claims)
        except Exception:  # the check itself failed (store down): keep the old token's deadline, say so
            _log.exception("session check failed")
            outbox.push(frames.error("unavailable", "could not check the session; send the token again later"))
            return
        if refused is not None:
            self.metrics.auth_failures.labels(reason=_reason_label(refused)).inc()
            log_event("ws.auth_failed", logging.WARNING, reason=refused, client_id=session.client_id,
                      user_id=session.user_id, via="in-band")
            outbox.close(frames.AUTH_FAILED, refused[:120], frame=frames.error("Authentication failed", refused))
            return
        if outbox.close_code is not None:
            return
        expires_at, expires_ms = _expires_at(self.settings, claims, time.monotonic())
        sid = _session_id(claims)
        session.reauthenticated(expires_at, sid)
        if sid is not None:
            outbox.session_id = sid
        if self._deadline is not None:  # the expiry may be earlier or later than the pending deadline
            self._deadline.cancel()
            self._deadline = self.hub.deadlines.add(session.get_timer(), self._on_timer)
        outbox.push(frames.auth(expires_ms))
        log_event("ws.auth_refreshed", client_id=session.client_id, user_id=session.user_id, expires_at=expires_ms)

    async def _is_member(self, project_id: str) -> bool:
        result = self.store.is_member(self.session.user_id, project_id)
        if inspect.isawaitable(result):
            result = await result
        return bool(result)


def _reason_label(reason: str) -> str:
    return reason.split(" (")[0].replace(" ", "_")


async def _refuse(websocket: WebSocket, code: int, error: str, message: str) -> None:
    """Send the error frame, then close with `code` (after accept, so the browser sees the code)."""
    try:
        await websocket.send_text(frames.error(error, message))
        await websocket.close(code, message[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


async def realtime_endpoint(websocket: WebSocket) -> None:
    """Serve one WebSocket connection from handshake to close (one coroutine frame per connection: its locals are
    what an idle connection keeps alive)."""
    app = websocket.app
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    hub: Hub = app.state.hub
    token, subprotocol = credentials(websocket)
    await websocket.accept(subprotocol=subprotocol)
    address = websocket.client.host if websocket.client else ""
    if not hub.admit_address(address):
        metrics.connections_total.labels(status="refused").inc()
        log_event("ws.refused", logging.WARNING, code=frames.TOO_MANY_CONNECTIONS, reason="per-address cap", address=address)
        await _refuse(websocket, frames.TOO_MANY_CONNECTIONS, "Too many connections",
                      f"at most {settings.max_connections_per_ip} connections per address")
        return
    try:
        store = app.state.store
        origin = _header(websocket.scope, b"origin")
        offered = websocket.scope.get("subprotocols") or ()
        via = "subprotocol" if any(p.startswith(frames.BEARER_PREFIX) for p in offered) else "query"
        del offered
        if not origin_allowed(settings, origin, _header(websocket.scope, b"host")):
            metrics.auth_failures.labels(reason="origin").inc()
            metrics.connections_total.labels(status="origin_forbidden").inc()
            log_event("ws.auth_failed", logging.WARNING, reason="origin not allowed", origin=origin[:200] if origin else None)
            await _refuse(websocket, frames.ORIGIN_FORBIDDEN, "Origin not allowed", "this origin may not connect")
            return
        try:
            claims = verify_token(settings, token)
            user_id = str(claims["sub"])
            user: Any = True
            if not proves_user(app, claims):
                # one lookup unless the session check below also proves the user exists (one query per handshake)
                user = store.has_user(user_id) if hasattr(store, "has_user") else True
                if inspect.isawaitable(user):
                    user = await user
            if not user:
                raise AuthError("unknown user")
            try:
                refused = await session_refusal(app, claims)
            except Exception:
                _log.exception("session check failed")
                metrics.connections_total.labels(status="refused").inc()
                await _refuse(websocket, frames.TRY_AGAIN_LATER, "unavailable", "could not check the session; try again later")
                return
            if refused is not None:
                raise AuthError(refused)
        except AuthError as exc:
            reason = str(exc)
            metrics.auth_failures.labels(reason=_reason_label(reason)).inc()
            metrics.connections_total.labels(status="auth_failed").inc()
            log_event("ws.auth_failed", logging.WARNING, reason=reason, via=via)
            await _refuse(websocket, frames.AUTH_FAILED, "Authentication failed", reason)
            return
        except Exception as exc:  # the store could not answer (down, or its pool saturated): come back later
            metrics.connections_total.labels(status="refused").inc()
            log_event("ws.refused", logging.WARNING, code=frames.TRY_AGAIN_LATER, reason="user lookup failed",
                      error=type(exc).__name__)
            await _refuse(websocket, frames.TRY_AGAIN_LATER, "unavailable", "could not check the user; try again later")
            return

        client_id = _client_id()
        sid = _session_id(claims)
        try:
            outbox = hub.connect(client_id, user_id, batched=subprotocol == frames.PROTOCOL_V2, session_id=sid)
        except Refused as refusal:
            metrics.connections_total.labels(status="refused").inc()
            log_event("ws.refused", client_id=client_id, user_id=user_id, code=refusal.code, reason=refusal.message)
            if refusal.code == frames.SERVICE_RESTART:
                try:
                    await websocket.send_text(frames.restart(hub.restart_hint_ms))
                    await websocket.close(refusal.code, "service restart")
                except (WebSocketDisconnect, RuntimeError, OSError):
                    pass
            else:
                await _refuse(websocket, refusal.code, refusal.error, refusal.message)
            return
        if not await leases.admit(websocket, hub, outbox, user_id, client_id):  # the per-user cap across nodes
            return

        now = time.monotonic()
        expires_at, _ = _expires_at(settings, claims, now)
        session = Session(
            settings, client_id=client_id, user_id=user_id, now=now, expires_at=expires_at,
            first_ping=0.5 + random.random() / 2, session_id=sid,
        )
        del claims, token, user, refused  # this frame lives as long as the connection: keep only what is needed
        epoch = getattr(hub.bus, "epoch", "")
        outbox.push(frames.connected(client_id, user_id, settings.heartbeat_interval_ms, epoch))
        metrics.connections_total.labels(status="accepted").inc()
        metrics.connections_total.labels(status="connected").inc()
        log_event("ws.connect", client_id=client_id, user_id=user_id, origin=origin, via=via,
                  protocol=subprotocol or frames.PROTOCOL)
        connection = _Connection(websocket, settings, hub, metrics, store, session, outbox)
        try:
            await connection.run()
        finally:
            hub.disconnect(outbox)
            leases.release(websocket, user_id, client_id)
            code = outbox.close_code if outbox.close_code is not None else connection.peer_code or 1006
            initiator = "server" if outbox.close_code is not None else "client"
            metrics.disconnects.labels(code=frames.close_label(code)).inc()
            metrics.connections_total.labels(status="disconnected").inc()
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
            if (websocket.application_state == WebSocketState.CONNECTED and outbox.close_code is None
                    and connection.peer_code is None):
                try:
                    await websocket.close(frames.GOING_AWAY)
                except (WebSocketDisconnect, RuntimeError, OSError):
                    pass
    finally:
        hub.release_address(address)
