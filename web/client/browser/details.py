"""`DetailsPanel`: the connection details panel (`data-testid="connection-details"`) behind the status badge.

Call `attach()` once: the badge becomes a keyboard-reachable button (click, Enter or Space toggles the panel),
Escape or the close button closes it and gives focus back to the badge. Call `render(rt)` after every pump
(the app does it from `render_status`); it writes `client.details` rows while the panel is open.
"""

from client import details

from .ffi import is_none, js, proxy, text, wall_ms


def _el(selector):
    found = js.document.querySelector(selector)
    return None if found is None or is_none(found) else found


class DetailsPanel:
    def __init__(self):
        self.badge = _el('[data-testid="connection-status"]')
        self.panel = _el('[data-testid="connection-details"]')
        self.body = _el("#connection-details-list")
        self.open = False
        self._proxies = []
        self._rt = None
        self._last = None

    def attach(self):
        """Make the badge a toggle for the panel and listen for the keys; a page without the panel is left alone."""
        if self.badge is None or self.panel is None:
            return
        badge = self.badge
        # The badge keeps announcing state changes (polite, atomic, as role=status did) and is now a button.
        badge.setAttribute("role", "button")
        badge.setAttribute("tabindex", "0")
        badge.setAttribute("aria-live", "polite")
        badge.setAttribute("aria-atomic", "true")
        badge.setAttribute("aria-controls", "connection-details")
        badge.setAttribute("aria-expanded", "false")
        badge.setAttribute("title", "Connection details")
        self._on(badge, "click", self._on_badge_click)
        self._on(badge, "keydown", self._on_badge_key)
        self._on(js.document, "keydown", self._on_document_key)
        close = _el('[data-action="close-connection-details"]')
        if close is not None:
            self._on(close, "click", self._on_close_click)

    def _on(self, target, name, fn):
        handler = proxy(fn)
        self._proxies.append(handler)
        target.addEventListener(name, handler)

    # -- events ----------------------------------------------------------------------------

    def _on_badge_click(self, event=None):
        self.toggle()

    def _on_badge_key(self, event):
        key = text(event.key)
        if key in ("Enter", " "):
            event.preventDefault()
            self.toggle()

    def _on_document_key(self, event):
        if self.open and text(event.key) == "Escape":
            self.close()

    def _on_close_click(self, event=None):
        self.close()

    # -- state -----------------------------------------------------------------------------

    def toggle(self):
        if self.open:
            self.close()
        else:
            self.show()

    def show(self):
        self.open = True
        self._last = None
        self.render(self._rt)
        self.panel.hidden = False
        self.badge.setAttribute("aria-expanded", "true")
        self.panel.focus()

    def close(self):
        if not self.open:
            return
        self.open = False
        self.panel.hidden = True
        self.badge.setAttribute("aria-expanded", "false")
        self.badge.focus()

    def render(self, rt):
        """Refresh the rows (only while open, only what changed)."""
        self._rt = rt
        if not self.open or self.body is None:
            return
        status = rt.status if rt is not None else {"state": "idle", "attempt": 0}
        stats = rt.stats if rt is not None else {}
        runtime = text(js.document.documentElement.getAttribute("data-runtime"), "micropython")
        tz = int(js.Date.new().getTimezoneOffset())
        markup = details.panel_html(details.rows(status, stats, runtime, _to_wall, tz))
        if markup != self._last:
            self._last = markup
            self.body.innerHTML = markup


def _to_wall(monotonic_ms):
    return None if monotonic_ms is None else wall_ms(monotonic_ms)

