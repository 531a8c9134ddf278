"""`BrowserSignOuts`: runs `client.signout.SignOuts` for the whole page (it outlives each signed-in session).

Build one at boot, call `attach()` then `start()`; `BrowserSession` hands it each sign-out (`sign_out(token)`).
It sends `POST /api/auth/logout` with `fetch` (`keepalive`), keeps the owed tokens in `localStorage`
(`storage.owed_signouts()`), wakes on `online`, `visibilitychange` to visible and `pageshow` from the
back/forward cache, and keeps one `setTimeout` for the retry.
"""

import asyncio

from client.signout import SignOuts

from . import storage
from .adapter import FETCH_TIMEOUT_MS, log_record
from .events import CoreTimer, Listeners
from .ffi import js, now_ms, text, to_js


class BrowserSignOuts:
    def __init__(self):
        self.core = SignOuts()
        self._listeners = Listeners()
        self._timer = CoreTimer(self._on_timer)

    def attach(self):
        self._listeners.add(js.window, "online", lambda event=None: self._wake("online"))
        self._listeners.add(js.document, "visibilitychange", self._on_visibility)
        self._listeners.add(js.window, "pageshow", self._on_shown)

    def start(self):
        self.core.start(_stored(), now_ms())
        self._run()

    def sign_out(self, token):
        self.core.sign_out(token, now_ms())
        self._run()

    # -- commands --------------------------------------------------------------------------

    def _run(self):
        for command in self.core.commands():
            kind = command[0]
            if kind == "logout":
                asyncio.create_task(self._logout(command[1], bool(command[2])))
            elif kind == "save":
                try:
                    storage.save_owed_signouts(command[1])
                except Exception as exc:  # storage full or disabled: still sent while this page lives
                    js.console.warn("[Session] cannot keep the owed sign-out: " + str(exc)[:200])
            elif kind == "log":
                log_record(command[1])
        self._timer.follow(self.core.get_timer())

    async def _logout(self, token, at_sign_out):
        """With cookies at sign-out (the answer deletes the refresh cookie); without them later, when the cookie may
        belong to a new sign-in."""
        options = to_js({
            "method": "POST",
            "headers": {"Authorization": "Bearer " + str(token)},
            "credentials": "same-origin" if at_sign_out else "omit",
            "cache": "no-store",
            "keepalive": True,
            "signal": js.AbortSignal.timeout(FETCH_TIMEOUT_MS),
        })
        status = 0
        try:
            response = await js.fetch("/api/auth/logout", options)
            status = int(response.status)
        except Exception as exc:  # offline: owed, sent again later
            js.console.warn("[Session] sign-out request failed: " + str(exc)[:200])
        self.core.answered(token, status, now_ms())
        self._run()

    # -- browser events --------------------------------------------------------------------

    def _on_visibility(self, event=None):
        if text(js.document.visibilityState) == "visible":
            self._wake("visible")

    def _on_shown(self, event):
        if bool(event.persisted):  # back from the back/forward cache
            self._wake("pageshow")

    def _wake(self, why):
        self.core.wake(_stored(), now_ms(), why)
        self._run()

    def _on_timer(self):
        self.core.handle_timer(now_ms())
        self._run()


def _stored():
    try:
        return storage.owed_signouts()
    except Exception:  # storage disabled
        return []
