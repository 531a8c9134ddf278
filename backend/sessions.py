"""Sign-in sessions that last all day: short access tokens, a rotating refresh cookie, real sign-out.

At sign-in `signed_in(request, user)` creates a session (`auth_sessions`) and answers `{token, expiresAt, user}` with
the refresh cookie `dashboard_refresh` (an opaque random value; only its SHA-256 is stored). `POST /api/auth/refresh`
exchanges the cookie for a new access token and a new cookie; presenting an already exchanged value (a stolen
copy) revokes the whole session. `POST /api/auth/logout` revokes the caller's session. A revoked session's access
tokens are refused at once (`check(claims)`, which the REST API and the WebSocket call for every token) and its
open sockets are closed with 4401 on every node (a control message on the bus).

Build `Sessions(settings, store, bus, hub, metrics)` in the app, `await start()` (listens for control messages),
and mount `routes()`.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .auth import issue_token
from .logs import log_event

COOKIE = "dashboard_refresh"
COOKIE_PATH = "/api/auth"
REVOKE = "session.revoked"  # control message: {"kind": REVOKE, "sid": …}


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def proves_user(app: Any, claims: dict[str, Any]) -> bool:
    """True when the app's `token_checker` will also prove that the token's user exists (a token with a session,
    checked by `Sessions.check`): REST and the WebSocket handshake then skip their own user lookup."""
    checker = getattr(app.state, "token_checker", None)
    return bool(claims.get("sid")) and bool(getattr(checker, "checks_user", False))


class Sessions:
    def __init__(self, settings: Any, store: Any, bus: Any, hub: Any, metrics: Any) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.hub = hub
        self.metrics = metrics

    async def start(self) -> None:
        on_control = getattr(self.bus, "on_control", None)
        if on_control is not None:
            on_control(self._on_control)

    # -- tokens ---------------------------------------------------------------------------------

    async def check(self, claims: dict[str, Any]) -> str | None:
        """None when the token's session is live; else why it is refused. Tokens without `sid` are the server's own
        (tests, tools): they expire but cannot be revoked. A session is only live for its own user while that user
        exists, so a caller need not look the user up again (`checks_user`)."""
        sid = claims.get("sid")
        if sid is None:
            return None
        live = await self.store.session_live(str(sid), str(claims.get("sub")))
        if live is None:
            return "unknown session"
        return None if live else "session revoked"

    check.checks_user = True  # type: ignore[attr-defined]  # read through the bound method (`proves_user`)

    def _access(self, user_id: str, sid: str) -> tuple[str, int]:
        return issue_token(self.settings, user_id, sid=sid)

    # -- sign-in, refresh, sign-out -------------------------------------------------------------

    async def signed_in(self, request: Request, user: dict[str, Any]) -> Response:
        """The sign-in answer for `user`: a new session, its access token and its refresh cookie."""
        sid = secrets.token_urlsafe(18)
        value = secrets.token_urlsafe(32)
        now = self.store.clock()
        max_expires = now + self.settings.session_max_s * 1000
        await self.store.create_session(
            user["id"], sid, _hash(value), expires_at=min(now + self.settings.refresh_ttl_s * 1000, max_expires),
            max_expires_at=max_expires,
        )
        token, expires_s = self._access(user["id"], sid)
        log_event("auth.login", user_id=user["id"], ip=request.client.host if request.client else None)
        response = JSONResponse({"token": token, "expiresAt": expires_s * 1000, "user": user})
        self._set_cookie(request, response, value)
        return response

    async def refresh(self, request: Request, user_loader: Any) -> Response:
        """`POST /api/auth/refresh`: a new access token and a rotated cookie, or 401 `refresh_failed`."""
        value = request.cookies.get(COOKIE)
        if not value or len(value) > 256:
            return self._refused(request, "invalid", "no refresh cookie")
        new_value = secrets.token_urlsafe(32)
        result, sid, user_id = await self.store.rotate_refresh(
            _hash(value), _hash(new_value), refresh_ttl_ms=self.settings.refresh_ttl_s * 1000
        )
        if result == "reused" and sid is not None:
            log_event("auth.refresh_reused", logging.WARNING, user_id=user_id, sid_hash=_hash(sid)[:12])
            await self.revoked(sid)
        if result != "ok" or sid is None or user_id is None:
            return self._refused(request, result, {
                "invalid": "unknown refresh value", "expired": "the session has expired",
                "revoked": "the session was ended", "reused": "this refresh value was already used; sign in again",
            }.get(result, "refresh failed"))
        user = await user_loader(user_id)
        if user is None:
            return self._refused(request, "invalid", "unknown user")
        token, expires_s = self._access(user_id, sid)
        self.metrics.auth_refresh.labels(result="ok").inc()
        log_event("auth.refresh", user_id=user_id)
        response = JSONResponse({"token": token, "expiresAt": expires_s * 1000, "user": user})
        self._set_cookie(request, response, new_value)
        return response

    async def logout(self, request: Request, claims: dict[str, Any]) -> Response:
        """`POST /api/auth/logout` (bearer, possibly expired): the caller's session ends everywhere; 204, also when it
        had already ended."""
        sid = claims.get("sid")
        if isinstance(sid, str) and await self.store.revoke_session(sid, "signed out"):
            await self.revoked(sid)
        log_event("auth.logout", user_id=claims.get("sub"))
        response = Response(status_code=204, headers={"Cache-Control": "no-store"})
        response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=self._secure(request), httponly=True, samesite="strict")
        return response

    async def revoked(self, sid: str) -> None:
        """Close the session's sockets here at once, and on every other node through the bus."""
        self._close_sockets(sid)
        send = getattr(self.bus, "send_control", None)
        if send is not None:
            try:
                await send({"kind": REVOKE, "sid": sid})
            except Exception as exc:  # noqa: BLE001 - the other nodes' sockets still expire with their tokens
                log_event("auth.revocation_broadcast_failed", logging.WARNING, error=type(exc).__name__)

    def _on_control(self, message: dict[str, Any]) -> None:
        if message.get("kind") == REVOKE and isinstance(message.get("sid"), str):
            self._close_sockets(message["sid"])

    def _close_sockets(self, sid: str) -> None:
        close = getattr(self.hub, "close_session", None)
        if close is not None:
            close(sid)

    # -- helpers --------------------------------------------------------------------------------

    def _secure(self, request: Request) -> bool:
        return request.url.scheme == "https"

    def _set_cookie(self, request: Request, response: Response, value: str) -> None:
        response.set_cookie(
            COOKIE, value, max_age=self.settings.refresh_ttl_s, path=COOKIE_PATH, httponly=True, samesite="strict",
            secure=self._secure(request),
        )

    def _refused(self, request: Request, result: str, message: str) -> Response:
        self.metrics.auth_refresh.labels(result=result).inc()
        log_event("auth.refresh_failed", logging.INFO, result=result, ip=request.client.host if request.client else None)
        response = JSONResponse({"error": "refresh_failed", "reason": result, "message": message}, status_code=401,
                                headers={"Cache-Control": "no-store"})
        response.delete_cookie(COOKIE, path=COOKIE_PATH, secure=self._secure(request), httponly=True, samesite="strict")
        return response
