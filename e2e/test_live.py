"""Cold start, sign-in and live updates on a healthy network (MicroPython and Pyodide)."""

import re
import sqlite3

from playwright.sync_api import expect

from .harness import pick_move
from .pages import BOOT_TIMEOUT_MS, events, login_live, only_localhost, open_dashboard, sign_in, status, story


def test_cold_start_signs_in_goes_live_and_shows_only_own_projects(page, server, requests_seen):
    open_dashboard(page, server.url)
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(status(page)).not_to_have_attribute("data-state", "live")
    sign_in(page, "alice")
    expect(status(page)).to_have_attribute("data-state", "live")
    expect(page.get_by_test_id("freshness")).to_have_text("Live")
    cards = page.get_by_test_id("project-card")
    expect(cards).to_have_count(2)
    assert sorted(cards.evaluate_all("els => els.map(e => e.dataset.projectId)")) == ["apollo", "borealis"]
    expect(page.get_by_test_id("story").first).to_be_visible()
    assert any(url.endswith("/vendor/micropython/micropython.wasm") for url in requests_seen)
    assert only_localhost(requests_seen) == []


def test_other_user_sees_only_their_project(page, server):
    login_live(page, server, "bob")
    cards = page.get_by_test_id("project-card")
    expect(cards).to_have_count(1)
    expect(cards).to_have_attribute("data-project-id", "cassini")


def test_wrong_password_shows_an_error_and_stays_signed_out(page, server):
    open_dashboard(page, server.url)
    sign_in(page, "alice", "not-the-password")
    expect(page.get_by_test_id("login-error")).to_be_visible()
    expect(page.get_by_test_id("login-error")).to_contain_text("Wrong username or password")
    expect(page.get_by_test_id("login-form")).to_be_visible()
    expect(status(page)).not_to_have_attribute("data-state", "live")


def test_change_by_another_client_appears_without_reload(page, server, api):
    login_live(page, server)
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    target, to = pick_move(api.stories("apollo"))
    expect(story(page, target["id"])).to_have_attribute("data-status", target["status"])

    api.move_story(target["id"], to)
    expect(story(page, target["id"])).to_have_attribute("data-status", to)
    expect(events(page, "story.status.changed")).to_have_count(1)

    api.create_escalation("apollo", "Payments sandbox credentials expired")
    raised = page.get_by_test_id("escalation").filter(has_text="Payments sandbox credentials expired")
    expect(raised).to_have_attribute("data-status", "open")
    expect(events(page, "escalation.created")).to_have_count(1)
    assert navigations == []


def test_move_and_escalation_from_the_page_reach_the_server(page, server, api):
    login_live(page, server)
    target, to = pick_move(api.stories("apollo"))
    story(page, target["id"]).locator("select").select_option(to)
    expect(story(page, target["id"])).to_have_attribute("data-status", to)
    expect(story(page, target["id"])).not_to_have_class(re.compile(r"\bpending\b"))
    assert {s["id"]: s["status"] for s in api.stories("apollo")}[target["id"]] == to

    form = page.get_by_test_id("escalation-form")
    form.locator('input[name="title"]').fill("Need a reviewer for the refund flow")
    form.locator('button[type="submit"]').click()
    raised = page.get_by_test_id("escalation").filter(has_text="Need a reviewer for the refund flow")
    expect(raised).to_have_attribute("data-status", "open")
    expect(raised).to_have_attribute("data-escalation-id", re.compile(r"^\d+$"))
    raised.get_by_role("button", name="Resolve").click()
    expect(raised).to_have_attribute("data-status", "resolved")


def test_pyodide_cold_start(page, server, requests_seen):
    open_dashboard(page, server.url, "?runtime=pyodide", timeout_ms=BOOT_TIMEOUT_MS * 2)
    expect(page.locator("html")).to_have_attribute("data-runtime", "pyodide")
    sign_in(page, "alice")
    expect(status(page)).to_have_attribute("data-state", "live")
    expect(page.get_by_test_id("project-card")).to_have_count(2)
    expect(page.get_by_test_id("story").first).to_be_visible()
    assert any(url.endswith("/vendor/pyodide/pyodide.asm.wasm") for url in requests_seen)
    assert not any("micropython" in url for url in requests_seen)
    assert only_localhost(requests_seen) == []


def test_signed_in_reload_starts_its_reads_before_python_and_makes_each_once(page, server):
    login_live(page, server)
    seen: list[tuple[str, str]] = []
    page.on("request", lambda req: seen.append((req.method, req.url.replace(server.url, ""))))
    warnings: list[str] = []
    page.on("console", lambda msg: warnings.append(msg.text) if msg.type in ("warning", "error") else None)
    page.add_init_script(
        "window.addEventListener('mpy:ready', () => { window.__mpyReadyAt ??= performance.now(); }, true);")
    page.reload()
    expect(status(page)).to_have_attribute("data-state", "live", timeout=BOOT_TIMEOUT_MS)
    expect(page.get_by_test_id("story").first).to_be_visible()
    paths = [path for method, path in seen if method == "GET"]
    # index.html made these two reads itself, before MicroPython was even ready; Python took them.
    assert paths.count("/api/config") == 1 and paths.count("/api/projects") == 1
    started, ready = page.evaluate(
        "() => [performance.getEntriesByName(location.origin + '/api/projects')[0].startTime, window.__mpyReadyAt]")
    assert ready is not None and started < ready
    # Every preloaded file was used by PyScript: a preload it could not use would be fetched twice.
    client_files = [path for path in paths if path.startswith("/web/mpy/client/")]  # MicroPython: bytecode
    assert len(client_files) == len(set(client_files)) >= 17
    assert paths.count("/vendor/micropython/micropython.wasm") == 1
    assert [w for w in warnings if "preload" in w.lower()] == []


def test_revoked_membership_takes_the_project_off_an_open_page(page, server):
    login_live(page, server)  # alice: apollo (open) and borealis
    expect(page.get_by_test_id("project-card")).to_have_count(2)
    with sqlite3.connect(server.workdir / "dashboard.db") as db:  # an administrator edits the database meanwhile
        db.execute("DELETE FROM memberships WHERE user_id = 'alice' AND project_id = 'apollo'")
    # At its next ping (1 s here) the server drops the subscription and says `forbidden`; the page refetches.
    cards = page.get_by_test_id("project-card")
    expect(cards).to_have_count(1)
    expect(cards).to_have_attribute("data-project-id", "borealis")
    expect(cards).to_have_attribute("aria-pressed", "true")  # the next project is opened instead
    expect(page.get_by_test_id("story").first).to_be_visible()
    expect(status(page)).to_have_attribute("data-state", "live")  # the connection itself lives on
