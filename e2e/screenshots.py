"""Write docs/img/live.png, reconnecting.png and suspended.png from a real run.

Run with `python -m e2e.screenshots` (or `make screenshots`): starts the server on a free port with the
e2e timings, signs in as alice in Debian's Chromium, then SIGKILLs the server to show the degraded states.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from .harness import CHROMIUM, CHROMIUM_ARGS, ROOT, Api, DashboardServer, pick_move
from .pages import events, login_live, status

OUT = ROOT / "docs" / "img"
VIEWPORT = {"width": 1440, "height": 900}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # a longer reconnect phase than the tests, so the reconnecting state can be captured calmly
        server = DashboardServer(
            Path(tmp),
            env={"DASHBOARD_RECONNECT_BASE_MS": "1500", "DASHBOARD_RECONNECT_MAX_MS": "3000"},
        )
        server.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport=VIEWPORT)
                expect.set_options(timeout=15_000)
                login_live(page, server)
                api = Api(server.url)
                for _ in range(3):
                    story, to = pick_move(api.stories("apollo"))
                    api.move_story(story["id"], to)
                api.create_escalation("apollo", "Payments sandbox credentials expired")
                api.close()
                expect(events(page, "story.status.changed")).to_have_count(3)
                expect(page.get_by_test_id("escalation").first).to_be_visible()
                page.mouse.move(0, 0)
                page.screenshot(path=str(OUT / "live.png"))

                server.kill()
                expect(status(page)).to_have_attribute("data-state", "reconnecting")
                expect(status(page)).not_to_have_attribute("data-attempt", "0")
                page.screenshot(path=str(OUT / "reconnecting.png"))

                expect(status(page)).to_have_attribute("data-state", "suspended", timeout=30_000)
                page.screenshot(path=str(OUT / "suspended.png"))
                browser.close()
        finally:
            server.stop()
    for name in ("live", "reconnecting", "suspended"):
        print("wrote", OUT / f"{name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
