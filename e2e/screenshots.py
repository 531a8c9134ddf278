"""Write the README's pictures from a real run, at desktop and phone widths.

Run with `python -m e2e.screenshots` (or `make screenshots`): starts the server on a free port with the
e2e timings, signs in as alice in Debian's Chromium on a 1440 x 900 desktop (light), a 390 x 844 phone
(light, touch) and a 390 x 844 phone (dark), makes a few changes from another client, then SIGKILLs the
server to show the degraded states. Files (docs/img/): live.png, reconnecting.png, suspended.png (desktop),
phone-live.png, phone-reconnecting.png, phone-suspended.png, phone-dark.png.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from playwright.sync_api import Page, expect, sync_playwright

from .harness import CHROMIUM, CHROMIUM_ARGS, ROOT, Api, DashboardServer, pick_move
from .pages import events, login_live, status

OUT = ROOT / "docs" / "img"
DESKTOP = {"viewport": {"width": 1440, "height": 900}, "color_scheme": "light"}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


def shoot(page: Page, name: str) -> None:
    page.mouse.move(0, 0)
    page.screenshot(path=str(OUT / f"{name}.png"))
    print("wrote", OUT / f"{name}.png")


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
                expect.set_options(timeout=15_000)
                pages = {
                    "desktop": browser.new_context(**DESKTOP).new_page(),
                    "phone": browser.new_context(**PHONE, color_scheme="light").new_page(),
                    "phone-dark": browser.new_context(**PHONE, color_scheme="dark").new_page(),
                }
                for page in pages.values():
                    login_live(page, server)
                api = Api(server.url)
                for _ in range(3):
                    story, to = pick_move(api.stories("apollo"))
                    api.move_story(story["id"], to)
                api.create_escalation("apollo", "Payments sandbox credentials expired")
                api.close()
                for page in pages.values():
                    expect(events(page, "story.status.changed")).to_have_count(3)
                    expect(page.get_by_test_id("escalation").first).to_be_visible()
                shoot(pages["desktop"], "live")
                shoot(pages["phone"], "phone-live")
                shoot(pages["phone-dark"], "phone-dark")

                server.kill()
                for name, prefix in (("desktop", ""), ("phone", "phone-")):
                    expect(status(pages[name])).to_have_attribute("data-state", "reconnecting")
                    expect(status(pages[name])).not_to_have_attribute("data-attempt", "0")
                    shoot(pages[name], prefix + "reconnecting")
                for name, prefix in (("desktop", ""), ("phone", "phone-")):
                    expect(status(pages[name])).to_have_attribute("data-state", "suspended", timeout=30_000)
                    shoot(pages[name], prefix + "suspended")
                browser.close()
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
