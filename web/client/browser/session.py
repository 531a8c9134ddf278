"""`BrowserSession`: runs a `client.session.Session` (the token's life) in the browser.

Build it with the link (`client.tabs.Tabs` or the runtime), the runtime, the `BrowserAdapter`,
`on_signed_out(reason)` and `sign_out(token)` (the page's `BrowserSignOuts`, which tells the server); call
`attach()`, `start(token)` before the adapter starts, `observe(status)` after every status change, `sign_out()`
for the Sign out button and `dispose()` at the end of the session.

- Refresh: `fetch('/api/auth/refresh', POST, JSON, credentials same-origin)`, ONE at a time for the whole
  browser: under the Web Lock `REFRESH_LOCK` it first re-reads `localStorage`, and when another tab already
  stored a fresher token it takes that one and sends no request (two tabs presenting the same refresh cookie
  would look like a stolen copy and end the session). Without Web Locks, or when the lock is not granted
  within `LOCK_WAIT_MS` (a frozen tab holding it), it refreshes without the lock.
- Other tabs' writes arrive as `storage` events: a new token is taken (and handed to the open socket), a
  removed one means signed out elsewhere.
- Wake-ups: `visibilitychange` to visible, `online`, `resume`, `pageshow` from the back/forward cache.
- Sign-out: the token goes to `sign_out(token)`, which sends `POST /api/auth/logout` now or, offline, later
  (web/client/browser/signout.py).
"""

import asyncio

from client.session import Session

from . import storage
from .adapter import FETCH_TIMEOUT_MS, log_record
from .events import CoreTimer, Listeners
from .ffi import epoch_now, is_none, js, now_ms, proxy, release, text, to_js

REFRESH_LOCK = "dashboard.refresh"
LOCK_WAIT_MS = 10000


def locks_supported():
    try:
        locks = js.navigator.locks
        if locks is None or is_none(locks):
            return False
        request = locks.request
        return not (request is None or is_none(request))
    except Exception:
        return False


class BrowserSession:
    """Runs the session core's commands with `fetch`, Web Locks, `localStorage` and one `setTimeout`."""

    def __init__(self, link, rt, adapter, on_signed_out, sign_out):
        self.core = Session(epoch_now)
        self.tell_server = sign_out
        self.link = link
        self.rt = rt
        self.adapter = adapter
        self.on_signed_out = on_signed_out
        self._listeners = Listeners()
        self._timer = CoreTimer(self._on_timer)
        self._running = False
        self._again = False
        self._disposed = False

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self):
        add = self._listeners.add
        add(js.window, "storage", self._on_storage)
        add(js.document, "visibilitychange", self._on_visibility)
        add(js.window, "online", lambda event=None: self._wake("online"))
        add(js.document, "resume", lambda event=None: self._wake("resume"))
        add(js.window, "pageshow", self._on_pageshow)

    def start(self, token):
        self.core.start(token, now_ms())
        self._run()

    def observe(self, status):
        """The link's status after a change (`render_status` calls it after every pump)."""
        if self._disposed or not isinstance(status, dict):
            return
        if status.get("state") == "auth-required":
            # the link may have found the token gone before this tab heard the `storage` event of the tab that
            # signed out: what storage holds decides first (signed out elsewhere, or a fresher token)
            self.core.token_seen(storage.token(), now_ms())
        self.core.link_state(status.get("state"), now_ms())
        self._run()

    def sign_out(self):
        self.core.sign_out(now_ms())
        self._run()

    def dispose(self):
        if self._disposed:
            return
        self._disposed = True
        self._listeners.remove_all()
        self._timer.dispose()

    # -- commands --------------------------------------------------------------------------

    def _run(self):
        if self._running:
            self._again = True
            return
        self._running = True
        try:
            for _ in range(20):
                self._again = False
                for command in self.core.commands():
                    if self._disposed:
                        return
                    self._command(command)
                if not self._again:
                    break
        finally:
            self._running = False
        if not self._disposed:
            self._timer.follow(self.core.get_timer())

    def _command(self, command):
        kind = command[0]
        if kind == "refresh":
            asyncio.create_task(self._refresh(command[1]))
        elif kind == "store":
            storage.save(command[1], command[2] if isinstance(command[2], dict) else storage.user())
        elif kind == "auth":
            if self.rt.send_auth(command[1], now_ms()):
                self.adapter.pump()
        elif kind == "reconnect":
            self.link.retry_now(now_ms())
            self.adapter.pump()
        elif kind == "logout":
            self.tell_server(command[1])
        elif kind == "signed_out":
            self.on_signed_out(command[1])
        elif kind == "log":
            log_record(command[1])

    # -- refresh ---------------------------------------------------------------------------

    async def _refresh(self, rid):
        if not locks_supported():
            await self._request(rid)
            return
        held = []
        granted = []

        def executor(resolve, reject=None):
            held.append(resolve)

        def on_grant(lock=None):
            granted.append(True)
            asyncio.create_task(self._under_lock(rid, held[0]))
            return promise

        executor_proxy = proxy(executor)
        grant_proxy = proxy(on_grant)
        promise = js.Promise.new(executor_proxy)
        options = js.Object.new()
        options.mode = "exclusive"
        options.signal = js.AbortSignal.timeout(LOCK_WAIT_MS)
        try:
            await js.navigator.locks.request(REFRESH_LOCK, options, grant_proxy)
        except Exception:  # not granted in time (a frozen tab holds it): go without
            if not granted:
                await self._request(rid)
        release(grant_proxy)
        release(executor_proxy)

    async def _under_lock(self, rid, resolve):
        try:
            stored = storage.token()
            if not self._disposed and self.core.fresher(stored):
                self.core.token_seen(stored, now_ms())  # another tab refreshed while we waited
                self._run()
            else:
                await self._request(rid)
        finally:
            resolve()  # the new token is stored by now: the next tab reads it

    async def _request(self, rid):
        options = {
            "method": "POST",
            "headers": {"Content-Type": "application/json"},
            "body": "{}",
            "credentials": "same-origin",
            "cache": "no-store",
            "signal": js.AbortSignal.timeout(FETCH_TIMEOUT_MS),
        }
        status, body = 0, ""
        try:
            response = await js.fetch("/api/auth/refresh", to_js(options))
            status = int(response.status)
            body = text(await response.text())
        except Exception:
            status, body = 0, ""
        if self._disposed:
            return
        self.core.refreshed(rid, status, body, now_ms())
        self._run()

    # -- browser events --------------------------------------------------------------------

    def _on_storage(self, event):
        key = event.key
        if self._disposed:
            return
        if key is None or is_none(key):  # localStorage.clear()
            value = None
        elif text(key) == storage.TOKEN_KEY:
            value = event.newValue
            value = None if value is None or is_none(value) else text(value)
        else:
            return
        self.core.token_seen(value, now_ms())
        self._run()

    def _on_visibility(self, event=None):
        if text(js.document.visibilityState) == "visible":
            self._wake("visible")

    def _on_pageshow(self, event):
        if bool(event.persisted):
            self._wake("pageshow")

    def _wake(self, why):
        if self._disposed:
            return
        self.core.wake(now_ms(), why)
        self._run()

    def _on_timer(self):
        if self._disposed:
            return
        self.core.handle_timer(now_ms())
        self._run()

