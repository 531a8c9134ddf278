"""`BrowserTabs`: the BroadcastChannel and the Web Locks behind one `client.tabs.Tabs`.

`supported()` says whether this browser has both (if not, the page keeps a socket of its own). Build
it with the core and the signed-in user's id; the adapter calls `attach(pump)` (opens the channel,
listens to `pagehide`: a page that may be gone leaves the tabs, a follower too), hands it every ("post", text), ("lock", lid, steal) and ("unlock",
lid) command through `run(command)`, and calls `dispose()` at the end of the session (channel closed,
every lock given back). It moves messages and lock outcomes and decides nothing (docs/browser.md, "Tabs").

A lock is held while the Promise its callback returned is pending: `unlock` resolves it (or aborts the
request while it still waits, through an AbortController; `steal` requests cannot take a signal). A
request that rejects after its grant means another tab took the lock (`steal`): `lock_lost`; before
the grant, and not aborted by us: `lock_failed`.
"""

import asyncio

from .ffi import is_none, js, now_ms, proxy, release, text

CHANNEL_PREFIX = "dashboard.tabs.v1:"
LOCK_PREFIX = "dashboard.leader:"


def supported():
    """True when `navigator.locks.request` and `BroadcastChannel` both exist."""
    try:
        locks = js.navigator.locks
        channel = js.window.BroadcastChannel
        request = locks.request
    except Exception:
        return False
    for value in (locks, channel, request):
        if value is None or is_none(value):
            return False
    return True


class _Lock:
    """One lock request: whether it was granted, how to give it back."""

    __slots__ = ("lid", "granted", "released", "resolve", "controller", "promise")

    def __init__(self, lid):
        self.lid = lid
        self.granted = False
        self.released = False
        self.resolve = None
        self.controller = None
        self.promise = None


class BrowserTabs:
    """Runs the tabs core's commands on a BroadcastChannel and `navigator.locks`, and feeds back what happens."""

    def __init__(self, core, user_key):
        self.core = core
        self.channel_name = CHANNEL_PREFIX + str(user_key)
        self.lock_name = LOCK_PREFIX + str(user_key)
        self.channel = None
        self.locks = {}
        self.pump = None
        self._proxies = []
        self._pagehide = None
        self._disposed = False

    def attach(self, pump):
        """Open the channel and listen to `pagehide`; `pump()` runs after every input. (`freeze`, `resume` and
        `pageshow` reach the core through the adapter's `lifecycle_changed`; it runs its `pagehide` first.)"""
        self.pump = pump
        self.channel = js.BroadcastChannel.new(self.channel_name)
        handler = proxy(self._on_message)
        self._proxies.append(handler)
        self.channel.onmessage = handler
        self._pagehide = proxy(self._on_pagehide)
        js.window.addEventListener("pagehide", self._pagehide)

    def dispose(self):
        """Close the channel and give every lock back."""
        if self._disposed:
            return
        self._disposed = True
        for lock in list(self.locks.values()):
            self._give_back(lock)
        if self.channel is not None:
            self.channel.onmessage = None
            self.channel.close()
        if self._pagehide is not None:
            js.window.removeEventListener("pagehide", self._pagehide)
            release(self._pagehide)
            self._pagehide = None
        for p in self._proxies:
            release(p)
        self._proxies = []

    def run(self, command):
        kind = command[0]
        if self._disposed:
            return
        if kind == "post":
            if self.channel is not None:
                self.channel.postMessage(str(command[1]))
        elif kind == "lock":
            asyncio.create_task(self._request(command[1], bool(command[2])))
        elif kind == "unlock":
            lock = self.locks.get(command[1])
            if lock is not None:
                self._give_back(lock)

    # -- inputs ----------------------------------------------------------------------------

    def _input(self, fn):
        if self._disposed:
            return
        fn(now_ms())
        if self.pump is not None:
            self.pump()

    def _on_message(self, event):
        data = event.data
        if not isinstance(data, str):
            data = text(data, None)
        if data is not None:
            self._input(lambda now: self.core.channel_message(data, now))

    def _on_pagehide(self, event=None):
        self._input(self.core.page_hidden)

    # -- locks -----------------------------------------------------------------------------

    async def _request(self, lid, steal):
        lock = _Lock(lid)
        self.locks[lid] = lock

        def executor(resolve, reject=None):
            lock.resolve = resolve

        def on_grant(granted=None):
            lock.granted = True
            if lock.released or self._disposed:
                return None  # given back before it came: release it at once
            self._input(lambda now: self.core.lock_granted(lid, now))
            return lock.promise

        executor_proxy = proxy(executor)
        grant_proxy = proxy(on_grant)
        lock.promise = js.Promise.new(executor_proxy)
        options = js.Object.new()
        options.mode = "exclusive"
        if steal:
            options.steal = True
        else:
            lock.controller = js.AbortController.new()
            options.signal = lock.controller.signal
        failure = None
        try:
            await js.navigator.locks.request(self.lock_name, options, grant_proxy)
        except Exception as exc:  # AbortError: stolen, or our abort; anything else: no usable lock
            failure = str(exc) or "lock request failed"
        self.locks.pop(lid, None)
        release(grant_proxy)
        release(executor_proxy)
        if failure is None or self._disposed:
            return
        if lock.granted:
            self._input(lambda now: self.core.lock_lost(lid, now))
        else:
            self._input(lambda now: self.core.lock_failed(lid, failure, now))

    def _give_back(self, lock):
        lock.released = True
        if lock.granted and lock.resolve is not None:
            lock.resolve()
        elif lock.controller is not None:
            lock.controller.abort()
