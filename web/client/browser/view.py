"""`View`: writes presenter output into the static shell of `index.html`.

Every method is a plain DOM write (`textContent`, `innerHTML`, attributes); the HTML itself comes
from `client.presenter`, already escaped. `View.listen(handlers)` installs the three delegated
listeners (click, change, submit) once for the whole page. Re-rendering a list keeps the keyboard
focus on the same control (same `data-action` and id), so a keyboard user does not lose their place
when a story moves or a count changes.
"""

from .ffi import is_none, js, proxy, text

MAX_EVENTS = 200
ID_ATTRS = ("data-story-id", "data-escalation-id", "data-project-id")


def _el(element_id):
    return js.document.getElementById(element_id)


def _show(element, visible):
    element.hidden = not visible


def attr(element, name):
    """An attribute as str, or None when absent."""
    value = element.getAttribute(name)
    if value is None or is_none(value):
        return None
    return str(value)


def _control_key(element):
    """(data-action, id attribute, id) naming a control across re-renders, or None."""
    action = attr(element, "data-action")
    if action is None:
        return None
    for name in ID_ATTRS:
        value = attr(element, name)
        if value is not None:
            return (action, name, value)
    return (action, None, None)


def _focused_key(container):
    """The key of the focused control when it is inside `container`."""
    active = js.document.activeElement
    if active is None or is_none(active) or not bool(container.contains(active)):
        return None
    return _control_key(active)


def _refocus(container, key):
    """Focus the control of `container` with `key` again; else the container when it takes focus."""
    for element in container.querySelectorAll("[data-action]"):
        if _control_key(element) == key:
            element.focus()
            return
    if attr(container, "tabindex") is not None:
        container.focus()


class View:
    """Handles on the page's fixed elements and the writes the controller needs."""

    def __init__(self):
        self.root = js.document.documentElement
        self.badge = _el("connection-status")
        self.badge_label = _el("connection-label")
        self.badge_detail = _el("connection-detail")
        self.freshness = _el("freshness")
        self.banner = _el("banner")
        self.banner_text = _el("banner-text")
        self.retry = _el("retry-button")
        self.boot = _el("boot")
        self.login_view = _el("login-view")
        self.login_form = _el("login-form")
        self.login_error = _el("login-error")
        self.login_notice = _el("login-notice")
        self.login_submit = _el("login-submit")
        self.app_view = _el("app-view")
        self.user_box = _el("user-box")
        self.user_name = _el("user-name")
        self.user_avatar = _el("user-avatar")
        self.projects = _el("projects")
        self.project_select = _el("project-select")
        self.project_title = _el("project-title")
        self.project_desc = _el("project-desc")
        self.detail_state = _el("detail-state")
        self.board = _el("board")
        self.escalations = _el("escalations")
        self.escalation_form = _el("escalation-form")
        self.event_log = _el("event-log")
        self.main = _el("main")
        self.notice = _el("notice")
        self.notice_text = _el("notice-text")
        self._proxies = []
        self._last = {}

    def listen(self, on_click, on_change, on_submit):
        """One delegated listener per event type for the whole page (proxies live as long as it)."""
        for name, fn in (("click", on_click), ("change", on_change), ("submit", on_submit)):
            handler = proxy(fn)
            self._proxies.append(handler)
            js.document.addEventListener(name, handler)

    def ready(self):
        self.root.dataset.app = "ready"
        _show(self.boot, False)

    # -- connection ------------------------------------------------------------------------

    def _set(self, key, value):
        """True when `value` differs from the last one written under `key`."""
        if self._last.get(key) == value:
            return False
        self._last[key] = value
        return True

    def connection(self, badge, fresh, banner):
        if self._set("badge", (badge["state"], badge["attempt"], badge["label"], badge["detail"], badge["closeCode"])):
            self.badge.setAttribute("data-state", badge["state"])
            self.badge.setAttribute("data-close-code", badge["closeCode"])
            self.badge.setAttribute("data-attempt", str(badge["attempt"]))
            self.badge_label.textContent = badge["label"]
            self.badge_detail.textContent = badge["detail"]
        if self._set("fresh", fresh):
            self.freshness.textContent = fresh
            self.freshness.setAttribute("data-live", "true" if fresh == "Live" else "false")
        if self._set("banner", None if banner is None else (banner["kind"], banner["text"], banner["retry"])):
            if banner is None:
                _show(self.banner, False)
                _show(self.retry, False)
            else:
                self.banner.setAttribute("data-kind", banner["kind"])
                if banner["kind"] == "error":  # announced at once; warnings are covered by the status badge
                    self.banner_text.setAttribute("role", "alert")
                else:
                    self.banner_text.removeAttribute("role")
                self.banner_text.textContent = banner["text"]
                _show(self.retry, banner["retry"])
                _show(self.banner, True)

    def role(self, role):
        """`data-role` of the status element: leader, follower, own or candidate (none when signed out)."""
        if self._set("role", role):
            if role:
                self.badge.setAttribute("data-role", role)
            else:
                self.badge.removeAttribute("data-role")

    # -- screens ---------------------------------------------------------------------------

    def show_login(self, notice=None, focus=False):
        """The sign-in form; `focus` puts the cursor in it (after a sign-out, not on page load)."""
        _show(self.app_view, False)
        _show(self.user_box, False)
        _show(self.login_view, True)
        self.login_submit.disabled = False
        if notice:
            self.login_notice.textContent = notice
        _show(self.login_notice, bool(notice))
        if focus:
            self.login_form.elements.namedItem("username").focus()

    def login_failed(self, message):
        self.login_error.textContent = message
        _show(self.login_error, True)
        self.login_submit.disabled = False

    def login_busy(self):
        _show(self.login_error, False)
        self.login_submit.disabled = True

    def login_values(self):
        form = self.login_form
        return text(form.elements.namedItem("username").value), text(form.elements.namedItem("password").value)

    def show_app(self, user, focus=False):
        """The dashboard for `user`; `focus` moves the keyboard focus to the page content (after signing in)."""
        name = (user or {}).get("name") or (user or {}).get("id") or ""
        self.user_name.textContent = name
        self.user_avatar.textContent = name[:1].upper()
        _show(self.login_view, False)
        _show(self.login_error, False)
        _show(self.user_box, True)
        _show(self.app_view, True)
        self.login_form.reset()
        if focus:
            self.main.focus()

    def reset_app(self):
        self.projects.innerHTML = ""
        self.project_select.innerHTML = ""
        self.board.innerHTML = ""
        self.escalations.innerHTML = ""
        self.event_log.innerHTML = ""
        self.project_title.textContent = "Pick a project"
        self.project_desc.textContent = ""
        self.detail_state.textContent = ""
        self._last = {}
        self.hide_notice()

    # -- data ------------------------------------------------------------------------------

    def forget(self, *keys):
        """Forget what was last written under `keys`: the next write redraws even identical markup (call it when
        the user changed a control inside that markup: the redraw puts it back to what the markup says)."""
        for key in keys:
            self._last.pop(key, None)

    def html(self, key, element, markup):
        if self._set(key, markup):
            focused = _focused_key(element)
            element.innerHTML = markup
            if focused is not None:
                _refocus(element, focused)

    def projects_html(self, markup, options_markup=None):
        """The project cards and, when given, the options of the compact picker shown on phones."""
        self.html("projects", self.projects, markup)
        if options_markup is not None:
            self.html("project-options", self.project_select, options_markup)

    def project_header(self, title, description, state_text):
        self.project_title.textContent = title
        self.project_desc.textContent = description
        self.detail_state.textContent = state_text

    def board_html(self, markup):
        self.html("board", self.board, markup)

    def escalations_html(self, markup):
        self.html("escalations", self.escalations, markup)

    def escalation_title(self):
        return text(self.escalation_form.elements.namedItem("title").value).strip()

    def clear_escalation_title(self):
        self.escalation_form.reset()

    def add_event(self, markup):
        self.event_log.insertAdjacentHTML("afterbegin", markup)
        while int(self.event_log.childElementCount) > MAX_EVENTS:
            self.event_log.lastElementChild.remove()

    def clear_events(self):
        self.event_log.innerHTML = ""

    # -- notices ---------------------------------------------------------------------------

    def show_notice(self, message, kind="error"):
        self.notice_text.textContent = message
        self.notice.setAttribute("data-kind", kind)
        _show(self.notice, True)

    def hide_notice(self):
        _show(self.notice, False)


def timezone_offset_min():
    """The browser's `Date.getTimezoneOffset()` (minutes behind UTC)."""
    return int(js.Date.new().getTimezoneOffset())
