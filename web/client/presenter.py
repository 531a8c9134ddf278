"""View models for the dashboard page: pure functions from runtime data to labels and HTML.

No `js` here: the browser adapter (`client.browser.view`) calls these and writes the result into
the DOM, and `tests/web/test_presenter.py` checks them under CPython. Runs under MicroPython too
(no dataclasses, typing or enum). Times given to these functions are epoch milliseconds plus the
browser's `Date.getTimezoneOffset()` in minutes, so the output is deterministic.
"""

STATUSES = ("todo", "in_progress", "review", "done", "blocked")
STATUS_LABELS = {
    "todo": "To do",
    "in_progress": "In progress",
    "review": "Review",
    "done": "Done",
    "blocked": "Blocked",
}
STATE_LABELS = {
    "idle": "Signed out",
    "connecting": "Connecting…",
    "live": "Live",
    "reconnecting": "Reconnecting",
    "offline": "Offline",
    "suspended": "Paused",
    "auth-required": "Sign-in needed",
}
EVENT_LABELS = {
    "project.updated": "Project updated",
    "story.created": "Story created",
    "story.status.changed": "Story moved",
    "escalation.created": "Escalation raised",
    "escalation.resolved": "Escalation resolved",
}
RETRY_STATES = ("reconnecting", "suspended")


def escape(value):
    """HTML-escape any value (None becomes an empty string)."""
    if value is None:
        return ""
    text = str(value)
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )


def clock(epoch_ms, tz_offset_min=0):
    """`14:03:12` local time for epoch milliseconds; `tz_offset_min` is JS `getTimezoneOffset()`."""
    if epoch_ms is None:
        return "--:--:--"
    seconds = int((epoch_ms - tz_offset_min * 60000) // 1000) % 86400
    return "%02d:%02d:%02d" % (seconds // 3600, (seconds // 60) % 60, seconds % 60)


def _get(mapping, key, default=None):
    if mapping is None:
        return default
    try:
        value = mapping.get(key, default)
    except AttributeError:
        value = getattr(mapping, key, default)
    return default if value is None else value


def connection_badge(status, to_wall, tz_offset_min=0):
    """The header badge: `{"state", "attempt", "label", "detail", "retry", "closeCode"}` from `rt.status`.

    `to_wall(monotonic_ms)` converts the runtime clock to epoch milliseconds.
    """
    state = _get(status, "state", "idle")
    attempt = int(_get(status, "attempt", 0) or 0)
    label = STATE_LABELS.get(state, state)
    detail = ""
    next_at = _get(status, "nextRetryAt")
    if state == "reconnecting":
        label = "Reconnecting · attempt %d" % max(attempt, 1)
        detail = "next try at " + clock(to_wall(next_at), tz_offset_min) if next_at is not None else "trying now"
    elif state == "suspended":
        detail = "next automatic try at " + clock(to_wall(next_at), tz_offset_min) if next_at is not None else ""
    elif state == "offline":
        detail = "waiting for the network"
    close_code = _get(status, "closeCode")
    return {
        "state": state,
        "attempt": attempt,
        "label": label,
        "detail": detail,
        "retry": state in RETRY_STATES,
        "closeCode": "" if close_code is None else str(close_code),
    }


def freshness(status, data_as_of_wall, tz_offset_min=0):
    """`Live` while live, otherwise `Data as of 14:03:12` (or a hint when nothing loaded yet)."""
    state = _get(status, "state", "idle")
    if state == "live":
        return "Live"
    if data_as_of_wall is None:
        return "No data yet"
    return "Data as of " + clock(data_as_of_wall, tz_offset_min)


def banner(status, to_wall, tz_offset_min=0):
    """The message under the header for a degraded connection, or None while all is well."""
    state = _get(status, "state", "idle")
    attempt = int(_get(status, "attempt", 0) or 0)
    next_at = _get(status, "nextRetryAt")
    when = clock(to_wall(next_at), tz_offset_min) if next_at is not None else None
    if state == "reconnecting":
        text = "Connection lost. Reconnecting (attempt %d)" % max(attempt, 1)
        text += ", next try at %s." % when if when else "…"
        return {"kind": "warn", "text": text + " What you see may be out of date.", "retry": True}
    if state == "suspended":
        text = "The server could not be reached after repeated attempts, so automatic retries are paused"
        text += " (next try at %s)." % when if when else "."
        return {"kind": "error", "text": text + " Press Retry once the server is back.", "retry": True}
    if state == "offline":
        text = "You are offline. The dashboard reconnects as soon as the network is back."
        return {"kind": "warn", "text": text, "retry": False}
    if state == "auth-required":
        return {"kind": "error", "text": "Your session has ended. Please sign in again.", "retry": False}
    return None


def counts_html(counts):
    counts = counts or {}
    chips = []
    for status in STATUSES:
        chips.append(
            '<span class="chip chip-%s" title="%s"><b>%d</b> %s</span>'
            % (status, STATUS_LABELS[status], int(counts.get(status, 0) or 0), STATUS_LABELS[status])
        )
    open_esc = int(counts.get("openEscalations", 0) or 0)
    chips.append(
        '<span class="chip chip-escalations%s"><b>%d</b> open escalation%s</span>'
        % (" hot" if open_esc else "", open_esc, "" if open_esc == 1 else "s")
    )
    return "".join(chips)


def project_summary(project):
    """`Apollo · 1 blocked · 2 open escalations`: one line for the compact project picker on phones."""
    counts = project.get("counts") or {}
    parts = [project.get("name") or str(project.get("id"))]
    blocked = int(counts.get("blocked", 0) or 0)
    if blocked:
        parts.append("%d blocked" % blocked)
    open_esc = int(counts.get("openEscalations", 0) or 0)
    if open_esc:
        parts.append("%d open escalation%s" % (open_esc, "" if open_esc == 1 else "s"))
    return " · ".join(parts)


def project_options_html(projects, selected_id=None):
    """`<option>`s of the compact project picker (the select shown instead of the cards on phones)."""
    if not projects:
        return '<option value="">No projects yet</option>'
    parts = []
    if selected_id is None:
        parts.append('<option value="" selected>Pick a project</option>')
    for project in projects:
        pid = project.get("id")
        parts.append(
            '<option value="%s"%s>%s</option>'
            % (escape(pid), " selected" if pid == selected_id else "", escape(project_summary(project)))
        )
    return "".join(parts)


def project_cards_html(projects, selected_id=None):
    """One `project-card` button per project the user may see, selected one marked."""
    if not projects:
        return '<p class="empty">No projects yet.</p>'
    parts = []
    for project in projects:
        pid = project.get("id")
        parts.append(
            '<button type="button" class="project-card%s" data-testid="project-card" data-action="open-project"'
            ' data-project-id="%s" aria-pressed="%s"><span class="project-name">%s</span>'
            '<span class="project-desc">%s</span><span class="chips">%s</span></button>'
            % (
                " selected" if pid == selected_id else "",
                escape(pid),
                "true" if pid == selected_id else "false",
                escape(project.get("name") or pid),
                escape(project.get("description")),
                counts_html(project.get("counts")),
            )
        )
    return "".join(parts)


def story_html(story, pending=False):
    sid = story.get("id")
    status = story.get("status")
    options = "".join(
        '<option value="%s"%s>%s</option>' % (s, " selected" if s == status else "", STATUS_LABELS[s])
        for s in STATUSES
    )
    assignee = story.get("assignee")
    return (
        '<article class="story%s" data-testid="story" data-story-id="%s" data-status="%s">'
        '<h4 class="story-title">%s</h4><div class="story-meta"><span class="story-id">#%s</span>%s</div>'
        '<select name="status" class="story-move" data-action="move-story" data-story-id="%s"'
        ' aria-label="Move story #%s: %s">%s</select></article>'
        % (
            ' pending" data-pending="true' if pending else "",
            escape(sid),
            escape(status),
            escape(story.get("title")),
            escape(sid),
            '<span class="assignee">%s</span>' % escape(assignee) if assignee else "",
            escape(sid),
            escape(sid),
            escape(story.get("title")),
            options,
        )
    )


def _id_key(item):
    value = item.get("id")
    if isinstance(value, int):
        return (0, value, "")
    return (1, 0, str(value))


def board_html(stories, pending_ids=()):
    """Five columns, one per status, each with its stories sorted by id."""
    columns = {s: [] for s in STATUSES}
    for story in stories or []:
        columns.setdefault(story.get("status"), []).append(story)
    parts = []
    for status in STATUSES:
        items = sorted(columns[status], key=_id_key)
        parts.append(
            '<section class="column column-%s" data-column="%s"><div class="column-head"><h3>%s</h3>'
            '<span class="count">%d<span class="visually-hidden"> stor%s</span></span></div>'
            '<div class="column-body">%s</div></section>'
            % (
                status,
                status,
                STATUS_LABELS[status],
                len(items),
                "y" if len(items) == 1 else "ies",
                "".join(story_html(s, s.get("id") in pending_ids) for s in items),
            )
        )
    return "".join(parts)


def escalations_html(escalations, tz_offset_min=0, pending_ids=()):
    """Open escalations first (newest first), then resolved ones."""
    items = list(escalations or [])
    items.sort(key=lambda e: (e.get("status") != "open", -(e.get("createdAt") or 0)))
    if not items:
        return '<li class="empty">No escalations. All clear.</li>'
    parts = []
    for esc in items:
        eid = esc.get("id")
        is_open = esc.get("status") == "open"
        sending = bool(esc.get("pending"))
        action = (
            '<button type="button" class="btn btn-small" data-action="resolve-escalation"'
            ' data-escalation-id="%s">Resolve<span class="visually-hidden">: %s</span></button>'
            % (escape(eid), escape(esc.get("title")))
            if is_open and eid not in pending_ids and not sending
            else ""
        )
        if sending:
            meta = "sending…"
        else:
            meta = "%s · raised by %s at %s" % (
                "open" if is_open else "resolved",
                escape(esc.get("createdBy") or "someone"),
                clock(esc.get("createdAt"), tz_offset_min),
            )
        parts.append(
            '<li class="escalation %s%s" data-testid="escalation" data-escalation-id="%s" data-status="%s">'
            '<span class="esc-dot" aria-hidden="true"></span><div class="esc-body"><div class="esc-title">%s</div>'
            '<div class="esc-meta">%s</div></div>%s</li>'
            % (
                escape(esc.get("status")),
                ' pending" data-pending="true' if eid in pending_ids or sending else "",
                escape(eid),
                escape(esc.get("status")),
                escape(esc.get("title")),
                meta,
                action,
            )
        )
    return "".join(parts)


def event_summary(event):
    """One line describing a server event, e.g. `#12 Login page: To do → Review`."""
    data = event.get("data") or {}
    kind = event.get("eventType")
    if kind == "story.status.changed":
        story = data.get("story") or {}
        return "#%s %s: %s → %s" % (
            data.get("storyId", story.get("id")),
            story.get("title") or "",
            STATUS_LABELS.get(data.get("from"), data.get("from")),
            STATUS_LABELS.get(data.get("to"), data.get("to")),
        )
    if kind == "story.created":
        story = data.get("story") or {}
        return "#%s %s" % (story.get("id"), story.get("title") or "")
    if kind in ("escalation.created", "escalation.resolved"):
        esc = data.get("escalation") or {}
        return esc.get("title") or ""
    if kind == "project.updated":
        project = data.get("project") or {}
        counts = project.get("counts") or {}
        parts = ["%d %s" % (int(counts.get(s) or 0), STATUS_LABELS[s].lower()) for s in STATUSES if counts.get(s)]
        if counts.get("openEscalations"):
            parts.append("%d open escalation%s" % (counts["openEscalations"], "" if counts["openEscalations"] == 1 else "s"))
        name = project.get("name") or project.get("id") or ""
        return name + (": " + ", ".join(parts) if parts else "")
    return ""


def event_item_html(event, tz_offset_min=0):
    """One `<li>` of the live event log."""
    kind = event.get("eventType") or event.get("type") or "event"
    return (
        '<li class="event event-%s" data-testid="event-item" data-event-type="%s" data-project-id="%s"'
        ' data-seq="%s"><time>%s</time><span class="event-project">%s</span><span class="event-kind">%s</span>'
        '<span class="event-text">%s</span></li>'
        % (
            escape(kind.replace(".", "-")),
            escape(kind),
            escape(event.get("projectId")),
            escape(event.get("seq")),
            clock(event.get("timestamp"), tz_offset_min),
            escape(event.get("projectId")),
            escape(EVENT_LABELS.get(kind, kind)),
            escape(event_summary(event)),
        )
    )


def mutation_error_text(record, intent=None):
    """The notice shown when an optimistic change was refused and rolled back."""
    intent = intent or {}
    status = record.get("status")
    reason = record.get("error") or ""
    if status == 403:
        why = "you are not allowed to change it"
    elif status == 401:
        why = "your session has ended"
    elif status == 404:
        why = "it no longer exists"
    elif status == 0 or status is None:
        why = "the server could not be reached"
    else:
        why = "the server answered %s" % status
    if reason and status not in (0, None, 401, 403, 404):
        why += " (%s)" % reason
    kind = record.get("kind") or intent.get("kind")
    if kind == "move_story" or intent.get("kind") == "move_story":
        text = "Could not move story #%s to %s: %s." % (
            intent.get("story_id", "?"),
            STATUS_LABELS.get(intent.get("to"), intent.get("to") or "?"),
            why,
        )
        if record.get("rolledBack", True) and intent.get("from"):
            text += " It is back in %s." % STATUS_LABELS.get(intent.get("from"), intent.get("from"))
        return text
    if kind == "create_escalation":
        return "Could not raise the escalation: %s." % why
    if kind == "resolve_escalation":
        return "Could not resolve the escalation: %s." % why
    return "A change could not be saved: %s." % why


def pending_count_text(count):
    """The header's count of changes waiting to be sent ("" when none)."""
    if not count:
        return ""
    return "%d change%s waiting to be sent" % (count, "" if count == 1 else "s")


def conflict_text(story):
    """The notice when a queued move met a story someone else had moved meanwhile (HTTP 409)."""
    story = story if isinstance(story, dict) else {}
    status = story.get("status")
    return "Story #%s \u201c%s\u201d was moved to %s by someone else meanwhile; your change was not applied." % (
        story.get("id", "?"), story.get("title") or "", STATUS_LABELS.get(status, status or "?"))


def refused_text(record):
    """The notice when a change cannot be queued (the queue is full)."""
    return "Not saved: %s. Reconnect to send them first." % (record.get("error") or "too many changes are waiting")
