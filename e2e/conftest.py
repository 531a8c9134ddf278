"""Fixtures for the browser suite: Debian's Chromium for pytest-playwright, a killable server, REST clients.

Each test gets its own `server` (fresh database, free port, scaled-down timings); a test can change
timings with `@pytest.mark.server_env(NAME="value")`. pytest-playwright shares one Chromium process
for the whole session and gives each test a fresh context and page.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
from playwright.sync_api import expect

from .harness import CHROMIUM, CHROMIUM_ARGS, Api, DashboardServer, end_process, free_port, wait_until
from .pages import UI_TIMEOUT_MS
from .wslog import WsLog


def pytest_configure(config):
    config.addinivalue_line("markers", "server_env(**env): DASHBOARD_* overrides for the e2e server")


@pytest.fixture(scope="session")
def base_url():
    """Each test has its own server URL; this also shadows pytest-base-url's deprecated fixture."""
    return None


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    """The page registers a service worker (web/sw.js) that answers its GETs, and Playwright's routes do not see what
    a service worker fetches: the fault tests block it; e2e/test_offline_changes.py allows it."""
    return {**browser_context_args, "service_workers": "block"}


@pytest.fixture(scope="session", autouse=True)
def _expect_timeout():
    expect.set_options(timeout=UI_TIMEOUT_MS)


@pytest.fixture
def server(request, tmp_path):
    marker = request.node.get_closest_marker("server_env")
    env = dict(marker.kwargs) if marker else {}
    srv = DashboardServer(tmp_path / "server", env=env)
    srv.start()
    yield srv
    srv.stop()
    print("---- server log (shown when the test failed) ----\n" + srv.log_tail())


@pytest.fixture
def api(server):
    client = Api(server.url, "alice")
    yield client
    client.close()


@pytest.fixture
def requests_seen(context):
    """Every URL the page requests (to prove nothing leaves localhost)."""
    urls: list[str] = []
    context.on("request", lambda req: urls.append(req.url))
    return urls


@pytest.fixture
def console_lines(page):
    lines: list[str] = []
    page.on("console", lambda msg: lines.append(msg.text))
    return lines


def _devtools_ready(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=1) as response:
            return "webSocketDebuggerUrl" in json.loads(response.read())
    except OSError:
        return False


@pytest.fixture
def cdp_browser(playwright, tmp_path):
    """A headless Chromium this test starts itself, attached over CDP. Unlike the browser pytest-playwright
    launches, its pages really get hidden (another tab in front), frozen and resumed, and it keeps the
    back/forward cache (Playwright launches Chromium with `--disable-back-forward-cache`)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={tmp_path / 'profile'}",
            *CHROMIUM_ARGS,
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _devtools_ready(port), 20, message="Chromium DevTools endpoint")
        browser = playwright.chromium.connect_over_cdp(f"http://127.0.0.1:{port}", no_defaults=True)
        yield browser
        browser.close()
    finally:
        end_process(proc)


@pytest.fixture
def ws_log(page):
    """The page's `[WebSocket]` console lines and their structured records (e2e/wslog.py)."""
    return WsLog(page)
