"""Desired per-project subscriptions and their resume positions (epoch, last seq).

The registry is the single source of truth for what the client wants: `add()`/`remove()` count
references; `resubscribe_all()` builds one subscribe message per project after every `connected`
(with `since` when a position is known). `on_event()` classifies each event (apply, duplicate, gap,
epoch change) and `on_subscribed()` says whether the project's cached data can be trusted.
"""

from . import wire

APPLY = "apply"  # next in sequence
DUPLICATE = "duplicate"  # seq already seen: drop it
GAP = "gap"  # seq jumped: apply, but the cache for this project must be refetched
EPOCH = "epoch"  # the server's history was lost: apply, refetch
UNKNOWN = "unknown"  # not a project we want: drop it
INVALID = "invalid"  # missing or bad seq/epoch: drop it

PENDING = "pending"  # subscribe sent (or to be sent), no ack yet
SUBSCRIBED = "subscribed"
FORBIDDEN = "forbidden"
RETRY = "retry"  # the server could not subscribe now (`unavailable`): send again at the next heartbeat
RETRYABLE_ERRORS = ("unavailable",)


class ProjectSub:
    """Resume position and status of one project."""

    __slots__ = ("project_id", "refs", "epoch", "seq", "status", "sent_at", "sent_since")

    def __init__(self, project_id):
        self.project_id = project_id
        self.refs = 0
        self.epoch = None
        self.seq = None
        self.status = PENDING
        self.sent_at = None  # when the last subscribe was sent
        self.sent_since = False  # did it carry a resume position?


class Subscriptions:
    """Ordered registry (MicroPython dicts are unordered: the order list keeps sends deterministic)."""

    __slots__ = ("_subs", "_order")

    def __init__(self):
        self._subs = {}
        self._order = []

    def get(self, project_id):
        return self._subs.get(project_id)

    def project_ids(self):
        return list(self._order)

    def add(self, project_id, position=None):
        """Take a reference; True when this is the first (a subscribe must be sent if live).

        `position` (epoch, seq), for a project new here, is where to resume from (another tab applied up to it)."""
        sub = self._subs.get(project_id)
        if sub is None:
            sub = ProjectSub(project_id)
            if position is not None:
                sub.epoch, sub.seq = position[0], position[1]
            self._subs[project_id] = sub
            self._order.append(project_id)
        sub.refs += 1
        return sub.refs == 1

    def remove(self, project_id):
        """Drop a reference; True when it was the last (send unsubscribe if live; position forgotten)."""
        sub = self._subs.get(project_id)
        if sub is None:
            return False
        sub.refs -= 1
        if sub.refs > 0:
            return False
        del self._subs[project_id]
        self._order.remove(project_id)
        return True

    def subscribe_message(self, project_id, now):
        sub = self._subs[project_id]
        sub.status = PENDING
        sub.sent_at = now
        sub.sent_since = sub.epoch is not None and sub.seq is not None
        return wire.subscribe(project_id, sub.epoch, sub.seq)

    def resubscribe_all(self, now):
        """One subscribe text per desired project, in the order they were added."""
        return [self.subscribe_message(pid, now) for pid in self._order]

    def socket_lost(self):
        for pid in self._order:
            if self._subs[pid].status in (SUBSCRIBED, RETRY):
                self._subs[pid].status = PENDING

    def on_event(self, msg):
        """Classify an event frame and advance the position when it is accepted."""
        sub = self._subs.get(msg.get("projectId"))
        if sub is None or sub.status == FORBIDDEN:
            return UNKNOWN
        seq = msg.get("seq")
        epoch = msg.get("epoch")
        if not wire.is_int(seq) or not isinstance(epoch, str):
            return INVALID
        if sub.epoch is None or sub.seq is None:
            sub.epoch = epoch
            sub.seq = seq
            return APPLY
        if epoch != sub.epoch:
            sub.epoch = epoch
            sub.seq = seq
            return EPOCH
        if seq <= sub.seq:
            return DUPLICATE
        verdict = APPLY if seq == sub.seq + 1 else GAP
        sub.seq = seq
        return verdict

    def on_subscribed(self, msg):
        """Ack of a subscribe. Returns (sub or None, trusted): trusted False means refetch the project."""
        sub = self._subs.get(msg.get("projectId"))
        if sub is None:
            return None, True
        sub.status = SUBSCRIBED
        epoch = msg.get("epoch")
        seq = msg.get("seq")
        if not isinstance(epoch, str) or not wire.is_int(seq):
            return sub, False
        trusted = True
        if sub.sent_since:
            if msg.get("recovered") is not True or epoch != sub.epoch:
                trusted = False
            elif sub.seq is None or sub.seq < seq:
                trusted = False  # recovered, yet events are missing
        if sub.epoch != epoch:
            sub.epoch = epoch
            sub.seq = seq
        elif sub.seq is None or seq > sub.seq:
            sub.seq = seq
        return sub, trusted

    def on_error(self, msg):
        """An error for a project: `forbidden` stops expecting events from it; a retryable one (`unavailable`)
        marks it for `retry_due()`. Returns the sub or None."""
        sub = self._subs.get(msg.get("projectId"))
        if sub is not None:
            error = msg.get("error")
            if error == FORBIDDEN:
                sub.status = FORBIDDEN
            elif error in RETRYABLE_ERRORS and sub.status == PENDING:
                sub.status = RETRY
        return sub

    def retry_due(self, now):
        """Subscribe texts for the projects whose last subscribe failed in a retryable way."""
        return [self.subscribe_message(pid, now) for pid in self._order if self._subs[pid].status == RETRY]
