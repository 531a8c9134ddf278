"""What the page did, read from outside: its REST requests, its `subscribed` records (through `WsLog`), its
event log, and the server's Prometheus counters. Shared by the resume and page-lifecycle tests."""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import httpx
from playwright.sync_api import Page

from .pages import UI_TIMEOUT_MS, events
from .wslog import WsLog

EVENTS_PER_CHANGE = 2  # the change itself, then `project.updated` (backend/changes.py)
QUIET_MS = 1000  # > 3 x the client's 250 ms invalidation window: no refetch can still be on its way
PROJECTS = "/api/projects"


class ApiTraffic:
    """The page's REST requests (`/api/...`) in the order they started, and those still in flight."""

    def __init__(self, page: Page) -> None:
        self.started: list[tuple[str, str]] = []
        self.in_flight: set = set()
        self.last_activity = time.monotonic()
        page.on("request", self._started)
        page.on("requestfinished", self._ended)
        page.on("requestfailed", self._ended)

    def _started(self, request) -> None:
        path = urlsplit(request.url).path
        if path.startswith("/api/"):
            self.started.append((request.method, path))
            self.in_flight.add(request)
            self.last_activity = time.monotonic()

    def _ended(self, request) -> None:
        if request in self.in_flight:
            self.in_flight.discard(request)
            self.last_activity = time.monotonic()

    def mark(self) -> int:
        return len(self.started)

    def gets_since(self, mark: int) -> list[str]:
        return [path for method, path in self.started[mark:] if method == "GET"]

    def wait_quiet(self, page: Page, timeout_ms: int = UI_TIMEOUT_MS, held: bool = False) -> None:
        """Wait until no REST request is in flight (unless `held`: they are being held on purpose) and
        none started or ended for `QUIET_MS`.

        Used before a fault, so that no fetch of the page is cut by it (a fetch that fails is
        legitimately retried when the link is back and would blur what the resume itself caused), and
        to let every coalesced refetch be issued before the requests are counted."""
        start = time.monotonic()
        deadline = start + timeout_ms / 1000
        while time.monotonic() < deadline:
            quiet_since = max(start, self.last_activity)  # silence counts from this call on
            if (held or not self.in_flight) and time.monotonic() - quiet_since >= QUIET_MS / 1000:
                return
            page.wait_for_timeout(50)
        raise AssertionError(f"the page's REST traffic did not settle: {self.started[-10:]}, {len(self.in_flight)} in flight")


def wait_for_subscribed(page: Page, log: WsLog, project_ids, start: int = 0, timeout_ms: int = UI_TIMEOUT_MS) -> dict:
    """Wait for one `subscribed` record per project (logged from console message `start` on); {project: record}."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        found = {r["projectId"]: r for r in log.records("subscribed", start)}
        if all(pid in found for pid in project_ids):
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"no `subscribed` record for {set(project_ids) - set(found)}; records: {found}")
        page.wait_for_timeout(50)


def logged_events(page: Page) -> list[tuple[str, str, int]]:
    """(event type, project, seq) of every event-log entry, oldest first."""
    items = events(page).evaluate_all("els => els.map(e => [e.dataset.eventType, e.dataset.projectId, e.dataset.seq])")
    return [(kind, pid, int(seq)) for kind, pid, seq in reversed(items)]


def metric(base_url: str, name: str, **labels: str) -> float:
    """The value of one sample of the server's `/metrics` (0 when absent), e.g.
    `metric(url, "websocket_disconnects_total", code="4001")`."""
    text = httpx.get(base_url + "/metrics", timeout=5.0).text
    want = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            have = ",".join(sorted(part for part in (match.group(2) or "").split(",") if part))
            if have == want:
                return float(match.group(3))
    return 0.0


def alice_projects(api) -> list[str]:
    response = api.client.get("/api/projects")
    response.raise_for_status()
    return [project["id"] for project in response.json()]


LIFECYCLE_TRACE_JS = """() => {
  window.lifecycleMarker = "kept";  // survives only if the page itself comes back (not a reload)
  const trace = window.lifecycleTrace = [];
  const badge = document.querySelector('[data-testid="connection-status"]');
  new MutationObserver(() => trace.push([performance.now(), "state", badge.dataset.state]))
    .observe(badge, {attributes: true, attributeFilter: ["data-state"]});
  addEventListener("pageshow", (e) => { if (e.persisted) trace.push([e.timeStamp, "back"]); }, true);
  document.addEventListener("resume", (e) => trace.push([e.timeStamp, "back"]), true);
}"""
MS_TO_LIVE_JS = """() => {
  const trace = window.lifecycleTrace || [];
  const back = trace.findIndex((e) => e[1] === "back");
  if (back < 0) return null;
  const live = trace.slice(back).find((e) => e[1] === "state" && e[2] === "live");
  return live ? live[0] - trace[back][0] : null;
}"""


def trace_lifecycle(page: Page) -> None:
    """Mark the page and record, in page time, its `pageshow` (persisted) / `resume` and every status change."""
    page.evaluate(LIFECYCLE_TRACE_JS)


def ms_from_return_to_live(page: Page) -> float | None:
    """Milliseconds from the page coming back (`pageshow` persisted or `resume`) to its status reading `live`."""
    return page.evaluate(MS_TO_LIVE_JS)
