"""Query cache: tuple keys -> entries with reducer-style states, stale flags and observers.

Call `watch(key, listener, now)` to observe a key (a fetch starts when the entry has no fresh data),
`invalidate(prefix, now)` when something changed on the server (burst-coalesced: watched keys are
refetched once per `coalesce_ms`), `apply(key, patch, now)` to fold a complete event payload into the
cached data, `add_overlay`/`remove_overlay` for optimistic updates, and `on_response(...)` when a fetch
issued through the `request(key, path, seq, now)` callback completes. `get_timer()`/`handle_timer(now)`
drive the coalescing flush, like the connection machine.

Ordering rules: every fetch gets a sequence number; a response older than the data already applied
is dropped, and event patches that arrived while a fetch was in flight are re-applied on top of its
response, so neither a slow response nor a burst of events can roll the data back.
"""

IDLE = "idle"
LOADING = "loading"
SUCCESS = "success"
ERROR = "error"

DEFAULT_COALESCE_MS = 250

_SAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~"


def quote(segment):
    """Percent-encode one path segment (urllib.parse is not available everywhere)."""
    out = []
    for ch in str(segment):
        if ch in _SAFE:
            out.append(ch)
        else:
            for byte in ch.encode():
                out.append("%" + "0123456789ABCDEF"[byte >> 4] + "0123456789ABCDEF"[byte & 15])
    return "".join(out)


def key_path(key):
    """REST path for a query key, or None for a key this client cannot fetch."""
    if key == ("projects",):
        return "/api/projects"
    if len(key) == 2:
        pid = quote(key[1])
        if key[0] == "project":
            return "/api/projects/" + pid
        if key[0] == "stories":
            return "/api/projects/" + pid + "/stories"
        if key[0] == "escalations":
            return "/api/projects/" + pid + "/escalations"
    return None


def matches(key, prefix):
    return tuple(key[: len(prefix)]) == tuple(prefix)


class Entry:
    """What a listener receives: state, data, stale, error, updated_at, fetching, key."""

    __slots__ = (
        "key", "state", "data", "base", "error", "stale", "fetching", "updated_at", "as_of", "observers",
        "issued", "issued_at", "applied", "invalid_mark", "overlays", "patches", "_last",
    )

    def __init__(self, key):
        self.key = key
        self.state = IDLE
        self.data = None  # base with optimistic overlays applied: what the UI shows
        self.base = None  # last server truth (fetch response + event patches)
        self.error = None
        self.stale = False
        self.fetching = False
        self.updated_at = None  # when data last changed
        self.as_of = None  # when the request behind the base data was issued
        self.observers = []
        self.issued = 0  # seq of the newest fetch issued
        self.issued_at = None
        self.applied = 0  # seq of the newest response applied
        self.invalid_mark = -1  # fetches with seq > mark were issued after the last invalidation
        self.overlays = []  # [[mutation id, fn, expire mark or None]]
        self.patches = []  # [(mark, fn)] events that arrived while a fetch was in flight
        self._last = None

    def snapshot(self):
        return {"key": self.key, "state": self.state, "data": self.data, "stale": self.stale, "error": self.error, "updatedAt": self.updated_at, "fetching": self.fetching}


class QueryCache:
    __slots__ = ("_entries", "_order", "_request", "_report", "_pending", "_flush_at", "coalesce_ms", "_seq", "refetches")

    def __init__(self, request, coalesce_ms=DEFAULT_COALESCE_MS, report=None):
        self._entries = {}
        self._order = []  # keys in creation order (deterministic iteration on MicroPython)
        self._request = request
        self._report = report
        self._pending = []
        self._flush_at = None
        self.coalesce_ms = coalesce_ms
        self._seq = 0
        self.refetches = 0

    # ------------------------------------------------------------------ lookup
    def get(self, key):
        return self._entries.get(tuple(key))

    def entry(self, key):
        key = tuple(key)
        entry = self._entries.get(key)
        if entry is None:
            entry = Entry(key)
            self._entries[key] = entry
            self._order.append(key)
        return entry

    def keys(self, prefix=()):
        return [k for k in self._order if matches(k, prefix)]

    # ------------------------------------------------------------------ observers
    def watch(self, key, listener, now):
        """Observe `key`: listener(entry) now and on every change. Returns unsubscribe()."""
        entry = self.entry(key)
        entry.observers.append(listener)
        self._call(listener, entry)
        if entry.state == IDLE or entry.state == ERROR or (entry.stale and entry.issued <= entry.invalid_mark):
            if not entry.fetching or entry.stale:
                self.fetch(entry.key, now)

        def unsubscribe():
            if listener in entry.observers:
                entry.observers.remove(listener)

        return unsubscribe

    def _call(self, listener, entry):
        try:
            listener(entry)
        except Exception as exc:
            if self._report is not None:
                self._report(exc)

    def _notify(self, entry):
        sig = (entry.state, entry.stale, entry.fetching, entry.error)
        last = entry._last
        if last is not None and last[0] == sig and last[1] == entry.data:
            return
        entry._last = (sig, entry.data)
        for listener in list(entry.observers):
            self._call(listener, entry)

    # ------------------------------------------------------------------ fetching
    def fetch(self, key, now):
        """Issue a fetch for `key` now (returns its seq, or None if the key has no REST path)."""
        entry = self.entry(key)
        path = key_path(entry.key)
        if path is None:
            return None
        self._seq += 1
        entry.issued = self._seq
        entry.issued_at = now
        entry.fetching = True
        if entry.base is None:
            entry.state = LOADING
        self._request(entry.key, path, self._seq, now)
        self._notify(entry)
        return self._seq

    def on_response(self, key, seq, ok, data, error, now, requested_at=None):
        """Result of fetch `seq`. ok=False keeps the previous data and sets state error."""
        entry = self._entries.get(tuple(key))
        if entry is None:
            return False
        if seq >= entry.issued:
            entry.fetching = False
        if seq <= entry.applied:
            self._notify(entry)
            return False  # older than what is shown: never roll back
        if not ok:
            if seq >= entry.issued:
                entry.state = ERROR
                entry.error = error
            self._notify(entry)
            return False
        base = data
        keep = []
        for mark, fn in entry.patches:
            if mark >= seq:
                base = fn(base)
            if mark > seq:
                keep.append((mark, fn))
        entry.patches = keep
        entry.overlays = [o for o in entry.overlays if o[2] is None or seq <= o[2]]
        entry.base = base
        entry.applied = seq
        entry.as_of = requested_at
        entry.state = SUCCESS
        entry.error = None
        if seq > entry.invalid_mark:
            entry.stale = False
        self._recompute(entry, now)
        return True

    # ------------------------------------------------------------------ invalidation
    def invalidate(self, prefix, now, before=None):
        """Mark matching entries stale; watched ones are refetched at the next flush (coalesced).

        `before`: only entries whose newest fetch was issued at or before that time (None: all).
        Returns the keys marked."""
        marked = []
        for key in self._order:
            if not matches(key, prefix):
                continue
            entry = self._entries[key]
            if before is not None and (entry.issued_at is None or entry.issued_at > before):
                continue
            entry.invalid_mark = self._seq
            entry.stale = True
            marked.append(key)
            if key not in self._pending:
                self._pending.append(key)
            self._notify(entry)
        if self._pending and self._flush_at is None:
            self._flush_at = now + self.coalesce_ms
        return marked

    def refetch_errors(self, now):
        """Watched entries in state error get another fetch (called when the link is back)."""
        for key in self._order:
            entry = self._entries[key]
            if entry.state == ERROR and entry.observers and not entry.fetching:
                self.fetch(key, now)

    def get_timer(self):
        return self._flush_at

    def handle_timer(self, now):
        if self._flush_at is None or now < self._flush_at:
            return
        self.flush(now)

    def flush(self, now):
        """Refetch every pending key that is watched and not already being refetched."""
        pending, self._pending = self._pending, []
        self._flush_at = None
        for key in pending:
            entry = self._entries.get(key)
            if entry is None or not entry.observers or not entry.stale:
                continue
            if entry.issued > entry.invalid_mark:
                continue  # a fetch issued after the invalidation is already on its way
            self.refetches += 1
            self.fetch(key, now)

    # ------------------------------------------------------------------ direct writes
    def apply(self, key, fn, now):
        """Fold an event into the base data: fn(old_base) -> new_base (must not mutate old_base)."""
        entry = self._entries.get(tuple(key))
        if entry is None:
            return False
        if entry.issued > entry.applied:
            entry.patches.append((entry.issued, fn))
        if entry.base is None:
            return False
        entry.base = fn(entry.base)
        self._recompute(entry, now)
        return True

    def add_overlay(self, key, mutation_id, fn, now):
        entry = self.entry(key)
        entry.overlays.append([mutation_id, fn, None])
        self._recompute(entry, now)

    def expire_overlay(self, key, mutation_id):
        """Keep the overlay until a response to a fetch issued after now is applied (no flicker)."""
        entry = self._entries.get(tuple(key))
        if entry is None:
            return
        for overlay in entry.overlays:
            if overlay[0] == mutation_id:
                overlay[2] = self._seq

    def remove_overlay(self, key, mutation_id, now):
        entry = self._entries.get(tuple(key))
        if entry is None:
            return False
        kept = [item for item in entry.overlays if item[0] != mutation_id]
        if len(kept) == len(entry.overlays):
            return False
        entry.overlays = kept
        self._recompute(entry, now)
        return True

    def _recompute(self, entry, now):
        data = entry.base
        if data is not None:
            for overlay in entry.overlays:
                data = overlay[1](data)
        if data != entry.data:
            entry.updated_at = now
        entry.data = data
        self._notify(entry)
