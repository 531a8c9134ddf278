"""One WebSocket per browser, shared by every tab: the leader/follower coordinator (sans-I/O).

Theory of operation
-------------------
Every tab of one signed-in user runs its own `Runtime` (cache, subscriptions, views) wrapped in one
`Tabs`. The adapter drives `Tabs` exactly as it would drive the runtime (same input methods, same
`commands()` and `get_timer()`), with more inputs: `channel_message(text, now)` (the tabs'
BroadcastChannel), `lock_granted(lid, now)`, `lock_lost(lid, now)` (a held lock was taken with
`steal`), `lock_failed(lid, reason, now)` (a request that was never granted failed) and
`page_hidden(now)` (`pagehide`); and three more commands: ("post", text), ("lock", lid, steal) (an
exclusive Web Lock; `steal` True takes it from its holder) and ("unlock", lid) (release it, or abort
the request while it waits). `lifecycle_changed` and `page_hidden` make a tab leave the group while
its page does not run, and join it again when it does (see `lifecycle_changed`).

- The tab holding the lock is the **leader**: its runtime's ("open", ...) reaches the adapter, so it
  owns the only WebSocket. It subscribes the union of what the tabs watch (each other tab's projects
  held through `Runtime.retain`, one reference per tab and project), relays every server event and
  ping to the channel (FRAME), answers each tab's subscribe with a `subscribed` of its own (REPLY)
  once its own subscription is acknowledged, and posts a BEAT from its timer every `tabsHeartbeatMs`.
- Every other tab is a **follower**: its runtime's socket is a *link* over the channel. `Tabs`
  answers the runtime's ("open", sid) itself (socket_opened + a `connected` frame) while the leader
  is live, turns its subscribe/unsubscribe sends into SUB/UNSUB posts and feeds relayed frames back
  as socket messages. So a follower's runtime runs the same code as with a socket of its own:
  dedupe, gaps, resume positions, cache, handlers, UI. Its status shown to the user is the leader's.
- **Hand-over**: the browser gives the lock to the next waiting tab when the leader closes, crashes
  or is frozen (it says BYE and gives the lock back on `pagehide`/`freeze`). A leader frozen or hung
  without that keeps its lock and stops beating (its timers do not run); a visible
  follower that hears no BEAT for `tabsTimeoutMs` (hidden: `tabsHiddenTimeoutMs`) takes the lock with
  `steal`, the best-ranked first (`tabsStaggerMs` apart). The new leader closes its link and dials;
  the followers link to it and resubscribe with their own positions, which it uses as `since` for the
  projects new to it: the server replays what was missed, nobody refetches. A leader that sees a
  newer leader's claim, or whose lock was stolen, closes its socket and follows.

Leader claims are ordered by (term, tab id); a term is the wall clock at the grant (at least one more
than any term seen), so a stale leader that wakes up never wins. Messages are `client.channel`
envelopes; kinds this module does not use go to `listen()` handlers or are ignored.
"""

import json

from . import channel, wire
from .tabrelay import MAX_TABS, History, Relay

CANDIDATE = "candidate"  # started, does not know yet whether it leads or follows
LEADER = "leader"
FOLLOWER = "follower"
OWN = "own"  # no sharing (no Web Locks/BroadcastChannel, or ?tabs=own): this tab keeps its own socket
CLOSED = "closed"  # stopped or the page is hidden for good (pagehide)

LINK_CLOSED = 1001  # what a follower's runtime sees when its leader goes away (going away)
LINK_LOST = 1006  # the leader lost its socket without a close code
CLOSE_NOT_LEADER = 1000  # the code a leader that steps down closes its socket with

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_REPLAY_STATES = ("waiting", "suspended")  # runtime phases a live leader wakes up at once

# key in the config dict -> (attribute, default ms)
TABS_KEYS = (
    ("tabsHeartbeatMs", "heartbeat_ms", 500),  # leader BEAT period
    ("tabsTimeoutMs", "timeout_ms", 2500),  # no BEAT for this long: a visible follower takes over
    ("tabsHiddenTimeoutMs", "hidden_timeout_ms", 90000),  # same for a hidden one (its timers are throttled)
    ("tabsStaggerMs", "stagger_ms", 500),  # extra wait per better-ranked follower, so one steals
)


def _number(value, default):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value <= 0:
        return default
    return value


class TabsConfig:
    """Timings of the tabs protocol (milliseconds) from the same dict as `ClientConfig`."""

    __slots__ = tuple(attr for _, attr, _ in TABS_KEYS)

    def __init__(self, raw=None):
        raw = raw if isinstance(raw, dict) else {}
        for key, attr, default in TABS_KEYS:
            setattr(self, attr, _number(raw.get(key), default))


class Tabs:
    """Wrap one `Runtime`; drive it through this object (see the module docstring)."""

    def __init__(self, runtime, shared=True, config=None, tab_id=None, wall_clock=None):
        """`shared` False: a pass-through (OWN). `config`: the /api/config dict (tabs* keys).
        `wall_clock()` -> epoch ms orders leader terms (default: the runtime's clock, from 0)."""
        self.rt = runtime
        self.config = TabsConfig(config)
        self.id = tab_id if tab_id is not None else _new_id(runtime.rand)
        self.wall_clock = wall_clock
        self.role = OWN if not shared else CLOSED
        self.shared = bool(shared)
        self._out = []
        self._now = 0
        self.term = 0  # ours, while leading
        self.max_term = 0
        self.leader_id = None
        self.leader_term = 0
        self.leader_live = False
        self.leader_hb = None
        self.leader_status = None  # absolute (this tab's clock) copy of the leader's runtime status
        self.leader_beat_at = None
        self.alone_since = None  # no leader known since
        self.vsid = None  # the follower runtime's link (socket id answered by us)
        self.vlive = False
        self.held_open = None  # an ("open", ...) made before the role was known
        self.away = False  # left the group because the page was frozen or hidden (rejoins on resume)
        self.visible = True
        self.relay = None  # tabrelay.Relay while leading
        self.history = History()  # recent events, to send a tab that comes back behind what it missed
        self.peers = {}  # tab id -> [last heard, visible] (followers rank themselves for a steal)
        self.next_beat_at = None
        self.wait_lid = None
        self.held_lid = None
        self.steal_lid = None
        self.dropped_lids = []  # released or aborted by us: their late outcomes are ignored
        self._next_lid = 0
        self._listeners = []  # [(kind, handler)]
        self._role_listeners = []
        self.counters = {"leaderChanges": 0, "steals": 0, "sharesDropped": 0, "ignored": 0}
        runtime.on_status(self._on_runtime_status)
        runtime.on_message(self._on_server_message)

    # ------------------------------------------------------------------ adapter side
    def commands(self):
        """Drain the commands so far: the runtime's (links answered here) plus posts and lock requests."""
        self._flush(self._now)
        out = self._out
        self._out = []
        return out

    def get_timer(self):
        best = self.rt.get_timer()
        for value in self._deadlines():
            if value is not None and (best is None or value < best):
                best = value
        return best

    def handle_timer(self, now):
        self._now = now
        self.rt.handle_timer(now)
        self._tick(now)
        self._flush(now)

    def start(self, now):
        """Start: find the leader or become it, and start the runtime."""
        self._now = now
        self._join(now)
        self.rt.start(now)
        self._flush(now)

    def stop(self, now):
        """Sign-out: say bye, give the lock back, stop the runtime (close 1000)."""
        self._now = now
        self._depart(now)
        self.away = False
        self.rt.stop(now)
        self._flush(now)

    def lifecycle_changed(self, frozen, now):
        """`freeze` or `pagehide` (frozen), `resume` or `pageshow` from the back/forward cache (not frozen).

        A leader (or candidate) that stops running must not keep the socket from the others: it says bye and
        gives the lock back (the next tab leads at once), then its runtime closes its socket (4001). A
        follower stays: Chromium runs a frozen page's channel handlers, so it keeps applying what the leader
        relays (`page_hidden` makes it leave when the page may be gone). Running again, a tab that left joins
        as at `start`; its runtime dials and resumes with `since`."""
        self._now = now
        if frozen:
            if self.role in (LEADER, CANDIDATE):
                self._leave(now)
            if self.role != FOLLOWER:
                self.rt.lifecycle_changed(True, now)
        else:
            if self.away:
                self.away = False
                self._join(now)
            self.rt.lifecycle_changed(False, now)
        self._flush(now)

    def page_hidden(self, now):
        """`pagehide`: the page is closed or kept in the back/forward cache; every role leaves (a follower's
        projects are released at once), and the runtime is frozen until `lifecycle_changed(False)`."""
        self._now = now
        if self.role in (LEADER, FOLLOWER, CANDIDATE):
            self._leave(now)
        self.rt.lifecycle_changed(True, now)
        self._flush(now)

    def socket_opened(self, sid, now):
        self._now = now
        self.rt.socket_opened(sid, now)
        self._flush(now)

    def socket_message(self, sid, text, now):
        self._now = now
        self.rt.socket_message(sid, text, now)
        self._flush(now)

    def socket_closed(self, sid, code, reason, now):
        self._now = now
        self.rt.socket_closed(sid, code, reason, now)
        self._flush(now)

    def visibility_changed(self, visible, now):
        self._now = now
        visible = bool(visible)
        changed = visible != self.visible
        self.visible = visible
        if self.role == LEADER:
            self._apply_visibility(now)
        else:
            self.rt.visibility_changed(visible, now)
            if changed and self.role == FOLLOWER:
                self._post_tab()
        self._flush(now)

    def network_changed(self, online, now):
        self._now = now
        self.rt.network_changed(online, now)
        self._flush(now)

    def retry_now(self, now):
        """Retry from any tab: a follower asks its leader too."""
        self._now = now
        self.rt.retry_now(now)
        if self.role == FOLLOWER and self.leader_id is not None:
            self._post(channel.RETRY, {}, self.leader_id)
        self._flush(now)

    def fetch_result(self, rid, status, body_text, now):
        self._now = now
        self.rt.fetch_result(rid, status, body_text, now)
        self._flush(now)

    def channel_message(self, data, now):
        """A message from another tab (the BroadcastChannel's `event.data`, a JSON text)."""
        self._now = now
        msg = channel.parse(data)
        if msg is None or msg["from"] == self.id or (msg["to"] is not None and msg["to"] != self.id):
            return
        if self.role in (OWN, CLOSED):
            self._extension(msg, now)
            self._flush(now)
            return
        sender = msg["from"]
        kind = msg["kind"]
        body = msg["body"]
        if kind in (channel.BEAT, channel.STATUS):
            self._on_claim(sender, body, kind == channel.BEAT, now)
        elif kind == channel.TAB:
            self._on_tab(sender, body, now)
        elif kind == channel.HELLO:
            self._heard_peer(sender, None, now)
            if self.role == LEADER:
                self._post(channel.STATUS, self._leader_body(now), sender)
        elif kind == channel.BYE:
            self._on_bye(sender, body, now)
        elif kind in (channel.FRAME, channel.REPLY, channel.REBIND):
            self._on_leader_data(sender, kind, body, now)
        elif kind in (channel.LINK, channel.SUB, channel.UNSUB, channel.RETRY):
            self._on_follower_request(sender, kind, body, now)
        else:
            self._extension(msg, now)
        self._flush(now)

    def lock_granted(self, lid, now):
        self._now = now
        if lid in self.dropped_lids or self.role in (OWN, CLOSED) or lid not in (self.wait_lid, self.steal_lid):
            self._out.append(("unlock", lid))
            return
        if lid == self.steal_lid:
            self.counters["steals"] += 1
        self.wait_lid = None if lid == self.wait_lid else self.wait_lid
        self.steal_lid = None
        self.held_lid = lid
        if self.wait_lid is not None:  # a steal won: the queued request must not be granted later
            self._unlock(self.wait_lid)
        self._become_leader(now)
        self._flush(now)

    def lock_lost(self, lid, now):
        """The held lock was taken by another tab (`steal`): follow."""
        self._now = now
        if lid != self.held_lid:
            return
        self.held_lid = None
        if self.role == LEADER:
            self._step_down(now, "lock taken by another tab")
        self._flush(now)

    def lock_failed(self, lid, reason, now):
        """A lock request was never granted (not an abort of ours): without locks, keep an own socket."""
        self._now = now
        if lid in self.dropped_lids:
            self.dropped_lids.remove(lid)
            return
        if lid == self.wait_lid:
            self.wait_lid = None
        elif lid == self.steal_lid:
            self.steal_lid = None
        else:
            return
        self._log("tabs.lock-failed", now, reason=str(reason))
        self._go_own(now)
        self._flush(now)

    # ------------------------------------------------------------------ application side
    @property
    def status(self):
        """The runtime's status, or the leader's for a follower, with "role" (leader, follower, own, candidate)."""
        own = self.rt.status
        if self.role == FOLLOWER and self.leader_status is not None and own["state"] not in ("auth-required", "idle"):
            out = dict(self.leader_status)
            out["hidden"] = own["hidden"]
            out["online"] = own["online"]
        else:
            out = dict(own)
        out["role"] = self.role
        return out

    @property
    def is_leader(self):
        """True where this tab owns the socket (leader, or own mode): the one to do browser-wide work."""
        return self.role in (LEADER, OWN)

    def takeover_at(self):
        """When this follower takes the lock with `steal` if no BEAT comes before (None: leading, or stealing)."""
        if self.role in (FOLLOWER, CANDIDATE) and self.steal_lid is None:
            return self._steal_at()
        return None

    @property
    def shown_stats(self):
        """The runtime's stats as the page shows them: a follower's round trip and client id are its leader's
        (its own link answers at once and has no server connection of its own)."""
        out = self.rt.stats
        if self.role == FOLLOWER and self.leader_status is not None:
            out["rttMs"] = self.leader_status.get("rttMs")
            out["clientId"] = self.leader_status.get("clientId")
        return out

    @property
    def stats(self):
        out = dict(self.counters)
        out["role"] = self.role
        out["shares"] = len(self.relay.shares) if self.relay is not None else 0
        out["relayed"] = self.relay.relayed if self.relay is not None else 0
        return out

    def on_role(self, listener):
        """listener(role) on every role change. Returns unsubscribe()."""
        self._role_listeners.append(listener)

        def unsubscribe():
            if listener in self._role_listeners:
                self._role_listeners.remove(listener)

        return unsubscribe

    def listen(self, kind, handler):
        """handler(envelope, now) for channel messages of a kind this module does not use. Returns unsubscribe()."""
        item = (kind, handler)
        self._listeners.append(item)

        def unsubscribe():
            if item in self._listeners:
                self._listeners.remove(item)

        return unsubscribe

    def post(self, kind, body, to=None):
        """Post a message of another feature's kind to the other tabs (nothing in own mode)."""
        if self.role not in (OWN, CLOSED):
            self._post(kind, body, to)

    # ------------------------------------------------------------------ runtime commands
    def _flush(self, now):
        for _ in range(100):
            commands = self.rt.commands()
            if not commands:
                break
            for command in commands:
                self._route(command, now)

    def _route(self, command, now):
        kind = command[0]
        if kind == "open":
            if self.role == CANDIDATE:
                self.held_open = command
            elif self.role == FOLLOWER:
                self.vsid = command[1]
                self.vlive = False
                if self.leader_live:
                    self._complete_link(now)
            elif self.role != CLOSED:
                self._out.append(command)
        elif kind == "send" and command[1] == self.vsid and self.vsid is not None:
            self._link_send(command[2], now)
        elif kind == "close" and (command[1] == self.vsid or self._held(command[1])):
            if command[1] == self.vsid:
                self.vsid = None
                self.vlive = False
            else:
                self.held_open = None
        elif kind == "log" and self.role == FOLLOWER and not command[1].get("event", "").startswith("tabs."):
            record = dict(command[1])
            record["via"] = "leader tab"  # the follower runtime's records are about its link, not a socket
            self._out.append(("log", record))
        else:
            self._out.append(command)

    def _held(self, sid):
        return self.held_open is not None and self.held_open[1] == sid

    # ------------------------------------------------------------------ follower: the link
    def _complete_link(self, now):
        sid = self.vsid
        self.vlive = True
        self._post(channel.LINK, {"link": sid}, self.leader_id)
        self.rt.socket_opened(sid, now)
        connected = {"type": "connected", "clientId": "tab:" + self.leader_id, "heartbeatMs": self.leader_hb}
        self.rt.socket_message(sid, wire.dumps(connected), now)

    def _link_down(self, now, code, reason):
        sid = self.vsid
        if sid is None:
            return
        self.vsid = None
        self.vlive = False
        self.rt.socket_closed(sid, code, reason, now)

    def _link_up(self, now):
        """The leader is live: complete a pending link, or dial one at once."""
        if self.vsid is not None:
            if not self.vlive:
                self._complete_link(now)
        elif self.rt.status["phase"] in _REPLAY_STATES:
            self.rt.retry_now(now)

    def _link_send(self, text, now):
        try:
            msg = json.loads(text)
        except ValueError:
            return
        action = msg.get("action") if isinstance(msg, dict) else None
        link = self.vsid
        if action == "subscribe":
            since = msg.get("since")
            position = [since.get("epoch"), since.get("seq")] if isinstance(since, dict) else None
            self._post(channel.SUB, {"link": link, "projectId": msg.get("projectId"), "since": position}, self.leader_id)
        elif action == "unsubscribe":
            self._post(channel.UNSUB, {"link": link, "projectId": msg.get("projectId")}, self.leader_id)
        elif action == "ping" and self.vlive and self.leader_live:
            self.rt.socket_message(link, wire.dumps({"type": "pong"}), now)  # the leader watches the socket
        # pong and hello concern the leader's socket only

    def _on_leader_data(self, sender, kind, body, now):
        if self.role != FOLLOWER or sender != self.leader_id or body.get("term") != self.leader_term:
            self.counters["ignored"] += 1
            return
        frame = body.get("frame")
        if kind == channel.FRAME:
            if self.vlive and isinstance(frame, dict):
                self.rt.socket_message(self.vsid, wire.dumps(frame), now)
        elif body.get("link") != self.vsid or self.vsid is None:
            return
        elif kind == channel.REPLY:
            if self.vlive and isinstance(frame, dict):
                self.rt.socket_message(self.vsid, wire.dumps(frame), now)
        else:  # REBIND: the leader lost track of our link: link again (and resubscribe)
            self._link_down(now, LINK_LOST, "leader asked to link again")
            if self.leader_live:
                self._link_up(now)

    def _post_tab(self):
        watch = self.rt.subscriptions.project_ids()
        link = self.vsid if self.vlive else None
        self._post(channel.TAB, {"leader": self.leader_id, "link": link, "visible": self.visible, "watch": watch})

    # ------------------------------------------------------------------ leader claims and roles
    def _on_claim(self, sender, body, beat, now):
        term = body.get("term")
        if not wire.is_int(term):
            return
        if term > self.max_term:
            self.max_term = term
        claim = (term, sender)
        if self.role == LEADER:
            if claim > (self.term, self.id):
                self._step_down(now, "a newer leader")
                self._follow(sender, term, body, beat, now)
            else:
                self._post(channel.STATUS, self._leader_body(now))  # a stale leader: learn who leads
            return
        if self.leader_id is None or claim > (self.leader_term, self.leader_id):
            self._follow(sender, term, body, beat, now)
        elif claim == (self.leader_term, self.leader_id):
            self._leader_update(body, beat, now)
            if beat:
                self._post_tab()
        else:
            self.counters["ignored"] += 1

    def _follow(self, leader_id, term, body, beat, now):
        if self.leader_id is not None and self.vsid is not None:
            self._link_down(now, LINK_CLOSED, "leader changed")
        self.leader_id = leader_id
        self.leader_term = term
        self.leader_beat_at = now  # the timeout runs from here even if this was not a BEAT
        self.alone_since = None
        self.counters["leaderChanges"] += 1
        if self.role != FOLLOWER:
            self._set_role(FOLLOWER, now)
        else:
            self._log("tabs.role", now)
        if self.held_open is not None:
            self.vsid = self.held_open[1]
            self.vlive = False
            self.held_open = None
        self._leader_update(body, beat, now)
        self._post_tab()

    def _leader_update(self, body, beat, now):
        hb = body.get("hb")
        self.leader_hb = hb if (wire.is_int(hb) or isinstance(hb, float)) and hb > 0 else None
        self.leader_status = _absolute(body.get("status"), now)
        if beat:
            self.leader_beat_at = now
        was_live = self.leader_live
        self.leader_live = body.get("live") is True
        if self.leader_live:
            self._link_up(now)
        elif was_live or self.vlive:
            code = self.leader_status.get("closeCode") if self.leader_status else None
            reason = self.leader_status.get("reason") if self.leader_status else None
            self._link_down(now, code if wire.is_int(code) else LINK_LOST, reason or "leader lost its socket")

    def _on_bye(self, sender, body, now):
        self.peers.pop(sender, None)
        if self.role == LEADER:
            self.relay.on_bye(sender)
            self._apply_visibility(now)
        elif sender == self.leader_id:
            # it gave the lock back: the next waiting tab leads next; until it says so, we have none
            self.leader_id = None
            self.leader_status = None
            self.leader_live = False
            self.alone_since = now
            self._link_down(now, LINK_CLOSED, "leader left")
            self._log("tabs.leader-left", now)

    def _become_leader(self, now):
        self.term = max(self._wall(now), self.max_term + 1)
        self.max_term = self.term
        self.leader_id = self.id
        self.leader_term = self.term
        self.leader_status = None
        self.leader_live = False
        self.relay = Relay(self.rt, self._post, self.term, self.history)
        self.counters["leaderChanges"] += 1
        self._set_role(LEADER, now)
        if self.held_open is not None:
            command, self.held_open = self.held_open, None
            self._out.append(command)
        elif self.vsid is not None:
            self._link_down(now, LINK_CLOSED, "this tab leads now")
            if self.rt.status["phase"] in _REPLAY_STATES:
                self.rt.retry_now(now)
        elif self.rt.status["phase"] in _REPLAY_STATES:
            self.rt.retry_now(now)
        self._apply_visibility(now)
        self._beat(now)

    def _step_down(self, now, reason):
        """Stop leading: close the socket (the runtime sees it lost), follow, queue for the lock again."""
        self._close_relay()
        self.leader_id = None
        self.leader_status = None
        self.leader_live = False
        self.alone_since = now
        self.next_beat_at = None
        if self.held_lid is not None:
            self._unlock(self.held_lid)
            self.held_lid = None
        self._set_role(FOLLOWER, now, reason)
        sid = self.rt.connection.sid
        if sid is not None:
            self._out.append(("close", sid, CLOSE_NOT_LEADER, "another tab leads"))
            self.rt.socket_closed(sid, LINK_CLOSED, "another tab leads", now)
        self.rt.visibility_changed(self.visible, now)
        if self.rt.status["phase"] in _REPLAY_STATES:
            self.rt.retry_now(now)
        self._request_lock(False)

    def _join(self, now):
        if self.role != CLOSED:
            return
        self.role = CANDIDATE
        self.alone_since = now
        self.leader_id = None
        self.leader_beat_at = None
        self.leader_live = False
        self._post(channel.HELLO, {})
        self._request_lock(False)
        self._log("tabs.role", now)

    def _leave(self, now):
        self._depart(now)
        self.away = True

    def _depart(self, now):
        if self.role in (OWN, CLOSED):
            return
        self._post(channel.BYE, {"term": self.term if self.role == LEADER else None})
        self._close_relay()
        self._link_down(now, LINK_CLOSED, "this tab left")
        self._unlock_all()
        self._set_role(CLOSED, now)
        self.leader_id = None
        self.leader_status = None
        self.leader_live = False
        self.held_open = None
        self.next_beat_at = None

    def _go_own(self, now):
        """No usable lock: this tab keeps a socket of its own, as without sharing."""
        self._post(channel.BYE, {"term": None})
        self._unlock_all()
        self.leader_id = None
        self.leader_status = None
        self._set_role(OWN, now)
        if self.held_open is not None:
            command, self.held_open = self.held_open, None
            self._out.append(command)
        elif self.vsid is not None:
            self._link_down(now, LINK_CLOSED, "no shared connection")
            if self.rt.status["phase"] in _REPLAY_STATES:
                self.rt.retry_now(now)
        self.rt.visibility_changed(self.visible, now)

    def _set_role(self, role, now, reason=None):
        if role == self.role:
            return
        self.role = role
        self._log("tabs.role", now, reason=reason)
        for listener in list(self._role_listeners):
            try:
                listener(role)
            except Exception as exc:
                self.rt._report(exc)

    # ------------------------------------------------------------------ leader: beats, tabs, relaying (tabrelay.py)
    def _leader_body(self, now):
        status = self.rt.status
        relative = {}
        for key in ("state", "attempt", "closeCode", "reason", "phase", "deferred"):
            relative[key] = status.get(key)
        at = status.get("nextRetryAt")
        relative["nextRetryIn"] = None if at is None else at - now
        at = status.get("lastLiveAt")
        relative["liveAgo"] = None if at is None else now - at
        relative["rttMs"] = self.rt.connection.rtt_ms
        relative["clientId"] = self.rt.connection.client_id
        return {"term": self.term, "live": status["state"] == "live", "hb": self.rt.connection.heartbeat_ms, "status": relative}

    def _beat(self, now):
        self._post(channel.BEAT, self._leader_body(now))
        self.next_beat_at = now + self.config.heartbeat_ms
        self.relay.beat(now)

    def _on_tab(self, sender, body, now):
        self._heard_peer(sender, body.get("visible") is True, now)
        if self.role == LEADER and body.get("leader") == self.id:
            self.relay.on_tab(sender, body, now)
            self._apply_visibility(now)

    def _on_follower_request(self, sender, kind, body, now):
        self._heard_peer(sender, None, now)
        if self.role != LEADER:
            return
        if kind == channel.RETRY:
            self.rt.retry_now(now)
        else:
            self.relay.on_request(sender, kind, body, now)

    def _on_server_message(self, now, msg):
        """Runtime tap: keep events in the history; a leader relays them and answers the waiting tabs."""
        if msg.get("type") == "event":
            self.history.add(msg)
        if self.role == LEADER:
            self.relay.on_server_message(now, msg)

    def _on_runtime_status(self, status):
        """Runtime status listener: a leader tells the tabs at once (before any frame of a new socket)."""
        if self.role != LEADER:
            return
        if status.get("state") != "live":
            self.relay.socket_lost()
        self._post(channel.STATUS, self._leader_body(self._now))

    def _close_relay(self):
        if self.relay is not None:
            self.relay.close()
            self.relay = None

    def _apply_visibility(self, now):
        visible = self.visible
        if self.role == LEADER and self.relay.any_visible():
            visible = True
        self.rt.visibility_changed(visible, now)

    # ------------------------------------------------------------------ timers
    def _deadlines(self):
        if self.role == LEADER:
            return [self.next_beat_at] + self.relay.deadlines(self.config.timeout_ms)
        return [self.takeover_at()]

    def _steal_at(self):
        base = self.leader_beat_at if self.leader_id is not None else self.alone_since
        if base is None:
            return None
        timeout = self.config.timeout_ms if self.visible else self.config.hidden_timeout_ms
        return base + timeout + self._rank() * self.config.stagger_ms

    def _rank(self):
        """How many live peers would take over before us (visible ones first, then by id)."""
        mine = (not self.visible, self.id)
        horizon = self.config.timeout_ms * 2 + self.config.heartbeat_ms
        rank = 0
        for tab_id in self.peers:
            heard, visible = self.peers[tab_id]
            if tab_id == self.leader_id or self._now - heard > horizon:
                continue
            if (not visible, tab_id) < mine:
                rank += 1
        return rank

    def _tick(self, now):
        if self.role == LEADER:
            if self.next_beat_at is not None and now >= self.next_beat_at:
                self._beat(now)
            for tab_id in self.relay.expire(now, self.config.timeout_ms):
                self.peers.pop(tab_id, None)
                self.counters["sharesDropped"] += 1
                self._log("tabs.share-dropped", now, reason="tab " + tab_id + " silent")
                self._apply_visibility(now)
        elif self.role in (FOLLOWER, CANDIDATE) and self.steal_lid is None:
            deadline = self._steal_at()
            if deadline is not None and now >= deadline:
                self._steal(now)

    def _steal(self, now):
        self._log("tabs.steal", now, reason="no beat from " + str(self.leader_id))
        if self.wait_lid is not None:
            self._unlock(self.wait_lid)
            self.wait_lid = None
        self.steal_lid = self._lock_command(True)

    # ------------------------------------------------------------------ locks and posts
    def _request_lock(self, steal):
        if self.wait_lid is None and self.held_lid is None:
            self.wait_lid = self._lock_command(steal)

    def _lock_command(self, steal):
        self._next_lid += 1
        lid = "l" + str(self._next_lid)
        self._out.append(("lock", lid, bool(steal)))
        return lid

    def _unlock(self, lid):
        if lid is None:
            return
        self.dropped_lids.append(lid)
        if len(self.dropped_lids) > 16:
            self.dropped_lids.pop(0)
        self._out.append(("unlock", lid))

    def _unlock_all(self):
        for lid in (self.held_lid, self.wait_lid, self.steal_lid):
            self._unlock(lid)
        self.held_lid = None
        self.wait_lid = None
        self.steal_lid = None

    def _post(self, kind, body, to=None):
        self._out.append(("post", channel.make(kind, self.id, body, to)))

    def _heard_peer(self, tab_id, visible, now):
        peer = self.peers.get(tab_id)
        if peer is None:
            if len(self.peers) >= MAX_TABS:
                return
            peer = [now, False]
            self.peers[tab_id] = peer
        peer[0] = now
        if visible is not None:
            peer[1] = visible

    def _extension(self, msg, now):
        handled = False
        for kind, handler in list(self._listeners):
            if kind == msg["kind"]:
                handled = True
                try:
                    handler(msg, now)
                except Exception as exc:
                    self.rt._report(exc)
        if not handled:
            self.counters["ignored"] += 1

    def _wall(self, now):
        wall = self.wall_clock() if self.wall_clock is not None else None
        return int(wall) if wall is not None else int(now)

    def _log(self, event, now, reason=None):
        record = {"event": event, "role": self.role, "tab": self.id, "leader": self.leader_id, "term": self.leader_term, "reason": reason, "at": now}
        self._out.append(("log", record))


def _absolute(status, now):
    """The leader's status with its relative times turned into this tab's clock."""
    if not isinstance(status, dict):
        return None
    out = {}
    for key in ("state", "attempt", "closeCode", "reason", "phase", "deferred", "rttMs", "clientId"):
        out[key] = status.get(key)
    left = status.get("nextRetryIn")
    out["nextRetryAt"] = now + left if isinstance(left, (int, float)) and not isinstance(left, bool) else None
    ago = status.get("liveAgo")
    out["lastLiveAt"] = now - ago if isinstance(ago, (int, float)) and not isinstance(ago, bool) else None
    if not isinstance(out["state"], str):
        return None
    if not wire.is_int(out["attempt"]):
        out["attempt"] = 0
    return out


def _new_id(rand):
    n = int(rand() * 2176782336)  # 36**6
    chars = []
    for _ in range(6):
        chars.append(_B36[n % 36])
        n //= 36
    return "t" + "".join(chars)
