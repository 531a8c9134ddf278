"""Changes made while offline are kept and applied exactly once (issue 14): queued in localStorage, shown at once
with pending marks, kept across a reload while still offline (the page's service worker opens it), sent in order
with their original mutation ids when back online; a lost response is retried with the same id; a conflict shows
the other user's status."""

from __future__ import annotations

import json
import re
import threading

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect

from .pages import UI_TIMEOUT_MS, login_live, open_dashboard, status, story

BOARD_STATUSES = ["todo", "in_progress", "review", "done", "blocked"]


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    """This module needs the service worker the other browser tests block (a reload while offline)."""
    return {**browser_context_args, "service_workers": "allow"}


class ProjectEvents:
    """A second client of the server (its own WebSocket, `dashboard.v1`) subscribed to one project: every event it
    receives, to count how often each change was published."""

    def __init__(self, server, token: str, project_id: str) -> None:
        self.url = server.url.replace("http://", "ws://") + "/ws/status-updates"
        self.token = token
        self.project_id = project_id
        self.events: list[dict] = []
        self.subscribed = threading.Event()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.subscribed.wait(10), "the second client was not subscribed"

    def _run(self) -> None:
        with connect(self.url, subprotocols=["dashboard.v1", "bearer." + self.token], open_timeout=10) as ws:
            ws.send(json.dumps({"action": "subscribe", "projectId": self.project_id}))
            while not self.stopped:
                try:
                    msg = json.loads(ws.recv(timeout=0.5))
                except TimeoutError:
                    continue
                except Exception:
                    return
                if msg.get("type") == "ping":
                    ws.send(json.dumps({"action": "pong"}))
                elif msg.get("type") == "subscribed":
                    self.subscribed.set()
                elif msg.get("type") == "event":
                    self.events.append(msg)

    def of(self, event_type: str) -> list[dict]:
        return [e for e in list(self.events) if e.get("eventType") == event_type]

    def moves_of(self, story_id) -> list[dict]:
        return [e for e in self.of("story.status.changed") if e["data"].get("storyId") == story_id]

    def close(self) -> None:
        self.stopped = True
        self.thread.join(5)


@pytest.fixture
def project_events(server, api):
    token = api.client.headers["Authorization"].split(" ", 1)[1]
    watcher = ProjectEvents(server, token, "apollo")
    yield watcher
    watcher.close()


def offline_ready(page, server):
    """Signed in and live, the service worker in control, the page loaded once through it (its reads kept)."""
    login_live(page, server)
    wait_pumping(page, lambda: page.evaluate("!!(navigator.serviceWorker && navigator.serviceWorker.controller)"),
                 message="the service worker to control the page")
    page.reload()
    expect(status(page)).to_have_attribute("data-state", "live")
    expect(page.get_by_test_id("story").first).to_be_visible()


def two_moves(api):
    """Two stories of apollo (lowest ids) and a status each is not in."""
    stories = sorted(api.stories("apollo"), key=lambda s: s["id"])[:2]
    moves = []
    for s in stories:
        to = next(x for x in BOARD_STATUSES if x != s["status"] and x != "blocked")
        moves.append((s, to))
    return moves


def move(page, story_id, to):
    card = story(page, story_id)
    card.locator("select").select_option(to)
    expect(story(page, story_id)).to_have_attribute("data-status", to)


def wait_pumping(page, predicate, timeout_ms=UI_TIMEOUT_MS, message="condition"):
    """Poll while Playwright pumps its events (route handlers run only then)."""
    for _ in range(max(1, timeout_ms // 50)):
        if predicate():
            return
        page.wait_for_timeout(50)
    raise AssertionError("timed out waiting for " + message)


def pending_count(page):
    return page.get_by_test_id("pending-count")


def test_offline_changes_survive_a_reload_and_are_applied_exactly_once(page, context, server, api, project_events):
    offline_ready(page, server)
    moves = two_moves(api)
    context.set_offline(True)
    expect(status(page)).to_have_attribute("data-state", "offline")
    for s, to in moves:
        move(page, s["id"], to)
    form = page.get_by_test_id("escalation-form")
    form.locator('input[name="title"]').fill("Raised in a tunnel")
    form.locator('button[type="submit"]').click()
    raised = page.locator('[data-testid="escalation"]', has_text="Raised in a tunnel")
    expect(raised).to_have_attribute("data-pending", "true")
    for s, to in moves:
        expect(story(page, s["id"])).to_have_attribute("data-pending", "true")
    expect(pending_count(page)).to_have_attribute("data-count", "3")
    expect(pending_count(page)).to_be_visible()

    page.reload()  # still offline: the service worker serves the page and the last reads
    expect(page.locator("html")).to_have_attribute("data-app", "ready", timeout=30_000)
    expect(status(page)).to_have_attribute("data-state", "offline")
    expect(pending_count(page)).to_have_attribute("data-count", "3")
    for s, to in moves:
        expect(story(page, s["id"])).to_have_attribute("data-status", to)
        expect(story(page, s["id"])).to_have_attribute("data-pending", "true")
    expect(raised).to_have_attribute("data-pending", "true")
    assert project_events.events == []  # nothing reached the server
    assert {s["id"]: s["status"] for s in api.stories("apollo")} == {s["id"]: s["status"] for s in sorted(api.stories("apollo"), key=lambda x: x["id"])}

    context.set_offline(False)
    expect(status(page)).to_have_attribute("data-state", "live")
    expect(pending_count(page)).to_have_attribute("data-count", "0")
    expect(pending_count(page)).to_be_hidden()
    expect(page.locator('[data-pending="true"]')).to_have_count(0)
    wait_pumping(page, lambda: len(project_events.of("escalation.created")) >= 1
                 and all(project_events.moves_of(s["id"]) for s, _ in moves), message="the changes reached the server")
    page.wait_for_timeout(1000)  # any duplicate would follow within the retry backoff; none may come
    for s, to in moves:
        published = project_events.moves_of(s["id"])
        assert len(published) == 1, published
        assert published[0]["data"]["to"] == to and published[0]["data"].get("clientMutationId")
    created = project_events.of("escalation.created")
    assert [e["data"]["escalation"]["title"] for e in created] == ["Raised in a tunnel"]
    server_board = {s["id"]: s["status"] for s in api.stories("apollo")}
    for s, to in moves:
        assert server_board[s["id"]] == to
    for story_id, state in server_board.items():
        expect(story(page, story_id)).to_have_attribute("data-status", state)
    assert page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('dashboard.pending.'))") != []
    assert page.get_by_test_id("notice").is_hidden() and page.get_by_test_id("conflict-notice").is_hidden()


def test_a_change_refused_by_a_full_queue_leaves_the_story_as_it_was(page, context, server, api):
    """The queue holds at most `client.pending.LIMIT` changes: one more is refused at once with a notice, and the
    story's status picker goes back to the status the story has (not left showing the refused choice)."""
    offline_ready(page, server)
    (first, first_to), (other, other_to) = two_moves(api)
    context.set_offline(True)
    expect(status(page)).to_have_attribute("data-state", "offline")
    move(page, first["id"], first_to)
    expect(pending_count(page)).to_have_attribute("data-count", "1")
    # fill the stored queue up to its limit with copies of that change, then reload (still offline) to load it
    filled = page.evaluate("""() => {
        const key = Object.keys(localStorage).find(k => k.startsWith('dashboard.pending.'));
        const data = JSON.parse(localStorage.getItem(key));
        const one = data.entries[0];
        for (let i = 1; i < 200; i++) data.entries.push({...one, id: one.id + '-' + i, at: one.at + i});
        localStorage.setItem(key, JSON.stringify(data));
        return data.entries.length;
    }""")
    assert filled == 200
    page.reload()
    expect(page.locator("html")).to_have_attribute("data-app", "ready", timeout=30_000)
    expect(status(page)).to_have_attribute("data-state", "offline")
    expect(pending_count(page)).to_have_attribute("data-count", "200")

    card = story(page, other["id"])
    card.locator("select").select_option(other_to)
    notice = page.get_by_test_id("notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("Not saved: 200 changes are already waiting to be sent")
    expect(card).to_have_attribute("data-status", other["status"])
    expect(card).not_to_have_attribute("data-pending", "true")
    expect(card.locator("select")).to_have_value(other["status"])
    expect(pending_count(page)).to_have_attribute("data-count", "200")


def test_a_lost_response_is_sent_again_with_the_same_id_and_applied_once(page, server, api, project_events):
    login_live(page, server)
    (target, to), _ = two_moves(api)
    ids = []

    def lose_first_answer(route):
        request = route.request
        if request.method != "PATCH":
            return route.continue_()
        ids.append(request.headers.get("x-client-mutation-id"))
        if len(ids) == 1:
            route.fetch()  # it reaches the server and is applied...
            return route.abort("connectionreset")  # ...but the answer never reaches the page
        return route.continue_()

    page.route(re.compile(r".*/api/stories/\d+$"), lose_first_answer)
    move(page, target["id"], to)
    wait_pumping(page, lambda: len(ids) >= 2, message="the change was sent again")
    assert ids[0] and ids[0] == ids[1]
    expect(pending_count(page)).to_have_attribute("data-count", "0")
    expect(story(page, target["id"])).not_to_have_attribute("data-pending", "true")
    expect(story(page, target["id"])).to_have_attribute("data-status", to)
    page.wait_for_timeout(1000)
    assert len(project_events.moves_of(target["id"])) == 1
    assert {s["id"]: s["status"] for s in api.stories("apollo")}[target["id"]] == to
    assert page.get_by_test_id("notice").is_hidden()


@pytest.mark.parametrize("query", ["", "?runtime=pyodide"], ids=["micropython", "pyodide"])
def test_an_offline_move_of_a_story_someone_else_moved_ends_in_a_conflict_notice(page, context, server, api, query):
    login_live(page, server, query=query)
    (target, to), _ = two_moves(api)
    theirs = next(x for x in BOARD_STATUSES if x not in (target["status"], to))
    context.set_offline(True)
    expect(status(page)).to_have_attribute("data-state", "offline")
    move(page, target["id"], to)
    expect(pending_count(page)).to_have_attribute("data-count", "1")
    api.move_story(target["id"], theirs)  # another user, meanwhile
    context.set_offline(False)
    notice = page.get_by_test_id("conflict-notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text("#%s" % target["id"])
    expect(notice).to_contain_text({"todo": "To do", "in_progress": "In progress", "review": "Review", "done": "Done"}[theirs])
    expect(story(page, target["id"])).to_have_attribute("data-status", theirs)
    expect(pending_count(page)).to_have_attribute("data-count", "0")
    assert {s["id"]: s["status"] for s in api.stories("apollo")}[target["id"]] == theirs


def test_every_tab_shows_the_same_pending_marks_and_only_one_sends(context, server, api, project_events):
    first = context.new_page()
    login_live(first, server)
    second = context.new_page()
    open_dashboard(second, server.url)
    expect(status(second)).to_have_attribute("data-role", "follower")
    expect(second.get_by_test_id("story").first).to_be_visible()
    (target, to), _ = two_moves(api)
    context.set_offline(True)
    for page in (first, second):
        expect(status(page)).to_have_attribute("data-state", "offline")
    move(second, target["id"], to)  # made in the follower
    for page in (first, second):
        expect(pending_count(page)).to_have_attribute("data-count", "1")
        expect(story(page, target["id"])).to_have_attribute("data-pending", "true")
        expect(story(page, target["id"])).to_have_attribute("data-status", to)
    patches = []
    context.on("request", lambda request: patches.append(request) if request.method == "PATCH" else None)
    context.set_offline(False)
    for page in (first, second):
        expect(pending_count(page)).to_have_attribute("data-count", "0")
        expect(page.locator('[data-pending="true"]')).to_have_count(0)
        expect(story(page, target["id"])).to_have_attribute("data-status", to)
    first.wait_for_timeout(1000)
    assert len(patches) == 1 and patches[0].frame.page == first  # the leader sent it, once
    assert len(project_events.moves_of(target["id"])) == 1


def test_sign_out_with_changes_waiting_asks_first(page, context, server, api):
    login_live(page, server)
    (target, to), _ = two_moves(api)
    context.set_offline(True)
    expect(status(page)).to_have_attribute("data-state", "offline")
    move(page, target["id"], to)
    answers = ["dismiss", "accept"]
    asked = []

    def on_dialog(dialog):
        asked.append(dialog.message)
        getattr(dialog, answers[len(asked) - 1])()

    page.on("dialog", on_dialog)
    page.get_by_test_id("logout-button").click()
    expect(pending_count(page)).to_have_attribute("data-count", "1")  # kept: the user said no
    expect(page.get_by_test_id("login-form")).to_be_hidden()
    page.get_by_test_id("logout-button").click()
    expect(page.get_by_test_id("login-form")).to_be_visible()
    assert len(asked) == 2 and "discard" in asked[0]
    stored = page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('dashboard.pending.'))")
    assert stored == []
    context.set_offline(False)
    page.wait_for_timeout(500)
    assert {s["id"]: s["status"] for s in api.stories("apollo")}[target["id"]] == target["status"]
