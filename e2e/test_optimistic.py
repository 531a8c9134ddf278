"""Optimistic story moves: shown at once, rolled back with a visible message when the server refuses."""

import re

import pytest
from playwright.sync_api import expect

from .harness import pick_move
from .pages import login_live, status, story

REFUSALS = [
    (500, {"error": "internal", "message": "database unavailable"}, "server answered 500"),
    (403, {"error": "forbidden", "message": "not a member"}, "not allowed"),
]


@pytest.mark.parametrize("code,body,says", REFUSALS, ids=["500", "403"])
def test_refused_move_is_rolled_back_with_a_message(page, server, api, code, body, says):
    held = []

    def hold_patch(route):
        if route.request.method == "PATCH":
            held.append(route)
        else:
            route.continue_()

    page.route(re.compile(r".*/api/stories/\d+$"), hold_patch)
    login_live(page, server)
    target, to = pick_move(api.stories("apollo"))
    card = story(page, target["id"])
    card.locator("select").select_option(to)

    # optimistic: moved at once, while the request is still held
    expect(card).to_have_attribute("data-status", to)
    expect(page.locator(f'[data-column="{to}"] [data-testid="story"][data-story-id="{target["id"]}"]')).to_have_count(1)
    for _ in range(100):  # the route handler runs while Playwright pumps events
        if held:
            break
        page.wait_for_timeout(50)
    assert len(held) == 1
    assert held[0].request.headers.get("x-client-mutation-id")

    held[0].fulfill(status=code, json=body)
    notice = page.get_by_test_id("notice")
    expect(notice).to_be_visible()
    expect(notice).to_contain_text(f"Could not move story #{target['id']}")
    expect(notice).to_contain_text(says)
    expect(card).to_have_attribute("data-status", target["status"])
    expect(page.locator(f'[data-column="{target["status"]}"] [data-testid="story"][data-story-id="{target["id"]}"]')).to_have_count(1)
    expect(status(page)).to_have_attribute("data-state", "live")
    assert {s["id"]: s["status"] for s in api.stories("apollo")}[target["id"]] == target["status"]
