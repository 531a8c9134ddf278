"""Page helpers for the browser suite: open the dashboard, sign in, find the elements of the test contract."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Locator, Page, expect

from .harness import USERS, DashboardServer

UI_TIMEOUT_MS = 10_000
BOOT_TIMEOUT_MS = 30_000
STATUSES = ["todo", "in_progress", "review", "done", "blocked"]


def open_dashboard(page: Page, base_url: str, query: str = "", timeout_ms: int = BOOT_TIMEOUT_MS) -> None:
    page.goto(base_url + "/" + query)
    expect(page.locator("html")).to_have_attribute("data-app", "ready", timeout=timeout_ms)


def sign_in(page: Page, username: str = "alice", password: str | None = None) -> None:
    form = page.get_by_test_id("login-form")
    expect(form).to_be_visible()
    form.locator('input[name="username"]').fill(username)
    form.locator('input[name="password"]').fill(USERS.get(username, "") if password is None else password)
    form.locator('button[type="submit"]').click()


def login_live(page: Page, server: DashboardServer, username: str = "alice", query: str = "", boot_ms=BOOT_TIMEOUT_MS):
    """Open the page, sign in and wait for the live badge and the first story."""
    open_dashboard(page, server.url, query, boot_ms)
    sign_in(page, username)
    expect(status(page)).to_have_attribute("data-state", "live")
    open_project(page, "apollo" if username == "alice" else "cassini")


def status(page: Page) -> Locator:
    return page.get_by_test_id("connection-status")


def story(page: Page, story_id) -> Locator:
    return page.locator(f'[data-testid="story"][data-story-id="{story_id}"]')


def escalation(page: Page, escalation_id) -> Locator:
    return page.locator(f'[data-testid="escalation"][data-escalation-id="{escalation_id}"]')


def next_status(current: str) -> str:
    return STATUSES[(STATUSES.index(current) + 1) % len(STATUSES)]


def only_localhost(urls: list[str]) -> list[str]:
    """The URLs that left 127.0.0.1/localhost (data: URLs are local)."""
    bad = []
    for url in urls:
        if url.startswith("data:"):
            continue
        host = urlsplit(url).hostname
        if host not in ("127.0.0.1", "localhost"):
            bad.append(url)
    return bad



def open_project(page: Page, project_id: str) -> None:
    """Click the project's card, or on a phone (where the cards give way to a compact picker) pick it."""
    card = page.locator(f'[data-testid="project-card"][data-project-id="{project_id}"]')
    card.wait_for(state="attached")
    if card.is_visible():
        card.click()
    else:
        page.get_by_test_id("project-select").select_option(project_id)
    expect(card).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("story").first).to_be_visible()


def events(page: Page, event_type: str | None = None) -> Locator:
    log = page.get_by_test_id("event-log")
    if event_type is None:
        return log.locator(":scope > *")
    return log.locator(f':scope > [data-event-type="{event_type}"]')


def wait_for_line(page: Page, lines: list[str], prefix: str, timeout_ms: int = UI_TIMEOUT_MS) -> str:
    """Wait (pumping Playwright events) until a collected console line starts with `prefix`."""
    for _ in range(max(1, timeout_ms // 50)):
        for line in lines:
            if line.startswith(prefix):
                return line
        page.wait_for_timeout(50)
    raise AssertionError(f"no console line starting with {prefix!r}")
