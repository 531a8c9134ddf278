"""`client.presenter`: labels, freshness, banners and HTML for the dashboard page."""

import re

from client import presenter


def to_wall(monotonic_ms):
    return None if monotonic_ms is None else 1_764_000_000_000 + monotonic_ms


def test_clock_formats_local_time_from_epoch_ms_and_offset():
    epoch = 1_764_079_392_000  # 2025-11-25 14:03:12 UTC
    assert presenter.clock(epoch) == "14:03:12"
    assert presenter.clock(epoch, tz_offset_min=-60) == "15:03:12"  # UTC+1
    assert presenter.clock(epoch, tz_offset_min=300) == "09:03:12"  # UTC-5
    assert presenter.clock(None) == "--:--:--"


def test_badge_while_live_offers_no_retry():
    badge = presenter.connection_badge({"state": "live", "attempt": 0}, to_wall)
    assert badge == {"state": "live", "attempt": 0, "label": "Live", "detail": "", "retry": False, "closeCode": ""}


def test_badge_while_reconnecting_names_the_attempt_and_next_try():
    next_at = 1_764_079_392_000 - 1_764_000_000_000
    badge = presenter.connection_badge({"state": "reconnecting", "attempt": 3, "nextRetryAt": next_at}, to_wall)
    assert badge["state"] == "reconnecting"
    assert badge["attempt"] == 3
    assert badge["label"] == "Reconnecting · attempt 3"
    assert badge["detail"] == "next try at 14:03:12"
    assert badge["retry"] is True


def test_badge_carries_the_last_close_code():
    badge = presenter.connection_badge({"state": "reconnecting", "attempt": 1, "closeCode": 1012}, to_wall)
    assert badge["closeCode"] == "1012"


def test_badge_suspended_offers_retry_and_auth_required_does_not():
    assert presenter.connection_badge({"state": "suspended", "attempt": 3}, to_wall)["retry"] is True
    auth = presenter.connection_badge({"state": "auth-required", "attempt": 0}, to_wall)
    assert auth["retry"] is False
    assert auth["label"] == "Sign-in needed"


def test_freshness_is_live_or_the_last_live_time():
    assert presenter.freshness({"state": "live"}, 123) == "Live"
    assert presenter.freshness({"state": "reconnecting"}, 1_764_079_392_000) == "Data as of 14:03:12"
    assert presenter.freshness({"state": "offline"}, None) == "No data yet"


def test_banner_only_when_degraded():
    assert presenter.banner({"state": "live"}, to_wall) is None
    assert presenter.banner({"state": "connecting"}, to_wall) is None
    suspended = presenter.banner({"state": "suspended", "attempt": 3}, to_wall)
    assert suspended["retry"] is True and "retries are paused" in suspended["text"]
    offline = presenter.banner({"state": "offline"}, to_wall)
    assert offline["retry"] is False and "offline" in offline["text"]
    assert presenter.banner({"state": "auth-required"}, to_wall)["retry"] is False


def test_project_cards_escape_and_carry_test_attributes():
    projects = [
        {"id": "apollo", "name": "Apollo <x>", "description": "a & b", "counts": {"todo": 2, "openEscalations": 1}},
        {"id": "borealis", "name": "Borealis", "counts": {}},
    ]
    html = presenter.project_cards_html(projects, selected_id="borealis")
    assert re.findall(r'data-testid="project-card"[^>]*data-project-id="(\w+)"', html) == ["apollo", "borealis"]
    assert "Apollo &lt;x&gt;" in html and "a &amp; b" in html and "<x>" not in html
    assert '<b>2</b> To do' in html and '<b>1</b> open escalation<' in html
    assert html.count('aria-pressed="true"') == 1


def test_board_puts_each_story_in_its_status_column_with_a_move_select():
    stories = [
        {"id": 12, "title": "Login", "status": "review", "assignee": "alice"},
        {"id": 3, "title": "Logout", "status": "todo"},
        {"id": 4, "title": "Search", "status": "todo"},
    ]
    html = presenter.board_html(stories, pending_ids=[12])
    columns = re.findall(r'data-column="(\w+)"', html)
    assert columns == list(presenter.STATUSES)
    todo = html.split('data-column="todo"')[1].split('data-column="in_progress"')[0]
    assert re.findall(r'data-story-id="(\d+)" data-status', todo) == ["3", "4"]
    review = html.split('data-column="review"')[1].split('data-column="done"')[0]
    assert 'class="story pending" data-pending="true" data-testid="story" data-story-id="12" data-status="review"' in review
    assert '<option value="review" selected>Review</option>' in review
    assert html.count("<select") == 3


def test_escalations_open_first_with_resolve_button_unless_pending():
    escalations = [
        {"id": 1, "title": "Old", "status": "resolved", "createdBy": "bob", "createdAt": 1},
        {"id": 2, "title": "Key", "status": "open", "createdBy": "alice", "createdAt": 2},
        {"id": 3, "title": "Quota", "status": "open", "createdBy": "alice", "createdAt": 3},
    ]
    html = presenter.escalations_html(escalations, pending_ids=[2])
    assert re.findall(r'data-escalation-id="(\d+)" data-status="(\w+)"', html) == [
        ("3", "open"),
        ("2", "open"),
        ("1", "resolved"),
    ]
    assert re.findall(r'data-action="resolve-escalation"\s+data-escalation-id="(\d+)"', html) == ["3"]
    assert "No escalations" in presenter.escalations_html([])


def test_event_item_describes_a_story_move():
    event = {
        "type": "event",
        "eventType": "story.status.changed",
        "projectId": "apollo",
        "seq": 42,
        "epoch": "e1",
        "timestamp": 1_764_079_392_000,
        "data": {"storyId": 7, "from": "todo", "to": "review", "story": {"id": 7, "title": "Fix <bug>"}},
    }
    html = presenter.event_item_html(event)
    assert 'data-testid="event-item"' in html and 'data-seq="42"' in html
    assert "Story moved" in html and "#7 Fix &lt;bug&gt;: To do → Review" in html
    assert "<time>14:03:12</time>" in html


def test_mutation_error_text_says_what_failed_and_where_the_story_is():
    record = {"id": "m1", "kind": "move_story", "ok": False, "status": 500, "error": "internal", "rolledBack": True}
    intent = {"kind": "move_story", "story_id": 7, "from": "todo", "to": "done"}
    text = presenter.mutation_error_text(record, intent)
    assert text == "Could not move story #7 to Done: the server answered 500 (internal). It is back in To do."
    forbidden = dict(record, status=403, error="forbidden")
    assert "not allowed" in presenter.mutation_error_text(forbidden, intent)
    offline = dict(record, status=0, kind="create_escalation")
    assert presenter.mutation_error_text(offline) == (
        "Could not raise the escalation: the server could not be reached."
    )


def test_project_update_summarises_the_counts():
    event = {
        "eventType": "project.updated",
        "projectId": "apollo",
        "data": {"project": {"id": "apollo", "name": "Apollo", "counts": {"todo": 1, "done": 0, "openEscalations": 2}}},
    }
    assert presenter.event_summary(event) == "Apollo: 1 to do, 2 open escalations"


def test_escalation_being_sent_is_marked_and_cannot_be_resolved_yet():
    placeholder = {"id": "mabc-1", "title": "Quota", "status": "open", "createdAt": None, "pending": True}
    html = presenter.escalations_html([placeholder])
    assert "sending…" in html and 'class="escalation open pending"' in html
    assert "resolve-escalation" not in html


def test_project_picker_options_summarise_each_project_for_phones():
    projects = [
        {"id": "apollo", "name": "Apollo <x>", "counts": {"blocked": 1, "openEscalations": 2}},
        {"id": "borealis", "name": "Borealis", "counts": {}},
    ]
    html = presenter.project_options_html(projects, selected_id="borealis")
    assert re.findall(r'<option value="(\w+)"', html) == ["apollo", "borealis"]
    assert "Apollo &lt;x&gt; · 1 blocked · 2 open escalations" in html
    assert '<option value="borealis" selected>Borealis</option>' in html
    assert presenter.project_options_html(projects).startswith('<option value="" selected>Pick a project</option>')
    assert presenter.project_options_html([]) == '<option value="">No projects yet</option>'


def test_every_control_on_the_board_and_escalations_has_a_name_that_says_what_it_acts_on():
    board = presenter.board_html([{"id": 7, "title": "Fix <bug>", "status": "todo"}])
    assert 'aria-label="Move story #7: Fix &lt;bug&gt;"' in board
    assert '<h4 class="story-title">Fix &lt;bug&gt;</h4>' in board  # a heading per card, under the column's h3
    assert '>1<span class="visually-hidden"> story</span>' in board
    assert '>0<span class="visually-hidden"> stories</span>' in board
    esc = presenter.escalations_html([{"id": 2, "title": "Key", "status": "open", "createdAt": 2}])
    assert 'Resolve<span class="visually-hidden">: Key</span></button>' in esc
