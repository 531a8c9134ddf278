"""Changes made while the connection is not live: the durable, ordered queue and its flush policy (sans-I/O).

A change (move, raise, resolve) is queued when the connection is not live, when older changes still wait (order),
while the change sent before it has no answer yet, or when its request fails without a response (status 0; it then
goes before the changes made after it). The queue is a JSON text the adapter keeps in
`localStorage` under `storage_key(user_id)` = `dashboard.pending.<userId>`; every tab of that user reads it
(`storage` event) and shows the same pending marks, and one tab (the tabs leader) sends it, in order, with the
original `X-Client-Mutation-Id`s (the server answers a repeat from its record, so a change is applied once).

Stored form: `{"v": 1, "entries": [entry, …], "done": [[id, status, current], …]}`. An entry is
`{"id", "kind", "projectId", "target", "value", "seen", "method", "path", "body", "at"}`; `done` remembers the
last settled ids (with the HTTP status, and the server's story for a 409) so tabs that merge their copies never
bring a settled change back and can show its outcome. At most `LIMIT` entries: a change beyond that is refused.
"""

import json

from . import wire

KEY_PREFIX = "dashboard.pending."
LIMIT = 200
DONE_KEPT = 200
VERSION = 1
KINDS = ("move_story", "create_escalation", "resolve_escalation")
RETRY_BASE_MS = 1000
RETRY_MAX_MS = 30000

# outcomes of one send (`verdict`)
OK = "ok"
RETRY = "retry"  # no answer (status 0), 408, 429 or 5xx: sent again later with the same id
WAIT = "wait"  # 401: kept, sent once signed in again
CONFLICT = "conflict"  # 409: dropped, the server's story replaces ours
DROP = "drop"  # 403, 404, 422 and other refusals: dropped with a message


def storage_key(user_id):
    """The `localStorage` key of one user's queue."""
    return KEY_PREFIX + str(user_id)


def verdict(status):
    if 200 <= status < 300:
        return OK
    if status == 0 or status == 408 or status == 429 or status >= 500:
        return RETRY
    if status == 401:
        return WAIT
    if status == 409:
        return CONFLICT
    return DROP


def retry_delay(attempt, base_ms=RETRY_BASE_MS, max_ms=RETRY_MAX_MS):
    """Backoff before send number `attempt + 1` after `attempt` failures: base, 2 base, 4 base, … capped."""
    delay = base_ms
    for _ in range(1, attempt):
        delay = delay * 2
        if delay >= max_ms:
            return max_ms
    return delay if delay < max_ms else max_ms


def _valid(entry):
    if not isinstance(entry, dict):
        return False
    return (isinstance(entry.get("id"), str) and entry.get("kind") in KINDS and isinstance(entry.get("projectId"), str)
            and entry.get("method") in ("PATCH", "POST") and isinstance(entry.get("path"), str))


def _at(entry):
    at = entry.get("at")
    return at if isinstance(at, (int, float)) and not isinstance(at, bool) else 0


class PendingQueue:
    """The ordered entries and the recently settled ids; `dumps()`/`loads()` is the stored text."""

    __slots__ = ("entries", "done", "limit")

    def __init__(self, limit=LIMIT):
        self.entries = []
        self.done = []  # [[id, status, current or None]], oldest first
        self.limit = limit

    @property
    def count(self):
        return len(self.entries)

    @property
    def full(self):
        return len(self.entries) >= self.limit

    def ids(self):
        return [e["id"] for e in self.entries]

    def get(self, mid):
        for entry in self.entries:
            if entry["id"] == mid:
                return entry
        return None

    def head(self):
        return self.entries[0] if self.entries else None

    def settled(self, mid):
        for item in self.done:
            if item[0] == mid:
                return item
        return None

    def add(self, entry, in_order=False):
        """Append `entry` (False when the queue is full or the id is known). `in_order`: a change made before some
        already queued (sent straight away, then its answer was lost) goes before the first not older than it."""
        if self.full or self.get(entry["id"]) is not None or self.settled(entry["id"]) is not None:
            return False
        at = _at(entry)
        for i, other in enumerate(self.entries if in_order else ()):
            if _at(other) >= at:
                self.entries.insert(i, entry)
                return True
        self.entries.append(entry)
        return True

    def remove(self, mid, status, current=None):
        """Drop `mid`, remembering how it ended; returns the entry or None."""
        entry = self.get(mid)
        if entry is not None:
            self.entries.remove(entry)
        if self.settled(mid) is None:
            self.done.append([mid, status, current])
            if len(self.done) > DONE_KEPT:
                self.done.pop(0)
        return entry

    def clear(self):
        """Forget everything (sign-out: the changes are discarded)."""
        self.entries = []
        self.done = []

    def dumps(self):
        return json.dumps({"v": VERSION, "entries": self.entries, "done": self.done})

    def merge(self, text):
        """Fold another tab's stored text into ours: entries of both (in time order) minus every settled id.

        Returns (added entries, removed [(entry, status, current)], differs) where `differs` says the result
        is not what `text` holds (so ours should be written back). A missing or empty text (the key was removed:
        sign-out in another tab) discards everything."""
        entries, done = parse(text)
        if entries is None:
            removed = [(e, None, None) for e in self.entries]
            self.clear()
            return [], removed, False
        theirs = [e["id"] for e in entries]
        for item in done:
            if self.settled(item[0]) is None:
                self.done.append(item)
        while len(self.done) > DONE_KEPT:
            self.done.pop(0)
        removed = []
        for entry in list(self.entries):
            item = self.settled(entry["id"])
            if item is not None:
                self.entries.remove(entry)
                removed.append((entry, item[1], item[2]))
        added = []
        for entry in entries:
            if self.get(entry["id"]) is None and self.settled(entry["id"]) is None:
                self.entries.append(entry)
                added.append(entry)
        # time order; ties keep the current order (MicroPython's sort is not stable, hence the index)
        ranked = sorted([(_at(e), i) for i, e in enumerate(self.entries)])
        self.entries = [self.entries[i] for _, i in ranked]
        if len(self.entries) > self.limit:
            self.entries = self.entries[:self.limit]
        # Write back only when their entries differ from ours (a change they lack, or one we know is settled):
        # tombstones of entries they do not hold are not worth a write (and two capped lists could ping-pong).
        differs = self.ids() != theirs
        return added, removed, differs


def parse(text):
    """(entries, done) from a stored text; (None, None) when there is none; malformed parts are skipped."""
    if not isinstance(text, str) or not text:
        return None, None
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        return [], []
    if not isinstance(data, dict) or data.get("v") != VERSION:
        return [], []
    entries = [e for e in (data.get("entries") or []) if _valid(e)] if isinstance(data.get("entries"), list) else []
    done = []
    if isinstance(data.get("done"), list):
        for item in data["done"]:
            if isinstance(item, list) and len(item) == 3 and isinstance(item[0], str):
                done.append(item)
    return entries, done


class Pending:
    """The queue plus who sends it and when: one change in flight at a time, retried with backoff.

    `can_send` is False in a tab that is not the leader (the adapter sets it from the tabs role). The runtime
    asks `next(now, live)` for the entry to send and reports each outcome with `sent_result`."""

    __slots__ = ("queue", "can_send", "inflight", "attempt", "retry_at", "base_ms", "max_ms", "_listeners")

    def __init__(self, limit=LIMIT, base_ms=RETRY_BASE_MS, max_ms=RETRY_MAX_MS):
        self.queue = PendingQueue(limit)
        self.can_send = True
        self.inflight = None
        self.attempt = 0  # failed sends of the head so far
        self.retry_at = None
        self.base_ms = base_ms
        self.max_ms = max_ms
        self._listeners = []

    def on_change(self, listener):
        """listener(text, count) after every change made here (the adapter stores `text`). Returns unsubscribe()."""
        self._listeners.append(listener)

        def unsubscribe():
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def changed(self, report):
        text = self.queue.dumps()
        for listener in list(self._listeners):
            try:
                listener(text, self.queue.count)
            except Exception as exc:
                report(exc)

    def get_timer(self):
        return self.retry_at if self.queue.count and self.inflight is None and self.can_send else None

    def next(self, now, live):
        """The entry to send now, or None (not live, not ours to send, one in flight, backing off, empty)."""
        if not live or not self.can_send or self.inflight is not None:
            return None
        if self.retry_at is not None and now < self.retry_at:
            return None
        entry = self.queue.head()
        if entry is not None:
            self.inflight = entry["id"]
        return entry

    def sent_result(self, mid, status, now):
        """Book the answer to a send of `mid`; returns its verdict (the runtime applies it)."""
        outcome = verdict(status)
        if mid == self.inflight:
            self.inflight = None
        if outcome == RETRY:
            self.attempt += 1
            self.retry_at = now + retry_delay(self.attempt, self.base_ms, self.max_ms)
        elif outcome != WAIT:
            self.attempt = 0
            self.retry_at = None
        return outcome

    def entry_for(self, mutation_id, kind, project_id, target, value, seen, method, path, body, at):
        entry = {"id": mutation_id, "kind": kind, "projectId": project_id, "target": target, "value": value,
                 "seen": seen, "method": method, "path": path, "body": body, "at": at}
        return entry


def body_text(entry):
    """The request body of an entry as sent (None for a body-less request)."""
    body = entry.get("body")
    return None if body is None else wire.dumps(body)
