"""axe-core for the browser suite: injected into the page under test only (it is a devDependency from
`package-lock.json`; the server never serves it, `tests/test_page.py` checks), then run on the whole page."""

from __future__ import annotations

from functools import cache

from playwright.sync_api import Page

from .harness import ROOT

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")


@cache
def _axe_source() -> str:
    assert AXE.is_file(), f"{AXE} is missing: run `make setup` (npm ci)"
    return AXE.read_text()


def inject_axe(page: Page) -> None:
    """Load axe into the current document. `evaluate` runs through DevTools, so the page's
    Content-Security-Policy (no inline scripts from us) does not apply to it."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(_axe_source() + "\n;void 0")


def serious_violations(page: Page) -> list[str]:
    """Every axe violation of impact serious or critical on the page as it is now, one line each."""
    inject_axe(page)
    result = page.evaluate(
        """async () => {
          const r = await axe.run(document, {resultTypes: ["violations"]});
          return r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map((n) => n.target.join(" ") + (n.failureSummary ? " — " + n.failureSummary.split("\\n").slice(1).join(" ") : ""))}));
        }"""
    )
    return [
        f"{v['impact']} {v['id']} ({v['help']}): " + " | ".join(v["nodes"][:5])
        for v in result
        if v["impact"] in BLOCKING
    ]
