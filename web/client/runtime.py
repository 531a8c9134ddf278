"""The façade the browser adapter and the UI talk to: connection + subscriptions + cache + mutations.

Adapter loop (one per page): call an input method (`start`, `socket_*`, `visibility_changed`,
`network_changed`, `lifecycle_changed`, `retry_now`, `fetch_result`, `handle_timer`), then run every tuple from
`commands()` and re-arm a single setTimeout at `get_timer()` (absolute ms, same clock as `now`).
Commands: ("open", sid, url, protocols), ("send", sid, text), ("close", sid, code, reason),
("fetch", rid, method, path, body_or_None, headers) and ("log", record). Inputs for unknown or old
sids/rids are ignored. The application side uses `status`/`on_status`, `subscribe`, `watch`,
`move_story`/`create_escalation`/`resolve_escalation` and `on_mutation`; `send_auth(token, now)` hands a
refreshed token to the open socket and `on_auth` hears the server's answer.
"""

import json
import random

from . import cache as cachemod
from . import patches, subscriptions, wire
from . import pending as pendingmod
from .config import ClientConfig
from .connection import LIVE, Connection

DEFAULT_WS_URL = "ws://localhost/ws/status-updates"
RECENT_MUTATIONS = 64  # settled mutation ids remembered to recognise late echoes
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def project_keys(project_id):
    """Every cache key whose data depends on one project's event stream."""
    return [("projects",), ("project", project_id), ("stories", project_id), ("escalations", project_id)]


def event_keys(event_type, project_id):
    """Keys an event invalidates (docs/client.md, "Cache")."""
    if event_type == "project.updated":
        return [("projects",), ("project", project_id)]
    if event_type in ("story.status.changed", "story.created"):
        return [("stories", project_id), ("project", project_id)]
    if event_type.startswith("escalation."):
        return [("escalations", project_id)]
    return [("project", project_id)]


def event_patches(event_type, project_id, data):
    """[(key, fn)] that fold a complete event payload into cached data."""
    if not isinstance(data, dict):
        return []
    if event_type == "project.updated" and isinstance(data.get("project"), dict):
        project = data["project"]
        return [(("project", project_id), patches.replace(project)), (("projects",), patches.upsert(project))]
    if event_type.startswith("story.") and isinstance(data.get("story"), dict):
        return [(("stories", project_id), patches.upsert(data["story"]))]
    if event_type.startswith("escalation.") and isinstance(data.get("escalation"), dict):
        return [(("escalations", project_id), patches.upsert(data["escalation"]))]
    return []


def _listen(listeners, listener):
    listeners.append(listener)

    def unsubscribe():
        if listener in listeners:
            listeners.remove(listener)

    return unsubscribe


class Mutation:
    __slots__ = ("id", "kind", "project_id", "overlays", "settle_keys", "direct_key", "echoed", "done", "entry")

    def __init__(self, mid, kind, project_id):
        self.id = mid
        self.kind = kind
        self.project_id = project_id
        self.overlays = []  # keys carrying this mutation's optimistic overlay
        self.settle_keys = []  # invalidated when the request settles
        self.direct_key = None  # key the server's answer (or echo) is applied to
        self.echoed = False
        self.done = False
        self.entry = None  # its client.pending entry (what to send again), when a queue is on


class Runtime:
    """See the module docstring; docs/client.md has the full contract."""

    def __init__(self, config, token_provider, rand=None, ws_url=DEFAULT_WS_URL, wall_clock=None):
        """`wall_clock()` -> epoch ms (e.g. Date.now) lets the JWT `exp` check run before every dial;
        without it the offset is learnt from server event timestamps."""
        self._out = []
        self.config = ClientConfig(config)
        self.rand = rand if rand is not None else random.random
        self._wall_offset = None  # server epoch ms minus `now`, learnt from event timestamps
        if wall_clock is None:
            wall_clock = self._estimated_wall
        self.connection = Connection(self.config, token_provider, ws_url, self._out, hooks=self, rand=self.rand, wall_clock=wall_clock)
        self.subscriptions = subscriptions.Subscriptions()
        self.cache = cachemod.QueryCache(self._request_query, self.config.coalesce_ms, report=self._report)
        self._now = 0
        self._handlers = []  # [(project id or "*", handler)]
        self._status_listeners = []
        self._mutation_listeners = []
        self._message_listeners = []
        self._requests = {}  # rid -> ("query", key, seq, now) | ("mutation", mid)
        self._next_rid = 0
        self._mutations = {}  # mid -> Mutation (pending and recently settled)
        self._recent = []  # settled mids, oldest first
        self._mid_prefix = None
        self._next_mid = 0
        self._published = None
        self._auth_listeners = []
        self._batch_keys = None  # while a batch is applied: keys to invalidate once at its end
        self.auth_expires_at = None  # epoch ms of the token the server last accepted in band
        self.pending = None  # client.pending.Pending once enable_pending() ran (docs/client.md, "Pending changes")
        self._direct = None  # with a queue on: the change sent straight away whose answer has not come yet
        self._counters = {"duplicates": 0, "gaps": 0, "epochChanges": 0, "unrecovered": 0, "recovered": 0, "echoes": 0, "listenerErrors": 0, "events": 0}

    # ------------------------------------------------------------------ adapter side
    def commands(self):
        """Drain the commands produced so far (swap-and-return)."""
        out = list(self._out)
        del self._out[:]
        return out

    def get_timer(self):
        a = self.connection.get_timer()
        b = self.cache.get_timer()
        c = self.pending.get_timer() if self.pending is not None else None
        best = None
        for t in (a, b, c):
            if t is not None and (best is None or t < best):
                best = t
        return best

    def handle_timer(self, now):
        self._now = now
        self.connection.handle_timer(now)
        self.cache.handle_timer(now)
        self._flush_pending(now)
        self._publish()

    def start(self, now):
        self._now = now
        self.connection.start(now)
        self._publish()

    def stop(self, now):
        self._now = now
        self.connection.stop(now)

    def socket_opened(self, sid, now):
        self._now = now
        self.connection.socket_opened(sid, now)

    def socket_message(self, sid, text, now):
        self._now = now
        self.connection.socket_message(sid, text, now)

    def socket_closed(self, sid, code, reason, now):
        self._now = now
        self.connection.socket_closed(sid, code, reason, now)

    def visibility_changed(self, visible, now):
        self._now = now
        self.connection.visibility_changed(visible, now)
        self._publish()

    def network_changed(self, online, now):
        self._now = now
        self.connection.network_changed(online, now)
        if online:
            self.cache.refetch_errors(now)
        self._publish()

    def lifecycle_changed(self, frozen, now):
        """`freeze`/`pagehide` (frozen) or `resume`/`pageshow` from the back/forward cache (not frozen);
        see `Connection.lifecycle_changed`."""
        self._now = now
        self.connection.lifecycle_changed(frozen, now)
        self._publish()

    def retry_now(self, now):
        self._now = now
        self.connection.retry_now(now)
        self.cache.refetch_errors(now)
        self._publish()

    def fetch_result(self, rid, status, body_text, now):
        """Outcome of a ("fetch", rid, ...) command. status 0 = network error."""
        self._now = now
        request = self._requests.pop(rid, None)
        if request is None:
            return
        body = None
        parsed = False
        if body_text is not None:
            try:
                body = json.loads(body_text)
                parsed = True
            except (ValueError, TypeError):
                body = None
        ok = 200 <= status < 300 and parsed
        error = None
        if not ok:
            error = _error_text(status, body, parsed)
        if status == 401:
            self.connection.auth_failed(now, "http 401")
        if request[0] == "query":
            self.cache.on_response(request[1], request[2], ok, body, error, now, requested_at=request[3])
        else:
            self._settle(request[1], status, ok, body, error, now)

    # ------------------------------------------------------------------ application side
    @property
    def status(self):
        return self.connection.status()

    @property
    def stats(self):
        out = self.connection.stats.as_dict()
        for key in self._counters:
            out[key] = self._counters[key]
        out["refetches"] = self.cache.refetches
        out["rttMs"] = self.connection.rtt_ms  # our ping's round trip, refreshed every heartbeat
        out["clientId"] = self.connection.client_id
        return out

    def on_status(self, listener):
        return _listen(self._status_listeners, listener)

    def on_mutation(self, listener):
        return _listen(self._mutation_listeners, listener)

    def on_auth(self, listener):
        """listener({"ok": True, "expiresAt": ms}) when the server accepted a token sent with `send_auth`,
        or ({"ok": False, "error": "auth_mismatch"}) before it closes the socket (4401). Returns unsubscribe()."""
        return _listen(self._auth_listeners, listener)

    def send_auth(self, token, now):
        """Send a refreshed token in band (`{"action":"auth","token":…}`) if a socket is live: subscriptions and
        delivery are untouched. Returns True if sent; False when not live (the next dial reads the token
        provider anyway, so nothing is lost)."""
        self._now = now
        if self.connection.state != LIVE:
            return False
        self._out.append(("send", self.connection.sid, wire.auth(token)))
        self.connection.log_event("auth-sent", now)
        return True

    def on_message(self, listener):
        """listener(now, msg) after each server message handled on a live socket (client.tabs relays them)."""
        return _listen(self._message_listeners, listener)

    def retain(self, project_id, position=None, now=None):
        """Keep `project_id` subscribed for someone other than this page's views (another tab, client.tabs).

        `position` (epoch, seq) is where that someone is: the resume point when the project is new here.
        Returns release()."""
        if now is not None:
            self._now = now
        self._retain(project_id, position)
        done = [False]

        def release():
            if not done[0]:
                done[0] = True
                self._release(project_id)

        return release

    def subscribe(self, project_id, handler, now=None):
        """handler(event dict) for each accepted event of `project_id` ("*": every project).

        `now` is optional (default: the time of the latest input)."""
        if now is not None:
            self._now = now
        item = (project_id, handler)
        self._handlers.append(item)
        if project_id != "*":
            self._retain(project_id)

        def unsubscribe():
            if item in self._handlers:
                self._handlers.remove(item)
                if project_id != "*":
                    self._release(project_id)

        return unsubscribe

    def watch(self, key, listener, now=None):
        """listener(entry) for a query key; fetches when needed; a project key keeps its project subscribed.

        `now` is optional (default: the time of the latest input)."""
        if now is not None:
            self._now = now
        key = tuple(key)
        project_id = key[1] if len(key) == 2 else None
        if project_id is not None:
            self._retain(project_id)
        stop = self.cache.watch(key, listener, self._now)
        done = [False]

        def unsubscribe():
            if done[0]:
                return
            done[0] = True
            stop()
            if project_id is not None:
                self._release(project_id)

        return unsubscribe

    def move_story(self, project_id, story_id, status, now):
        """Move a story; with a queue on, the body also says what the user saw: `expect: {status}`."""
        self._now = now
        if self._refused("move_story"):
            return None
        entry = self.cache.get(("stories", project_id))
        current = patches.find(entry.data if entry is not None else None, story_id)
        seen = current.get("status") if current is not None else None
        body = {"status": status}
        if seen is not None and self.pending is not None:
            body["expect"] = {"status": seen}
        mutation = self._new_mutation("move_story", project_id)
        self._mutation_overlays(mutation, story_id, status, seen, now)
        self._submit(mutation, "PATCH", "/api/stories/" + cachemod.quote(story_id), body, story_id, status, seen, now)
        return mutation.id

    def create_escalation(self, project_id, title, now):
        self._now = now
        if self._refused("create_escalation"):
            return None
        mutation = self._new_mutation("create_escalation", project_id)
        self._mutation_overlays(mutation, None, title, None, now)
        path = "/api/projects/" + cachemod.quote(project_id) + "/escalations"
        self._submit(mutation, "POST", path, {"title": title}, None, title, None, now)
        return mutation.id

    def resolve_escalation(self, project_id, escalation_id, now):
        self._now = now
        if self._refused("resolve_escalation"):
            return None
        entry = self.cache.get(("escalations", project_id))
        current = patches.find(entry.data if entry is not None else None, escalation_id)
        seen = current.get("status") if current is not None else None
        mutation = self._new_mutation("resolve_escalation", project_id)
        self._mutation_overlays(mutation, escalation_id, None, seen, now)
        path = "/api/escalations/" + cachemod.quote(escalation_id) + "/resolve"
        self._submit(mutation, "POST", path, None, escalation_id, None, seen, now)
        return mutation.id

    # ------------------------------------------------------------------ pending changes (client.pending)
    def enable_pending(self, text=None, now=None):
        """Queue changes made while not live (or whose request got no answer) instead of rolling them back.

        `text` is the stored queue (`localStorage`, key `client.pending.storage_key(user)`): its changes show
        at once (overlays) and are sent when live. Hear the queue change with `rt.pending.on_change`."""
        if now is not None:
            self._now = now
        if self.pending is None:
            base = self.config.reconnect_base_ms if self.config.reconnect_base_ms > 0 else pendingmod.RETRY_BASE_MS
            self.pending = pendingmod.Pending(base_ms=base, max_ms=max(base, self.config.reconnect_max_ms))
        self.pending_stored(text, self._now)

    def pending_stored(self, text, now):
        """The stored queue changed (read at start, or written by another tab: the `storage` event): show its
        new changes, settle the ones it says are done, write ours back if it lacks some, send if it is our turn."""
        self._now = now
        pending = self.pending
        if pending is None:
            return
        added, removed, differs = pending.queue.merge(text)
        for entry in added:
            self._restore(entry, now)
        for entry, status, current in removed:
            self._settled_elsewhere(entry, status, current, now)
            if entry["id"] == pending.inflight:
                pending.inflight = None  # its answer is moot now; the next change may go
        if differs:
            pending.changed(self._report)
        self._flush_pending(now)

    def pending_sender(self, can_send, now):
        """Whether this tab sends the queue (the tabs leader, or a tab on its own) or leaves it to another."""
        self._now = now
        if self.pending is not None:
            self.pending.can_send = bool(can_send)
            self._flush_pending(now)

    def discard_pending(self, now):
        """Sign-out: drop every queued change (its overlays go) and write the empty queue."""
        self._now = now
        if self.pending is None:
            return
        entries = list(self.pending.queue.entries)
        self.pending.queue.clear()
        self.pending.inflight = None
        for entry in entries:
            self._settled_elsewhere(entry, None, None, now)
        self.pending.changed(self._report)

    def _queues(self):
        """True when a new change must wait in the queue: not live, older changes still wait, or the change sent
        before it has no answer yet (were that answer lost, it is sent again, and must still come first)."""
        p = self.pending
        return p is not None and (self.connection.state != LIVE or p.queue.count > 0 or self._direct is not None)

    def _refused(self, kind):
        """The queue is full: the change is refused at once (a record with `refused`), nothing is lost silently."""
        if not self._queues() or not self.pending.queue.full:
            return False
        record = {"id": None, "kind": kind, "ok": False, "status": None, "rolledBack": False, "echoed": False,
                  "refused": True, "error": "%d changes are already waiting to be sent" % self.pending.queue.limit}
        self._tell_mutation(record)
        return True

    def _submit(self, mutation, method, path, body, target, value, seen, now):
        p = self.pending
        if p is not None:
            wall = self.connection.wall_clock() if self.connection.wall_clock is not None else None
            at = wall if wall is not None else now
            last = p.queue.entries[-1].get("at") if p.queue.entries else None
            if isinstance(last, (int, float)) and at < last:
                at = last  # this tab's changes keep their order in a merge
            mutation.entry = p.entry_for(mutation.id, mutation.kind, mutation.project_id, target, value, seen,
                                         method, path, body, at)
            if self._queues():
                p.queue.add(mutation.entry)
                p.changed(self._report)
                self._flush_pending(now)
                return
            self._direct = mutation.id
        self._send_mutation(mutation, method, path, body)

    def _restore(self, entry, now):
        """A queued change this page did not make (stored before a reload, or made in another tab)."""
        mutation = self._mutations.get(entry["id"])
        if mutation is None:
            mutation = Mutation(entry["id"], entry["kind"], entry["projectId"])
            self._mutations[mutation.id] = mutation
            self._mutation_overlays(mutation, entry.get("target"), entry.get("value"), entry.get("seen"), now)
        mutation.entry = entry

    def _settled_elsewhere(self, entry, status, current, now):
        """Another tab settled a queued change (`status` None: discarded): no answer body here, so a success
        keeps its overlays until fresh data lands, a 409 applies the server's story, anything else rolls back."""
        mutation = self._mutations.get(entry["id"])
        if mutation is None or mutation.done:
            return
        mutation.done = True
        ok = wire.is_int(status) and 200 <= status < 300
        if status == 409 and isinstance(current, dict) and mutation.direct_key is not None:
            self.cache.apply(mutation.direct_key, patches.upsert(current), now)
        for key in mutation.overlays:
            if ok:
                self.cache.expire_overlay(key, mutation.id)
            else:
                self.cache.remove_overlay(key, mutation.id, now)
        for key in mutation.settle_keys:
            self.cache.invalidate(key, now)
        self._remember(mutation.id)
        if status is not None:
            self._tell_mutation({"id": mutation.id, "kind": mutation.kind, "ok": ok, "status": status,
                                 "error": None if ok else pendingmod.verdict(status), "rolledBack": not ok,
                                 "echoed": mutation.echoed, "queued": True, "current": current,
                                 "target": entry.get("target"), "value": entry.get("value")})

    def _pending_result(self, mutation, status, body, now):
        """Book a send's answer in the queue; True when the change stays queued (sent again later)."""
        p = self.pending
        queued = p.queue.get(mutation.id) is not None
        if mutation.id == p.inflight or queued:
            outcome = p.sent_result(mutation.id, status, now)
        else:
            outcome = pendingmod.verdict(status)
        if not queued:
            if status == 0 and mutation.entry is not None and p.queue.add(mutation.entry, in_order=True):
                p.attempt = 1  # no answer: the request may have arrived; send it again (same id) after a pause
                p.retry_at = now + pendingmod.retry_delay(1, p.base_ms, p.max_ms)
                p.changed(self._report)
                return True
            return False
        if outcome in (pendingmod.RETRY, pendingmod.WAIT):
            return True
        current = body.get("current") if isinstance(body, dict) and outcome == pendingmod.CONFLICT else None
        p.queue.remove(mutation.id, status, current if isinstance(current, dict) else None)
        p.changed(self._report)
        return False

    def _flush_pending(self, now):
        """Send the head of the queue when live, ours to send and not backing off (one in flight at a time, counting
        a change sent straight away)."""
        p = self.pending
        if p is None or self._direct is not None:
            return
        entry = p.next(now, self.connection.state == LIVE)
        if entry is None:
            return
        mutation = self._mutations.get(entry["id"])
        if mutation is None:
            self._restore(entry, now)
            mutation = self._mutations[entry["id"]]
        self._send_mutation(mutation, entry["method"], entry["path"], entry.get("body"))

    # ------------------------------------------------------------------ connection hooks
    def link_connected(self, now, msg, info):
        sid = self.connection.sid
        for text in self.subscriptions.resubscribe_all(now):
            self._out.append(("send", sid, text))
        if info["reconnect"]:
            downtime = info["downtimeMs"] if info["downtimeMs"] is not None else 0
            attempts = info["attempts"] if info["attempts"] > 0 else 1  # the dial that worked counts
            self._out.append(("send", sid, wire.hello(attempts, downtime)))
        self.cache.refetch_errors(now)
        self._flush_pending(now)

    def link_lost(self, now):
        self.subscriptions.socket_lost()

    def link_status(self, now):
        self._publish()

    def link_batch(self, now, events):
        """A `dashboard.v2` batch: each event is applied as if it came alone, and the cache invalidations of
        the whole batch are made once per key at its end."""
        self._batch_keys = []
        try:
            for msg in events:
                self._on_event(now, msg)
                self._heard(now, msg)  # message listeners (client.tabs) see plain events too
        finally:
            keys, self._batch_keys = self._batch_keys, None
            for key in keys:
                self.cache.invalidate(key, now)

    def link_message(self, now, msg):
        kind = msg["type"]
        if kind == "event":
            self._on_event(now, msg)
        elif kind == "auth":
            expires = msg.get("expiresAt")
            self.auth_expires_at = expires if wire.is_int(expires) else None
            self.connection.log_event("auth-accepted", now, expiresAt=self.auth_expires_at)
            self._auth_event({"ok": True, "expiresAt": self.auth_expires_at})
        elif kind == "subscribed":
            self._on_subscribed(now, msg)
        elif kind == "ping":
            sid = self.connection.sid
            for text in self.subscriptions.retry_due(now):
                self._out.append(("send", sid, text))
        elif kind == "error":
            if msg.get("error") == "auth_mismatch":
                self._auth_event({"ok": False, "error": "auth_mismatch"})
            sub = self.subscriptions.on_error(msg) if msg.get("projectId") is not None else None
            self.connection.log_event("server-error", now, reason=str(msg.get("error")) + ": " + str(msg.get("message")), projectId=msg.get("projectId") if sub is not None else None)
            if sub is not None and msg.get("error") == "forbidden":
                # Not (or no longer) a member: what we hold of that project is not ours to show; the refetch
                # gets the project list without it and 403 for its own keys.
                for key in project_keys(sub.project_id):
                    self.cache.invalidate(key, now)
        self._heard(now, msg)

    def _heard(self, now, msg):
        for listener in list(self._message_listeners):
            try:
                listener(now, msg)
            except Exception as exc:
                self._report(exc)

    # ------------------------------------------------------------------ internals
    def _estimated_wall(self):
        """Epoch ms for the JWT expiry check when no wall clock was given (None until an event arrived)."""
        if self._wall_offset is None:
            return None
        return self._now + self._wall_offset

    def _on_event(self, now, msg):
        stamp = msg.get("timestamp")
        if wire.is_int(stamp) or (isinstance(stamp, float) and stamp == stamp):
            self._wall_offset = stamp - now
        verdict = self.subscriptions.on_event(msg)
        if verdict in (subscriptions.UNKNOWN, subscriptions.INVALID):
            return
        if verdict == subscriptions.DUPLICATE:
            self._counters["duplicates"] += 1
            return
        self._counters["events"] += 1  # accepted (not a duplicate)
        project_id = msg["projectId"]
        event_type = msg.get("eventType")
        if not isinstance(event_type, str):
            event_type = ""
        data = msg.get("data")
        mid = data.get("clientMutationId") if isinstance(data, dict) else None
        mutation = self._mutations.get(mid) if isinstance(mid, str) else None
        patched = []
        for key, fn in event_patches(event_type, project_id, data):
            self.cache.apply(key, fn, now)
            patched.append(key)
        if mutation is not None:
            self._counters["echoes"] += 1
            mutation.echoed = True
            if mutation.direct_key is not None:
                self.cache.remove_overlay(mutation.direct_key, mutation.id, now)
            if self.pending is not None and self.pending.queue.get(mid) is not None:
                self.pending.queue.remove(mid, 200)  # applied: the echo clears the pending mark
                self.pending.changed(self._report)
        else:
            for key in event_keys(event_type, project_id):
                if verdict == subscriptions.APPLY and key in patched:
                    continue  # in sequence and carrying the whole object: the cache is already right
                self._invalidate(key, now)
        if verdict in (subscriptions.GAP, subscriptions.EPOCH):
            self._counters["gaps" if verdict == subscriptions.GAP else "epochChanges"] += 1
            self.connection.log_event(verdict, now, reason="refetch " + project_id, projectId=project_id, seq=msg.get("seq"))
            for key in project_keys(project_id):
                self._invalidate(key, now)
        event = dict(msg)
        event["own"] = mutation is not None
        for item in list(self._handlers):
            if item[0] == project_id or item[0] == "*":
                try:
                    item[1](event)
                except Exception as exc:
                    self._report(exc)

    def _invalidate(self, key, now):
        if self._batch_keys is None:
            self.cache.invalidate(key, now)
        elif key not in self._batch_keys:
            self._batch_keys.append(key)

    def _auth_event(self, record):
        for listener in list(self._auth_listeners):
            try:
                listener(dict(record))
            except Exception as exc:
                self._report(exc)

    def _on_subscribed(self, now, msg):
        sub, trusted = self.subscriptions.on_subscribed(msg)
        if sub is None:
            return
        project_id = sub.project_id
        if not trusted:
            self._counters["unrecovered"] += 1
            for key in project_keys(project_id):
                self.cache.invalidate(key, now)
        elif sub.sent_since:
            self._counters["recovered"] += 1
        else:
            for key in project_keys(project_id)[1:]:
                self.cache.invalidate(key, now, before=sub.sent_at)
        record_recovered = trusted if sub.sent_since else None
        self.connection.log_event("subscribed", now, projectId=project_id, replayed=msg.get("replayed"), seq=sub.seq, recovered=record_recovered)

    def _retain(self, project_id, position=None):
        if self.subscriptions.add(project_id, position) and self.connection.state == LIVE:
            self._out.append(("send", self.connection.sid, self.subscriptions.subscribe_message(project_id, self._now)))

    def _release(self, project_id):
        if self.subscriptions.remove(project_id) and self.connection.state == LIVE:
            self._out.append(("send", self.connection.sid, wire.unsubscribe(project_id)))

    def _request_query(self, key, path, seq, now):
        rid = self._new_rid()
        self._requests[rid] = ("query", key, seq, now)
        self._out.append(("fetch", rid, "GET", path, None, {"Accept": "application/json"}))

    def _new_rid(self):
        self._next_rid += 1
        return "r" + str(self._next_rid)

    def _new_mutation(self, kind, project_id):
        if self._mid_prefix is None:
            n = int(self.rand() * 2176782336)  # 36**6: a per-page prefix so ids differ across tabs
            chars = []
            for _ in range(6):
                chars.append(_B36[n % 36])
                n //= 36
            self._mid_prefix = "m" + "".join(chars)
        self._next_mid += 1
        mutation = Mutation(self._mid_prefix + "-" + str(self._next_mid), kind, project_id)
        self._mutations[mutation.id] = mutation
        return mutation

    def _mutation_overlays(self, mutation, target, value, seen, now):
        """The optimistic overlays of a change (`seen`: the status the user saw, for the counts)."""
        project_id = mutation.project_id
        if mutation.kind == "move_story":
            key = ("stories", project_id)
            self._overlay(mutation, key, patches.set_fields(target, {"status": value}), now)
            deltas = {seen: -1, value: 1} if seen is not None and seen != value else None
        elif mutation.kind == "create_escalation":
            key = ("escalations", project_id)
            placeholder = {"id": mutation.id, "projectId": project_id, "title": value, "status": "open", "createdBy": None, "createdAt": None, "resolvedAt": None, "pending": True}
            self._overlay(mutation, key, patches.append(placeholder), now)
            deltas = {"openEscalations": 1}
        else:
            key = ("escalations", project_id)
            self._overlay(mutation, key, patches.set_fields(target, {"status": "resolved"}), now)
            deltas = {"openEscalations": -1} if seen == "open" else None
        if deltas is not None:
            self._overlay(mutation, ("project", project_id), patches.adjust_counts(deltas), now)
            self._overlay(mutation, ("projects",), patches.adjust_counts_in_list(project_id, deltas), now)
        mutation.direct_key = key
        mutation.settle_keys = [key, ("project", project_id), ("projects",)]

    def _overlay(self, mutation, key, fn, now):
        self.cache.add_overlay(key, mutation.id, fn, now)
        mutation.overlays.append(key)

    def _send_mutation(self, mutation, method, path, body):
        rid = self._new_rid()
        self._requests[rid] = ("mutation", mutation.id)
        headers = {"Accept": "application/json", "X-Client-Mutation-Id": mutation.id}
        text = None
        if body is not None:
            text = wire.dumps(body)
            headers["Content-Type"] = "application/json"
        self._out.append(("fetch", rid, method, path, text, headers))

    def _settle(self, mid, status, ok, body, error, now):
        direct = mid == self._direct
        if direct:
            self._direct = None  # what waits behind it may go now (after it, should it be queued again)
        mutation = self._mutations.get(mid)
        if mutation is None or mutation.done:
            if direct:
                self._flush_pending(now)
            return
        if self.pending is not None and self._pending_result(mutation, status, body, now):
            return  # kept in the queue: sent again later with the same id
        mutation.done = True
        current = body.get("current") if status == 409 and isinstance(body, dict) else None
        if not isinstance(current, dict):
            current = None
        if ok and isinstance(body, dict) and mutation.direct_key is not None:
            self.cache.apply(mutation.direct_key, patches.upsert(body), now)
        elif current is not None and mutation.direct_key is not None:
            self.cache.apply(mutation.direct_key, patches.upsert(current), now)  # the server's state wins
        for key in mutation.overlays:
            if ok and key != mutation.direct_key:
                self.cache.expire_overlay(key, mutation.id)  # counts stay until fresh data lands
            else:
                self.cache.remove_overlay(key, mutation.id, now)  # success: answer applied; error: rollback
        for key in mutation.settle_keys:
            self.cache.invalidate(key, now)
        self._remember(mid)
        record = {"id": mid, "kind": mutation.kind, "ok": ok, "status": status, "error": error, "rolledBack": not ok, "echoed": mutation.echoed}
        if self.pending is not None:
            record["queued"] = mutation.entry is not None and self.pending.queue.settled(mid) is not None
            record["current"] = current
            if mutation.entry is not None:
                record["target"] = mutation.entry.get("target")
                record["value"] = mutation.entry.get("value")
        self._tell_mutation(record)
        self._flush_pending(now)

    def _remember(self, mid):
        self._recent.append(mid)
        if len(self._recent) > RECENT_MUTATIONS:
            old = self._recent.pop(0)
            self._mutations.pop(old, None)

    def _tell_mutation(self, record):
        for listener in list(self._mutation_listeners):
            try:
                listener(dict(record))
            except Exception as exc:
                self._report(exc)

    def _publish(self):
        status = self.connection.status()
        if status == self._published:
            return
        self._published = status
        for listener in list(self._status_listeners):
            try:
                listener(dict(status))
            except Exception as exc:
                self._report(exc)

    def _report(self, exc):
        self._counters["listenerErrors"] += 1
        self.connection.log_event("listener-error", self._now, reason=type(exc).__name__ + ": " + str(exc))


def _error_text(status, body, parsed):
    if status == 0:
        return "network error"
    if parsed and isinstance(body, dict):
        code = body.get("error")
        message = body.get("message")
        if code is not None or message is not None:
            return str(code) + (": " + str(message) if message is not None else "")
    if 200 <= status < 300:
        return "invalid JSON"
    return "HTTP " + str(status)
