"""Two pieces every browser runner of a core needs: `Listeners` (DOM listeners it can remove again) and `CoreTimer`
(one `setTimeout` that follows a core's `get_timer()`).

`Listeners().add(target, name, fn)`, then `remove_all()`; `CoreTimer(on_fire)`, `follow(deadline)` after every
input (monotonic ms or None), `on_fire()` runs at the deadline, `dispose()` at the end.
"""

from .ffi import js, now_ms, proxy, release


class Listeners:
    def __init__(self):
        self._added = []

    def add(self, target, name, fn):
        handler = proxy(fn)
        target.addEventListener(name, handler)
        self._added.append((target, name, handler))

    def remove_all(self):
        for target, name, handler in self._added:
            target.removeEventListener(name, handler)
            release(handler)
        self._added = []


class CoreTimer:
    def __init__(self, on_fire):
        self.on_fire = on_fire
        self._handle = None
        self._at = None
        self._proxy = proxy(self._fire)

    def follow(self, deadline):
        """Arm for `deadline` (a core's `get_timer()`), or disarm for None; nothing to do when it is unchanged."""
        if self._proxy is None or (deadline == self._at and (deadline is None or self._handle is not None)):
            return
        if self._handle is not None:
            js.clearTimeout(self._handle)
            self._handle = None
        self._at = deadline
        if deadline is not None:
            self._handle = js.setTimeout(self._proxy, max(0, int(deadline - now_ms()) + 1))

    def dispose(self):
        if self._handle is not None:
            js.clearTimeout(self._handle)
        self._handle = None
        release(self._proxy)
        self._proxy = None

    def _fire(self, *args):
        self._handle = None
        self._at = None
        self.on_fire()
