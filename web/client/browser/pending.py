"""`PendingStore`: the browser side of the pending-change queue (`client.pending`, issue 14).

It keeps one user's queue in `localStorage` under `client.pending.storage_key(user)` (`dashboard.pending.<userId>`),
hands the stored text to the runtime at start and whenever another tab writes it (the `storage` event), writes what
the runtime changes, lets only the tabs leader send (`Tabs.on_role`), and shows the header count
(`data-testid="pending-count"`) and the conflict notice (`data-testid="conflict-notice"`). It decides nothing.
"""

from client import pending as pendingmod
from client import presenter

from .ffi import is_none, js, now_ms, proxy, release, text


def _get(key):
    try:
        value = js.window.localStorage.getItem(key)
    except Exception:
        return None
    return None if value is None or is_none(value) else str(value)


def user_key(user):
    user = user or {}
    return str(user.get("id") or user.get("name") or "anonymous")


class PendingStore:
    """Build it with the session's runtime, the tabs link around it and the user; `attach(pump, rerender)`."""

    def __init__(self, rt, link, user):
        self.rt = rt
        self.link = link
        self.key = pendingmod.storage_key(user_key(user))
        self.count_el = js.document.getElementById("pending-count")
        self.notice = js.document.getElementById("conflict-notice")
        self.notice_text = js.document.getElementById("conflict-notice-text")
        self.pump = None
        self.rerender = None
        self._unsubs = []
        self._storage = None

    def attach(self, pump, rerender):
        """Restore the stored queue (its changes show at once), then follow storage, roles and changes."""
        self.pump = pump
        self.rerender = rerender
        rt = self.rt
        rt.enable_pending(_get(self.key), now_ms())
        self._unsubs.append(rt.pending.on_change(self._write))
        self._unsubs.append(self.link.on_role(self._on_role))
        rt.pending_sender(self.link.is_leader, now_ms())
        self._storage = proxy(self._on_storage)
        js.window.addEventListener("storage", self._storage)
        self.show_count()

    def dispose(self):
        for unsub in self._unsubs:
            unsub()
        self._unsubs = []
        if self._storage is not None:
            js.window.removeEventListener("storage", self._storage)
            release(self._storage)
            self._storage = None

    @property
    def count(self):
        return self.rt.pending.queue.count if self.rt.pending is not None else 0

    def discard(self):
        """Sign-out confirmed: drop the queue here and in storage (other tabs drop theirs on the event)."""
        if self.rt.pending is not None:
            self.rt.discard_pending(now_ms())
        try:
            js.window.localStorage.removeItem(self.key)
        except Exception:
            pass

    def targets(self, kind):
        """Story ids (moves) or escalation ids (resolves) with a change waiting, for the pending marks."""
        if self.rt.pending is None:
            return []
        return [e.get("target") for e in self.rt.pending.queue.entries if e.get("kind") == kind]

    # -- inputs ----------------------------------------------------------------------------

    def _write(self, value, count):
        try:
            js.window.localStorage.setItem(self.key, value)
        except Exception as exc:  # quota or storage disabled: the change stays in this page only
            js.console.warn("[WebSocket] pending changes not stored: " + str(exc))
        self.show_count()

    def _on_storage(self, event):
        key = event.key
        if key is not None and not is_none(key) and str(key) != self.key:
            return
        value = None if key is None or is_none(key) else text(event.newValue, None)
        self.rt.pending_stored(value, now_ms())
        self.show_count()
        if self.pump is not None:
            self.pump()
        if self.rerender is not None:
            self.rerender()

    def _on_role(self, role):
        self.rt.pending_sender(self.link.is_leader, now_ms())  # the adapter pumps after the input that changed it

    # -- outputs ---------------------------------------------------------------------------

    def show_count(self):
        count = self.count
        self.count_el.setAttribute("data-count", str(count))
        self.count_el.textContent = presenter.pending_count_text(count)
        self.count_el.hidden = count == 0

    def show_conflict(self, story):
        self.notice_text.textContent = presenter.conflict_text(story)
        self.notice.hidden = False

    def hide_conflict(self):
        self.notice.hidden = True
