"""`BrowserAdapter`: pumps one `client.runtime.Runtime` with real browser APIs.

Build it with the runtime (or the `client.tabs.Tabs` around it, which takes the same inputs) and a token
provider, plus `tabs` (a `client.browser.tabs.BrowserTabs`) when the socket is shared between tabs: it
runs the ("post", ...), ("lock", ...) and ("unlock", ...) commands. Call `attach()` then `start()`; call `pump()`
after anything you did to the runtime yourself (`retry_now`, `move_story`, ...), and `dispose()`
at logout. It runs the runtime's commands (native WebSocket, `fetch`, console logs), feeds every
browser event back with `now` (`performance.now()`), and keeps exactly one `setTimeout` armed for
`rt.get_timer()`.

MicroPython cannot catch an exception thrown by a synchronous JS call, so every sync call here is
trivial (argument values are sanitised first); awaited promises are wrapped in try/except.
Timers use the global `js.setTimeout`/`js.clearTimeout`: under MicroPython 1.27 a call to
`js.window.setTimeout` makes the next awaited `Response.text()` fail with "Illegal invocation".
"""

import asyncio
import json

from client import logtext

from . import prefetch
from .events import CoreTimer, Listeners
from .ffi import is_none, js, now_ms, proxy, release, text, to_js

LOG_PREFIX = "[WebSocket]"
FETCH_TIMEOUT_MS = 15000
LOG_METHODS = {"debug": "debug", "info": "info", "warn": "warn", "error": "error"}
SECRET_KEYS = ("token", "authorization", "protocols", "jwt")


def _close_code(code):
    """A code `WebSocket.close()` accepts (1000 or 3000-4999); anything else would throw."""
    try:
        code = int(code)
    except (TypeError, ValueError):
        return 1000
    return code if code == 1000 or 3000 <= code <= 4999 else 1000


def _close_reason(reason):
    """At most 123 UTF-8 bytes, or `close()` throws."""
    raw = str(reason or "").encode()[:120]
    return raw.decode("utf-8", "ignore") if raw else ""


def _redact(record):
    clean = {}
    for key, value in record.items():
        clean[key] = "[redacted]" if str(key).lower() in SECRET_KEYS else value
    return clean


class _Socket:
    """One native WebSocket and the four handler proxies made for it (released on close)."""

    __slots__ = ("sid", "ws", "proxies", "closed")

    def __init__(self, sid, ws, proxies):
        self.sid = sid
        self.ws = ws
        self.proxies = proxies
        self.closed = False


class BrowserAdapter:
    """Runs a runtime's commands in the browser and feeds browser events back to it."""

    def __init__(self, runtime, token_provider, on_pumped=None, tabs=None):
        self.rt = runtime
        self.tabs = tabs
        self.token_provider = token_provider
        self.on_pumped = on_pumped
        self.sockets = {}
        self.opened_count = 0
        self._timer = CoreTimer(self._on_timer)
        self._listeners = Listeners()
        self._disposed = False
        self._pumping = False
        self._graveyard = []  # proxies of closed sockets, released outside their own call

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self):
        """Listen to visibilitychange (document), online/offline (window) and the page lifecycle:
        pagehide/pageshow (window), freeze/resume (document)."""
        add = self._listeners.add
        add(js.document, "visibilitychange", self._on_visibility)
        add(js.window, "online", self._on_online)
        add(js.window, "offline", self._on_offline)
        add(js.window, "pagehide", self._on_frozen)
        add(js.document, "freeze", self._on_frozen)
        add(js.window, "pageshow", self._on_pageshow)
        add(js.document, "resume", self._on_resumed)
        if self.tabs is not None:
            self.tabs.attach(self.pump)

    def start(self):
        """Start the runtime with the current visibility and network state, then pump."""
        now = now_ms()
        if not bool(js.navigator.onLine):
            self.rt.network_changed(False, now)
        if text(js.document.visibilityState) == "hidden":
            self.rt.visibility_changed(False, now)
        self.rt.start(now)
        self.pump()

    def stop(self):
        """Stop the runtime (it closes its socket with 1000), run that, then dispose."""
        if self._disposed:
            return
        self.rt.stop(now_ms())
        self.pump()
        self.dispose()

    def dispose(self):
        """Detach every listener and timer and forget the sockets; the runtime is dropped."""
        if self._disposed:
            return
        self._disposed = True
        if self.tabs is not None:
            self.tabs.dispose()
        self._listeners.remove_all()
        self._timer.dispose()
        for sock in list(self.sockets.values()):
            self._forget(sock)
            if not sock.closed:
                sock.ws.close(1000, "")
        self.sockets = {}
        self._bury()

    # -- pumping ---------------------------------------------------------------------------

    def pump(self):
        """Run every queued command, re-arm the one timer, then tell the page to re-render."""
        if self._disposed or self._pumping:
            return
        self._pumping = True
        try:
            for _ in range(20):
                commands = self.rt.commands()
                if not commands:
                    break
                for command in commands:
                    self._run(command)
            self._timer.follow(self.rt.get_timer())
        finally:
            self._pumping = False
        if self.on_pumped is not None:
            self.on_pumped()

    def _run(self, command):
        kind = command[0]
        if kind == "send":
            self._send(command[1], command[2])
        elif kind == "open":
            self._open(command[1], command[2], command[3] if len(command) > 3 else None)
        elif kind == "close":
            self._close(command[1], command[2] if len(command) > 2 else 1000, command[3] if len(command) > 3 else "")
        elif kind == "fetch":
            asyncio.create_task(self._fetch(*command[1:]))
        elif kind == "log":
            self._log(command[1])
        elif self.tabs is not None and kind in ("post", "lock", "unlock"):
            self.tabs.run(command)

    # -- timer -----------------------------------------------------------------------------

    def _on_timer(self):
        if self._disposed:
            return
        self._bury()
        self.rt.handle_timer(now_ms())
        self.pump()

    # -- WebSocket -------------------------------------------------------------------------

    def _open(self, sid, url, protocols):
        protocols = [str(p) for p in (protocols or [])]
        ws = js.window.WebSocket.new(str(url), to_js(protocols))
        sock = _Socket(sid, ws, [])
        on_open = proxy(lambda event: self._on_open(sock))
        on_message = proxy(lambda event: self._on_message(sock, event))
        on_close = proxy(lambda event: self._on_close(sock, event))
        on_error = proxy(lambda event: None)
        sock.proxies = [on_open, on_message, on_close, on_error]
        ws.onopen = on_open
        ws.onmessage = on_message
        ws.onclose = on_close
        ws.onerror = on_error
        self.sockets[sid] = sock
        self.opened_count += 1

    def _send(self, sid, payload):
        sock = self.sockets.get(sid)
        if sock is None or sock.closed or int(sock.ws.readyState) != 1:
            return
        sock.ws.send(str(payload))

    def _close(self, sid, code, reason):
        sock = self.sockets.get(sid)
        if sock is None or sock.closed:
            return
        if int(sock.ws.readyState) < 2:
            sock.ws.close(_close_code(code), _close_reason(reason))

    def _on_open(self, sock):
        if self._disposed or sock.closed:
            return
        self._bury()
        self.rt.socket_opened(sock.sid, now_ms())
        self.pump()

    def _on_message(self, sock, event):
        if self._disposed or sock.closed:
            return
        data = event.data
        if not isinstance(data, str):
            data = text(data)
        self.rt.socket_message(sock.sid, data, now_ms())
        self.pump()

    def _on_close(self, sock, event):
        if sock.closed:
            return
        sock.closed = True
        self._forget(sock)
        if self.sockets.get(sock.sid) is sock:
            del self.sockets[sock.sid]
        if self._disposed:
            return
        self.rt.socket_closed(sock.sid, int(event.code), text(event.reason), now_ms())
        self.pump()

    def _forget(self, sock):
        """Detach the handlers now; their proxies are released later (one may be running)."""
        ws = sock.ws
        ws.onopen = None
        ws.onmessage = None
        ws.onclose = None
        ws.onerror = None
        self._graveyard.extend(sock.proxies)
        sock.proxies = []

    def _bury(self):
        dead, self._graveyard = self._graveyard, []
        for p in dead:
            release(p)

    # -- fetch -----------------------------------------------------------------------------

    async def _fetch(self, rid, method, path, body=None, headers=None):
        headers = dict(headers or {})
        token = self.token_provider()
        if token:
            headers["Authorization"] = "Bearer " + token
        if body is not None:
            headers["Content-Type"] = "application/json"
        options = {"method": str(method), "headers": headers, "cache": "no-store"}
        if body is not None:
            options["body"] = body if isinstance(body, str) else json.dumps(body)
        options["signal"] = js.AbortSignal.timeout(FETCH_TIMEOUT_MS)
        status = 0
        body_text = ""
        early = await prefetch.take(str(path), token) if method == "GET" and body is None else None
        try:
            if early is not None:
                status, body_text = early
            else:
                response = await js.fetch(str(path), to_js(options))
                status = int(response.status)
                body_text = text(await response.text())
        except Exception as exc:  # network error, abort or timeout: status 0
            status = 0
            body_text = ""
            self._log({"event": "fetch.failed", "method": method, "path": path, "error": str(exc)[:200]})
        if self._disposed:
            return
        self.rt.fetch_result(rid, status, body_text, now_ms())
        self.pump()

    # -- logs and signals ------------------------------------------------------------------

    def _log(self, record):
        log_record(record)

    def _on_visibility(self, event=None):
        if self._disposed:
            return
        self.rt.visibility_changed(text(js.document.visibilityState) != "hidden", now_ms())
        self.pump()

    def _on_online(self, event=None):
        if self._disposed:
            return
        self.rt.network_changed(True, now_ms())
        self.pump()

    def _on_offline(self, event=None):
        if self._disposed:
            return
        self.rt.network_changed(False, now_ms())
        self.pump()

    def _on_frozen(self, event=None):
        """`pagehide` or `freeze`: the runtime closes its socket (4001) now, while the page can still run."""
        if self._disposed:
            return
        self.rt.lifecycle_changed(True, now_ms())
        self.pump()

    def _on_pageshow(self, event):
        if bool(event.persisted):  # restored from the back/forward cache (false on a normal load)
            self._on_resumed()

    def _on_resumed(self, event=None):
        """`resume` or `pageshow` from the back/forward cache: network and visibility may have changed
        meanwhile (their events can come later), so report them first, then wake the runtime."""
        if self._disposed:
            return
        now = now_ms()
        self.rt.network_changed(bool(js.navigator.onLine), now)
        self.rt.visibility_changed(text(js.document.visibilityState) != "hidden", now)
        self.rt.lifecycle_changed(False, now)
        self.pump()


def log_record(record):
    """One readable `[WebSocket] …` console line (client/logtext.py) with the record's fields (secrets redacted) as an
    object after it; the adapter's and the session's telemetry both go through here."""
    try:
        record = _redact(record)
        level, line = logtext.line(record)
        details = to_js(logtext.fields(record))
    except Exception:
        level, line, details = "info", "%s %s" % (LOG_PREFIX, record), None
    method = LOG_METHODS.get(level, "log")
    if details is None:
        js.console.log(line)
    elif method == "warn":
        js.console.warn(line, details)
    elif method == "error":
        js.console.error(line, details)
    elif method == "debug":
        js.console.debug(line, details)
    else:
        js.console.info(line, details)


def socket_url(ws_path):
    """Absolute ws:// or wss:// URL for `ws_path` on the page's own origin."""
    scheme = "wss:" if text(js.location.protocol) == "https:" else "ws:"
    return "%s//%s%s" % (scheme, text(js.location.host), ws_path)


__all__ = ["BrowserAdapter", "socket_url", "is_none"]
