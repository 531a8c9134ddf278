"""The REST API of docs/protocol.md (documented in full in docs/api.md).

`routes()` returns the Starlette routes and `exception_handlers()` the handlers that turn every error,
Starlette's own 404/405 included, into JSON `{"error", "message"}`; `create_app` mounts both. Handlers
read `request.app.state.{settings, store, bus, metrics}`. Changes go through `backend.changes`, which
writes to the store and publishes the events.

Authorization: every route but login needs `Authorization: Bearer <jwt>` (401 otherwise). A project the
caller is not a member of answers 403 whether or not it exists, like the WebSocket subscribe, so its
existence never leaks; a story or escalation of such a project answers 404, the same as an unknown id.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread
from anyio import CapacityLimiter
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import changes
from .auth import AuthError, bearer_token, verify_password, verify_token
from .limits import LoginGate, LoginLimiter
from .logs import log_event
from .sessions import proves_user
from .store import MAX_ID, STORY_STATUSES, IntegrityError, NotFound, Store, Unavailable
from .store.store import _dummy_hash

MAX_BODY_BYTES = 16 * 1024
MAX_USERNAME_CHARS = 64
MAX_PASSWORD_CHARS = 1024
PASSWORD_CHECKS_AT_ONCE = 2  # each scrypt check takes ~16 MiB and a core for ~30 ms
MAX_ID_DIGITS = 19  # 2**63 - 1 has 19 digits: longer path ids are unknown without parsing them
MUTATION_ID_HEADER = "x-client-mutation-id"
MUTATION_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}

Handler = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    """An error answer: HTTP `status`, short `code` (the JSON `error`) and a human `message`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers={**NO_STORE, **(headers or {})})


def _count(request: Request, route: str, status: int) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.http_requests.labels(route, str(status)).inc()


# -- login attempt limit ----------------------------------------------------------------------------


def _login_limiter(request: Request) -> Any:
    limiter = getattr(request.app.state, "login_limiter", None)
    if limiter is None:
        limiter = request.app.state.login_limiter = LoginLimiter()
    return limiter


def _login_gate(request: Request) -> LoginGate:
    gate: LoginGate | None = getattr(request.app.state, "login_gate", None)
    if gate is None:
        gate = request.app.state.login_gate = LoginGate()
    return gate


def _password_limiter(request: Request) -> CapacityLimiter:
    limiter: CapacityLimiter | None = getattr(request.app.state, "password_limiter", None)
    if limiter is None:
        limiter = request.app.state.password_limiter = CapacityLimiter(PASSWORD_CHECKS_AT_ONCE)
    return limiter


# -- request helpers -------------------------------------------------------------------------------


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _require_json(request: Request) -> None:
    """415 unless the body is declared `application/json`: a cross-site form cannot send that without a preflight,
    so sign-in and refresh cannot be driven from another site."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")


async def _json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object: 413 above `MAX_BODY_BYTES`, 422 when not a JSON object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, "payload_too_large", f"request body is limited to {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, "payload_too_large", f"request body is limited to {MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(bytes(body), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ApiError(422, "invalid_json", "request body must be a JSON object") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_json", "request body must be a JSON object")
    return value


def _mutation_id(request: Request) -> str | None:
    """The validated `X-Client-Mutation-Id` header, or None when absent or empty."""
    value = request.headers.get(MUTATION_ID_HEADER)
    if not value:
        return None
    if not MUTATION_ID_RE.match(value):
        raise ApiError(
            422, "invalid_header", "X-Client-Mutation-Id must be 1-64 characters of A-Z a-z 0-9 . _ : -"
        )
    return value


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="dashboard"'}


async def _claims(request: Request, route: str, *, sign_out: bool = False) -> dict[str, Any]:
    """The verified claims of the bearer token of a known user in a live session; 401 otherwise. `sign_out`: the
    token may have expired and its session ended (it can only end that session)."""
    token = bearer_token(request.headers.get("authorization"))
    try:
        claims = verify_token(request.app.state.settings, token, expired_ok=sign_out)
    except AuthError as exc:
        log_event("http.auth_failed", logging.INFO, route=route, reason=str(exc), ip=_client_ip(request))
        raise ApiError(401, "unauthorized", str(exc), UNAUTHORIZED) from None
    if sign_out:
        return claims
    checker = getattr(request.app.state, "token_checker", None)
    reason = await checker(claims) if checker is not None else None
    if reason is not None:
        log_event("http.auth_failed", logging.INFO, route=route, reason=reason, ip=_client_ip(request))
        raise ApiError(401, "unauthorized", reason, UNAUTHORIZED)
    return claims


async def _user_id(request: Request, route: str) -> str:
    """The caller's user id from a valid bearer token of a known user; 401 otherwise."""
    claims = await _claims(request, route)
    user_id = str(claims["sub"])
    if proves_user(request.app, claims):
        return user_id  # the session check proved the user exists
    if not await _store(request).has_user(user_id):
        raise ApiError(401, "unauthorized", "unknown user", UNAUTHORIZED)
    return user_id


async def _visible(store: Store, user_id: str, row: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """`row` (a story or an escalation) if it exists in one of the caller's projects; 404 otherwise, so ids in
    other projects are indistinguishable from missing ones."""
    if row is None or not await store.is_member(user_id, row["projectId"]):
        raise ApiError(404, "not_found", f"no such {kind}")
    return row


async def _member_project(request: Request, user_id: str) -> str:
    """The `project_id` path parameter if the caller is a member; 403 otherwise (unknown projects too)."""
    project_id = request.path_params["project_id"]
    if not await _store(request).is_member(user_id, project_id):
        raise ApiError(403, "forbidden", "not a member of this project (or no such project)")
    return str(project_id)


def _id_param(request: Request, name: str, what: str) -> int:
    """A positive integer path id; 404 for anything else (never parses more than 19 digits)."""
    raw = request.path_params[name]
    if not isinstance(raw, str) or not raw.isascii() or not raw.isdigit() or len(raw) > MAX_ID_DIGITS:
        raise ApiError(404, "not_found", f"no such {what}")
    value = int(raw)
    if not 0 < value <= MAX_ID:
        raise ApiError(404, "not_found", f"no such {what}")
    return value


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _relay(request: Request) -> Any:
    return getattr(request.app.state, "relay", None)


def _mutation(request: Request, user_id: str, body: Any) -> changes.Mutation | None:
    """The idempotency identity of a change request: its `X-Client-Mutation-Id` and a hash of what it asks."""
    mutation_id = _mutation_id(request)
    if mutation_id is None:
        return None
    canonical = json.dumps(
        [request.method, request.url.path, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return changes.Mutation(user_id, mutation_id, hashlib.sha256(canonical.encode()).hexdigest())


async def _change(request: Request, run: Callable[[], Awaitable[changes.Outcome]]) -> Response:
    """Run a change and answer its outcome (`Idempotent-Replayed: true` for a stored one). A second request with the
    same mutation id racing the first on another project runs once more, to answer from the first's record."""
    try:
        outcome = await run()
    except IntegrityError:
        outcome = await run()
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return JSONResponse(outcome.body, status_code=outcome.status, headers=headers)


# -- endpoints ---------------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    _require_json(request)
    body = await _json_body(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not username or len(username) > MAX_USERNAME_CHARS:
        raise ApiError(422, "invalid_body", f"username must be a string of 1-{MAX_USERNAME_CHARS} characters")
    if not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
        raise ApiError(422, "invalid_body", f"password must be a string of at most {MAX_PASSWORD_CHARS} characters")
    ip = _client_ip(request)
    limiter, gate = _login_limiter(request), _login_gate(request)
    # The attempt is counted before the password is checked, so a burst of concurrent guesses cannot all slip in
    # while the first ones are still being checked; and logins waiting for a check are capped (per address and in
    # total), so a flood is refused at once instead of queueing in front of a real user.
    wait, attempt = await limiter.reserve(ip, username)
    if wait > 0:
        log_event("auth.login_failed", logging.WARNING, username=username, ip=ip, reason="rate_limited")
        raise ApiError(
            429, "too_many_attempts", "too many failed logins; try again later",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )
    if not gate.enter(ip):
        await limiter.release(ip, username, attempt)
        log_event("auth.login_failed", logging.WARNING, username=username, ip=ip, reason="busy")
        raise ApiError(429, "too_many_requests", "too many sign-ins in progress; try again shortly", {"Retry-After": "1"})
    try:
        store = _store(request)
        stored = await store.password_hash(username)
        ok = await anyio.to_thread.run_sync(
            verify_password, password, stored if stored is not None else _dummy_hash(), limiter=_password_limiter(request)
        )
    except BaseException:
        await limiter.release(ip, username, attempt)
        raise
    finally:
        gate.leave(ip)
    if stored is None or not ok:
        log_event("auth.login_failed", logging.WARNING, username=username, ip=ip, reason="bad_credentials")
        raise ApiError(401, "invalid_credentials", "wrong username or password")
    await limiter.succeeded(ip, username, attempt)
    user = await store.user(username)
    if user is None:  # deleted between the two reads
        raise ApiError(401, "invalid_credentials", "wrong username or password")
    sessions = getattr(request.app.state, "sessions", None)
    if sessions is not None:
        return await sessions.signed_in(request, user)
    from .auth import issue_token

    token, expires_s = issue_token(request.app.state.settings, user["id"])
    log_event("auth.login", user_id=user["id"], ip=ip)
    return JSONResponse({"token": token, "expiresAt": expires_s * 1000, "user": user})


async def refresh(request: Request) -> Response:
    """Exchange the refresh cookie for a new access token (backend.sessions). A JSON request from an allowed origin
    only, so another site cannot make the browser refresh (the cookie is SameSite=Strict as well)."""
    _require_json(request)
    from .realtime.endpoint import origin_allowed

    origin = request.headers.get("origin")
    if origin is not None and not origin_allowed(request.app.state.settings, origin, request.headers.get("host")):
        raise ApiError(403, "forbidden", "this origin may not refresh")
    sessions = request.app.state.sessions
    return await sessions.refresh(request, _store(request).user)  # type: ignore[no-any-return]


async def logout(request: Request) -> Response:
    """Ends the bearer's session, even when the token has expired or the session has already ended (a sign-out
    the page could only send once back online, docs/client.md "Sessions"): a token can only end its own session."""
    claims = await _claims(request, "/api/auth/logout", sign_out=True)
    return await request.app.state.sessions.logout(request, claims)  # type: ignore[no-any-return]


async def list_projects(request: Request) -> Response:
    user_id = await _user_id(request, "/api/projects")
    return JSONResponse(await _store(request).list_projects(user_id))


async def get_project(request: Request) -> Response:
    project_id = await _member_project(request, await _user_id(request, "/api/projects/{project_id}"))
    project = await _store(request).get_project(project_id)
    if project is None:  # membership rows are deleted with their project; only a race gets here
        raise ApiError(404, "not_found", "no such project")
    return JSONResponse(project)


async def list_stories(request: Request) -> Response:
    project_id = await _member_project(request, await _user_id(request, "/api/projects/{project_id}/stories"))
    return JSONResponse(await _store(request).list_stories(project_id))


async def patch_story(request: Request) -> Response:
    user_id = await _user_id(request, "/api/stories/{story_id}")
    story_id = _id_param(request, "story_id", "story")
    store = _store(request)
    await _visible(store, user_id, await store.get_story(story_id), "story")
    _mutation_id(request)
    body = await _json_body(request)
    status = body.get("status")
    if not isinstance(status, str) or status not in STORY_STATUSES:
        raise ApiError(422, "invalid_body", f"status must be one of: {', '.join(STORY_STATUSES)}")
    expect = body.get("expect")
    expected: str | None = None
    if expect is not None:
        if not isinstance(expect, dict) or set(expect) != {"status"} or expect["status"] not in STORY_STATUSES:
            raise ApiError(422, "invalid_body", "expect must be {\"status\": <the status the story had>}")
        expected = expect["status"]
    mutation = _mutation(request, user_id, {"status": status, "expect": expected})

    async def run() -> changes.Outcome:
        return await changes.move_story(
            store, _relay(request), story_id=story_id, status=status, actor=user_id, expect=expected, mutation=mutation
        )

    try:
        return await _change(request, run)
    except NotFound:
        raise ApiError(404, "not_found", "no such story") from None


async def project_escalations(request: Request) -> Response:
    if request.method == "POST":
        return await create_escalation(request)
    project_id = await _member_project(request, await _user_id(request, "/api/projects/{project_id}/escalations"))
    return JSONResponse(await _store(request).list_escalations(project_id))


async def create_escalation(request: Request) -> Response:
    user_id = await _user_id(request, "/api/projects/{project_id}/escalations")
    project_id = await _member_project(request, user_id)
    _mutation_id(request)
    body = await _json_body(request)
    try:
        title = changes.clean_title(body.get("title"))
    except ValueError as exc:
        raise ApiError(422, "invalid_body", str(exc)) from None
    mutation = _mutation(request, user_id, {"title": title})

    async def run() -> changes.Outcome:
        return await changes.create_escalation(
            _store(request), _relay(request), project_id=project_id, title=title, actor=user_id, mutation=mutation
        )

    try:
        return await _change(request, run)
    except NotFound:
        raise ApiError(403, "forbidden", "not a member of this project (or no such project)") from None


async def resolve_escalation(request: Request) -> Response:
    user_id = await _user_id(request, "/api/escalations/{escalation_id}/resolve")
    escalation_id = _id_param(request, "escalation_id", "escalation")
    store = _store(request)
    await _visible(store, user_id, await store.get_escalation(escalation_id), "escalation")
    mutation = _mutation(request, user_id, None)

    async def run() -> changes.Outcome:
        return await changes.resolve_escalation(
            store, _relay(request), escalation_id=escalation_id, actor=user_id, mutation=mutation
        )

    try:
        return await _change(request, run)
    except NotFound:
        raise ApiError(404, "not_found", "no such escalation") from None


# -- wiring ----------------------------------------------------------------------------------------------


def _wrap(template: str, handler: Handler) -> Handler:
    """Turn `ApiError` and unexpected exceptions into JSON answers, add no-store headers, count the request."""

    async def endpoint(request: Request) -> Response:
        try:
            response = await handler(request)
        except ApiError as exc:
            response = error_response(exc.status, exc.code, exc.message, exc.headers)
        except Unavailable as exc:  # the database is down or restarting: say so, the caller retries
            log_event("http.unavailable", logging.WARNING, route=template, error=str(exc)[:200])
            response = error_response(503, "unavailable", "the database is unavailable; try again shortly",
                                      {"Retry-After": "1"})
        except Exception as exc:
            log_event("http.error", logging.ERROR, route=template, error=type(exc).__name__)
            logging.getLogger("dashboard").exception("unhandled error in %s", template)
            response = error_response(500, "internal_error", "unexpected server error")
        else:
            response.headers.update(NO_STORE)
        _count(request, template, response.status_code)
        return response

    endpoint.__name__ = handler.__name__
    return endpoint


ROUTES: tuple[tuple[str, Handler, list[str]], ...] = (
    ("/api/auth/login", login, ["POST"]),
    ("/api/auth/refresh", refresh, ["POST"]),
    ("/api/auth/logout", logout, ["POST"]),
    ("/api/projects", list_projects, ["GET"]),
    ("/api/projects/{project_id}", get_project, ["GET"]),
    ("/api/projects/{project_id}/stories", list_stories, ["GET"]),
    ("/api/projects/{project_id}/escalations", project_escalations, ["GET", "POST"]),
    ("/api/stories/{story_id}", patch_story, ["PATCH"]),
    ("/api/escalations/{escalation_id}/resolve", resolve_escalation, ["POST"]),
)


def routes() -> list[BaseRoute]:
    """The REST routes; `create_app` adds them to the app."""
    return [Route(path, _wrap(path, handler), methods=methods) for path, handler, methods in ROUTES]


_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_body",
    429: "too_many_requests",
}


async def _http_exception(request: Request, exc: Exception) -> Response | None:
    if request.scope.get("type") != "http":
        return None  # a WebSocket: Starlette closes it
    assert isinstance(exc, HTTPException)
    code = _ERROR_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else code.replace("_", " ")
    if exc.status_code == 404:
        message = "no such resource"
    response = error_response(exc.status_code, code, message, dict(exc.headers or {}))
    route = getattr(request.scope.get("route"), "path", None) or "<unmatched>"
    _count(request, route, exc.status_code)
    return response


async def _server_error(request: Request, exc: Exception) -> Response:
    log_event("http.error", logging.ERROR, path=request.url.path, error=type(exc).__name__)
    _count(request, getattr(request.scope.get("route"), "path", None) or "<unmatched>", 500)
    return error_response(500, "internal_error", "unexpected server error")


def exception_handlers() -> dict[Any, Callable[..., Any]]:
    """JSON errors for Starlette's own 404/405 (and any `HTTPException`) and for unexpected errors."""
    return {HTTPException: _http_exception, Exception: _server_error}
