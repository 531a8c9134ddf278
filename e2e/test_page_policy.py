"""The page runs under its strict Content-Security-Policy (no 'unsafe-inline', 'unsafe-eval' only for Pyodide)
with no violation, and fetches nothing from another origin, in both runtimes."""

import pytest
from playwright.sync_api import expect

from .pages import BOOT_TIMEOUT_MS, login_live, only_localhost, status

RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push({directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample});
});
"""


@pytest.mark.parametrize("query", ["", "?runtime=pyodide"], ids=["micropython", "pyodide"])
def test_both_runtimes_start_under_the_policy_without_a_violation(page, server, requests_seen, query):
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.add_init_script(RECORD_VIOLATIONS)
    response = page.goto(server.url + "/" + query)
    policy = response.headers["content-security-policy"]
    assert "'unsafe-inline'" not in policy
    assert ("'unsafe-eval'" in policy) == (query == "?runtime=pyodide")
    login_live(page, server, query=query, boot_ms=BOOT_TIMEOUT_MS * 2)
    expect(status(page)).to_have_attribute("data-state", "live")
    status(page).click()  # the details panel renders too
    expect(page.get_by_test_id("connection-details")).to_be_visible()
    assert page.evaluate("window.__cspViolations") == []
    assert [e for e in errors if "Content Security Policy" in e or "Refused to" in e] == []
    assert only_localhost(requests_seen) == []
