"""`DashboardApp`: the page controller. `main()` builds it and starts `boot()`.

It signs in over REST, then builds one `Runtime` (wrapped in `client.tabs.Tabs`, so every tab of the
browser shares one socket; `?tabs=own` keeps one per tab) + `BrowserAdapter` per session, watches the
cache keys the screen needs and renders them through `client.presenter` and `View`. User actions
arrive through three delegated listeners (click, change, submit) and become runtime calls.
"""

import asyncio
import json

from client import presenter
from client import session as tokenlife
from client.runtime import Runtime
from client.tabs import Tabs

from . import offline
from . import pending as browser_pending
from . import prefetch, storage
from . import tabs as browser_tabs
from .adapter import BrowserAdapter, socket_url
from .details import DetailsPanel
from .session import BrowserSession
from .signout import BrowserSignOuts
from .ffi import epoch_now, is_none, js, now_ms, proxy, release, text, to_js, wall_ms
from .view import View, attr, timezone_offset_min

DEFAULT_CONFIG = {"wsPath": "/ws/status-updates"}


def _entry(entry, name, default=None):
    try:
        value = getattr(entry, name)
    except AttributeError:
        try:
            value = entry.get(name, default)
        except AttributeError:
            value = default
    return default if value is None else value


def _as_id(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _wall_now():
    return epoch_now()


def _to_wall(monotonic_ms):
    return None if monotonic_ms is None else wall_ms(monotonic_ms)


def _tabs_mode():
    """`?tabs=own` keeps a socket per tab; anything else shares one per browser (where it can)."""
    try:
        return text(js.URLSearchParams.new(js.location.search).get("tabs"))
    except Exception:
        return ""


def _user_key(user):
    """Tabs share a socket only with tabs signed in as the same user."""
    user = user or {}
    return str(user.get("id") or user.get("name") or "anonymous")


class Shown:
    """What the details panel reads: the status this tab shows (a follower shows its leader's) and its own stats."""

    __slots__ = ("status", "stats")

    def __init__(self, status, stats):
        self.status = status
        self.stats = stats


class Session:
    """One signed-in user: the runtime, the tabs link around it (status, retry), its adapter, and the
    unsubscribe callables to run at the end."""

    __slots__ = ("rt", "link", "adapter", "user", "unsubs", "project_subs", "detail_unsubs", "auth", "pending")

    def __init__(self, rt, link, adapter, user):
        self.rt = rt
        self.link = link
        self.adapter = adapter
        self.user = user
        self.unsubs = []
        self.project_subs = {}
        self.detail_unsubs = []
        self.auth = None  # BrowserSession: the token's life (refresh, sign-out)
        self.pending = None  # browser.pending.PendingStore: the queue of changes not sent yet

    def close(self):
        for unsub in self.detail_unsubs + list(self.project_subs.values()) + self.unsubs:
            try:
                unsub()
            except Exception:
                pass
        self.detail_unsubs = []
        self.project_subs = {}
        self.unsubs = []
        if self.auth is not None:
            self.auth.dispose()
        if self.pending is not None:
            self.pending.dispose()
        self.adapter.stop()


class DashboardApp:
    """Login, session lifecycle, rendering of runtime data, and user actions."""

    def __init__(self):
        self.view = View()
        self.config = dict(DEFAULT_CONFIG)
        self.session = None
        self.selected = None
        self.projects = []
        self.stories = None
        self.escalations = None
        self.pending = {}
        self._intent = None
        self._signed_out = False
        self.tz = timezone_offset_min()
        self.details = DetailsPanel()
        self.signouts = BrowserSignOuts()  # sign-outs the server has not heard yet (made offline)

    async def boot(self):
        """Load `/api/config`, install listeners, then resume a stored session or show the login form."""
        self.view.listen(self.on_click, self.on_change, self.on_submit)
        self.details.attach()
        offline.register()
        try:
            early = await prefetch.take("/api/config")
            if early is None:
                response = await js.fetch("/api/config", to_js({"cache": "no-store"}))
                early = int(response.status), text(await response.text())
            if early[0] == 200:
                loaded = json.loads(early[1])
                if isinstance(loaded, dict):
                    self.config.update(loaded)
        except Exception as exc:
            js.console.warn("[WebSocket] config unavailable, using defaults: " + str(exc))
        self.signouts.attach()
        self.signouts.start()
        user = storage.user()
        if storage.token() and user is not None:
            self.start_session(user)
        else:
            self.view.show_login()
            self.render_status()
        self.view.ready()

    # -- session ---------------------------------------------------------------------------

    def start_session(self, user, focus=False):
        if self.session is not None:
            self.end_session()
        ws_url = socket_url(self.config.get("wsPath") or "/ws/status-updates")
        rt = Runtime(self.config, storage.token, ws_url=ws_url, wall_clock=_wall_now)
        shared = _tabs_mode() != "own" and browser_tabs.supported()
        link = Tabs(rt, shared=shared, config=self.config, wall_clock=_wall_now)
        port = browser_tabs.BrowserTabs(link, _user_key(user)) if shared else None
        adapter = BrowserAdapter(link, storage.token, on_pumped=self.render_status, tabs=port)
        session = Session(rt, link, adapter, user)
        self.session = session
        self._signed_out = False
        self.view.reset_app()
        self.view.show_app(user, focus)
        session.unsubs.append(rt.on_mutation(self.on_mutation))
        session.pending = browser_pending.PendingStore(rt, link, user)
        session.pending.attach(adapter.pump, self.rerender_pending)
        session.unsubs.append(rt.watch(("projects",), self.on_projects))
        adapter.attach()
        session.auth = BrowserSession(link, rt, adapter, self.on_signed_out, self.signouts.sign_out)
        session.auth.attach()
        session.auth.start(storage.token())
        adapter.start()

    def end_session(self):
        session, self.session = self.session, None
        if session is not None:
            session.close()
        self.selected = None
        self.projects = []
        self.stories = None
        self.escalations = None
        self.pending = {}

    def logout(self):
        """Sign out (after confirming that changes still waiting are discarded): the session core asks the server
        to revoke the session (`on_signed_out` does the rest)."""
        pending = self.session.pending if self.session is not None else None
        if pending is not None and pending.count:
            if not bool(js.window.confirm("%s. Sign out and discard them?" % presenter.pending_count_text(pending.count))):
                return
            pending.discard()
        if self.session is not None and self.session.auth is not None:
            self.session.auth.sign_out()
        else:
            self.on_signed_out(tokenlife.USER)

    def on_signed_out(self, reason):
        """The session is over (`client.session` reasons). Signed out here or in another tab: disconnect. Refused
        by the server: the link is already closed (auth-required, shown as such); storage forgets the token, which
        signs the other tabs out too."""
        if reason == tokenlife.USER:
            self.end_session()
            storage.clear(reason)
            offline.forget()
            self.view.reset_app()
            self.view.show_login(focus=True)
        elif reason == tokenlife.ELSEWHERE:
            why = storage.signout_reason()
            self.end_session()
            offline.forget()
            self.view.reset_app()
            self.view.show_login(tokenlife.message(why if why and why != tokenlife.USER else reason))
        elif not self._signed_out:
            self._signed_out = True
            storage.forget_token(reason)
            self.view.show_login(tokenlife.message(reason))
        self.render_status()

    async def login(self, username, password):
        self.view.login_busy()
        options = {
            "method": "POST",
            "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"username": username, "password": password}),
            "cache": "no-store",
            "credentials": "same-origin",  # keeps the refresh cookie (dashboard_refresh)
        }
        try:
            response = await js.fetch("/api/auth/login", to_js(options))
            status = int(response.status)
            body = text(await response.text())
        except Exception:
            self.view.login_failed("Cannot reach the server. Check your connection and try again.")
            return
        if status != 200:
            message = "Wrong username or password." if status in (400, 401, 403, 422) else "Sign-in failed (%d)." % status
            self.view.login_failed(message)
            return
        try:
            data = json.loads(body)
            token = data["token"]
        except (ValueError, KeyError, TypeError):
            self.view.login_failed("The server sent an unexpected answer.")
            return
        storage.save(token, data.get("user") or {"name": username})
        self.start_session(storage.user(), focus=True)

    # -- rendering -------------------------------------------------------------------------

    def render_status(self):
        session = self.session
        status = session.link.status if session is not None else {"state": "idle", "attempt": 0}
        badge = presenter.connection_badge(status, _to_wall, self.tz)
        fresh = presenter.freshness(status, _to_wall(status.get("lastLiveAt")), self.tz) if session else ""
        banner = presenter.banner(status, _to_wall, self.tz) if session else None
        self.view.connection(badge, fresh, banner)
        self.view.role(status.get("role"))
        self.details.render(Shown(session.link.status, session.link.shown_stats) if session is not None else None)
        if session is not None and session.auth is not None:
            session.auth.observe(status)  # a refused link: one refresh, or the sign-in form

    def on_projects(self, entry):
        data = _entry(entry, "data")
        if data is not None:
            self.projects = list(data)
        if not self.projects and _entry(entry, "state") == "error":
            message = "Could not load projects: %s" % presenter.escape(_entry(entry, "error", ""))
            self.view.projects_html('<p class="empty error">%s</p>' % message, '<option value="">%s</option>' % message)
            return
        if not self.projects and _entry(entry, "state") in ("idle", "loading"):
            self.view.projects_html('<p class="empty">Loading projects…</p>', '<option value="">Loading projects…</option>')
            return
        self.render_projects()
        session = self.session
        if session is None:
            return
        listed = [project.get("id") for project in self.projects]
        for pid in listed:
            if pid not in session.project_subs:
                session.project_subs[pid] = session.rt.subscribe(pid, self.on_event)
        for pid in [pid for pid in session.project_subs if pid not in listed]:
            session.project_subs.pop(pid)()  # no longer ours (membership revoked): stop following it
        if self.selected is not None and self.selected not in listed and data is not None:
            self._leave_project()
        if self.selected is None and self.projects:
            self.open_project(self.projects[0].get("id"))
        else:
            self.render_header()

    def open_project(self, pid):
        session = self.session
        if session is None or pid is None:
            return
        self._close_detail()
        self.selected = pid
        self.render_projects()
        self.view.board_html('<p class="empty">Loading stories…</p>')
        self.view.escalations_html('<li class="empty">Loading escalations…</li>')
        self.render_header()
        session.detail_unsubs.append(session.rt.watch(("stories", pid), self.on_stories))
        session.detail_unsubs.append(session.rt.watch(("escalations", pid), self.on_escalations))
        session.adapter.pump()

    def render_projects(self):
        self.view.projects_html(
            presenter.project_cards_html(self.projects, self.selected),
            presenter.project_options_html(self.projects, self.selected),
        )

    def _close_detail(self):
        """Stop watching the open project's stories and escalations and forget them."""
        session = self.session
        if session is not None:
            for unsub in session.detail_unsubs:
                unsub()
            session.detail_unsubs = []
        self.selected = None
        self.stories = None
        self.escalations = None

    def _leave_project(self):
        """The open project is gone from the list: drop its views (the caller opens another one, if any)."""
        self._close_detail()
        self.view.project_header("Pick a project", "", "")
        self.view.board_html('<p class="empty">No project selected.</p>')
        self.view.escalations_html("")

    def render_header(self):
        project = None
        for item in self.projects:
            if item.get("id") == self.selected:
                project = item
        if project is None:
            return
        self.view.project_header(project.get("name") or project.get("id"), project.get("description") or "", "")

    def _pending_ids(self, kind):
        ids = [intent.get("target") for intent in self.pending.values() if intent.get("kind") == kind]
        if self.session is not None and self.session.pending is not None:
            ids += self.session.pending.targets(kind)  # queued, also by another tab or before a reload
        return ids

    def on_stories(self, entry):
        data = _entry(entry, "data")
        if data is None:
            if _entry(entry, "state") == "error":
                self.view.board_html('<p class="empty error">Could not load stories: %s</p>'
                                     % presenter.escape(_entry(entry, "error", "")))
            return
        self.stories = list(data)
        self.view.board_html(presenter.board_html(self.stories, self._pending_ids("move_story")))

    def on_escalations(self, entry):
        data = _entry(entry, "data")
        if data is None:
            if _entry(entry, "state") == "error":
                self.view.escalations_html('<li class="empty error">Could not load escalations: %s</li>'
                                           % presenter.escape(_entry(entry, "error", "")))
            return
        self.escalations = list(data)
        self.view.escalations_html(
            presenter.escalations_html(self.escalations, self.tz, self._pending_ids("resolve_escalation"))
        )

    def on_event(self, event):
        if not isinstance(event, dict):
            return
        self.view.add_event(presenter.event_item_html(event, self.tz))

    def on_mutation(self, record):
        intent = self.pending.pop(record.get("id"), None) or self._intent or {}
        intent["done"] = True
        if record.get("refused"):
            self.view.show_notice(presenter.refused_text(record))
        elif record.get("status") == 409 and isinstance(record.get("current"), dict) and self.session is not None:
            self.session.pending.show_conflict(record["current"])
        elif not record.get("ok"):
            if not intent.get("kind") and record.get("kind") == "move_story":  # a queued change: no intent here
                intent = {"kind": "move_story", "story_id": record.get("target"), "to": record.get("value")}
            self.view.show_notice(presenter.mutation_error_text(record, intent))
        if self.session is not None and self.session.pending is not None:
            self.session.pending.show_count()
        self.rerender_pending()

    def rerender_pending(self):
        if self.stories is not None:
            self.view.board_html(presenter.board_html(self.stories, self._pending_ids("move_story")))
        if self.escalations is not None:
            self.view.escalations_html(
                presenter.escalations_html(self.escalations, self.tz, self._pending_ids("resolve_escalation"))
            )

    # -- user actions ----------------------------------------------------------------------

    def on_click(self, event):
        target = event.target.closest("[data-action]")
        if target is None or is_none(target):
            return
        action = attr(target, "data-action")
        session = self.session
        if action == "dismiss-notice":
            self.view.hide_notice()
        elif action == "dismiss-conflict" and session is not None:
            session.pending.hide_conflict()
        elif action == "logout":
            self.logout()
        elif session is None:
            return
        elif action == "retry":
            session.link.retry_now(now_ms())
            session.adapter.pump()
        elif action == "open-project":
            pid = attr(target, "data-project-id")
            if pid != self.selected:
                self.open_project(pid)
        elif action == "resolve-escalation" and self.selected is not None:
            eid = _as_id(attr(target, "data-escalation-id"))
            intent = {"kind": "resolve_escalation", "target": eid}
            self._mutate(intent, lambda rt: rt.resolve_escalation(self.selected, eid, now_ms()))
            session.adapter.pump()
            self.rerender_pending()

    def _mutate(self, intent, call):
        """Start a mutation and remember what the user meant, for the notice if it is refused."""
        self._intent = intent
        try:
            mid = call(self.session.rt)
        finally:
            self._intent = None
        if mid is not None and not intent.get("done"):
            self.pending[mid] = intent
        return mid

    def on_change(self, event):
        target = event.target
        action = attr(target, "data-action")
        if action == "pick-project" and self.session is not None:
            pid = text(target.value)
            if pid and pid != self.selected:
                self.open_project(pid)
            return
        if action != "move-story" or self.session is None or self.selected is None:
            return
        story_id = _as_id(attr(target, "data-story-id"))
        to = text(target.value)
        current = None
        for story in self.stories or []:
            if story.get("id") == story_id:
                current = story.get("status")
        if to == current:
            return
        self.view.forget("board")  # the picker now shows `to`: the next render rewrites it, even a refused move's
        self.view.hide_notice()
        intent = {"kind": "move_story", "target": story_id, "story_id": story_id, "from": current, "to": to}
        mid = self._mutate(intent, lambda rt: rt.move_story(self.selected, story_id, to, now_ms()))
        self.session.adapter.pump()
        self.rerender_pending()

    def on_submit(self, event):
        form = event.target
        action = attr(form, "data-action")
        if action not in ("login", "create-escalation"):
            return
        event.preventDefault()
        if action == "login":
            username, password = self.view.login_values()
            asyncio.create_task(self.login(username.strip(), password))
        elif self.session is not None and self.selected is not None:
            title = self.view.escalation_title()
            if not title:
                return
            intent = {"kind": "create_escalation", "target": None}
            self._mutate(intent, lambda rt: rt.create_escalation(self.selected, title, now_ms()))
            self.view.clear_escalation_title()
            self.session.adapter.pump()


def main():
    """Entry point for `web/main.py`: build the app and start booting. index.html starts PyScript from
    `<head>`, so if the body is not parsed yet (it practically always is by then) wait for it."""
    if text(js.document.readyState) != "loading":
        return _start()
    waiting = []

    def on_parsed(event=None):
        release(waiting.pop())
        _start()

    waiting.append(proxy(on_parsed))
    js.document.addEventListener("DOMContentLoaded", waiting[0])
    return None


def _start():
    app = DashboardApp()
    asyncio.create_task(app.boot())
    return app
