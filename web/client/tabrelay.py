"""The leader's side of the tabs protocol (`client.tabs`): what it holds for the other tabs, what it sends them.

`Tabs` makes a `Relay(rt, post, term, history)` when its tab starts to lead and calls `close()` when it
stops. It hands the relay the messages other tabs send the leader (`on_tab`, `on_request`, `on_bye`), every
server message the runtime handled (`on_server_message`), each BEAT (`beat`) and its timer (`expire`); the
relay answers through `post(kind, body, to)`.

- A **share** is what one tab holds: its link (the id of its runtime's current link), one `Runtime.retain`
  reference per project it subscribed (with its own position as `since` when the project is new here), and
  whether it answered the last BEAT. A tab that does not answer for `timeout` is released.
- A tab's subscribe is answered (REPLY) once the leader's own subscription is acknowledged: a `subscribed`
  with the leader's position, preceded by the events the tab missed when `History` still has them all (a
  tab coming back from a freeze or the back/forward cache), or `recovered: false` when it does not (the tab
  refetches that project, as it would with a socket of its own).
- Every event and ping the runtime handled goes to every tab (FRAME); a `forbidden` goes to the tabs
  holding that project.
"""

from . import channel, wire

MAX_TABS = 64  # tabs a leader serves; more are ignored
MAX_PROJECTS = 64  # projects one tab may hold through the leader (the server's own per-socket cap)
HISTORY_PER_PROJECT = 256  # recent events kept per project for a tab that comes back behind
HISTORY_PROJECTS = 128


class History:
    """The latest contiguous run of events per project (one epoch), as seen on the socket or the channel."""

    __slots__ = ("_runs", "_order")

    def __init__(self):
        self._runs = {}  # project id -> [event, ...] with seq n, n+1, ...
        self._order = []  # project ids, oldest first (MicroPython dicts are unordered)

    def add(self, msg):
        pid = msg.get("projectId")
        seq = msg.get("seq")
        epoch = msg.get("epoch")
        if not isinstance(pid, str) or not wire.is_int(seq) or not isinstance(epoch, str):
            return
        run = self._runs.get(pid)
        if run is None:
            if len(self._order) >= HISTORY_PROJECTS:
                del self._runs[self._order.pop(0)]
            self._runs[pid] = [msg]
            self._order.append(pid)
            return
        last = run[-1]
        if last["epoch"] == epoch and seq <= last["seq"]:
            return  # already kept
        if last["epoch"] != epoch or seq != last["seq"] + 1:
            run[:] = [msg]  # a gap or a new epoch: start a new run
            return
        run.append(msg)
        if len(run) > HISTORY_PER_PROJECT:
            run.pop(0)

    def missed(self, pid, epoch, after, upto):
        """The events of `epoch` with seq in (after, upto], in order; None unless every one of them is kept."""
        if after >= upto:
            return []
        run = self._runs.get(pid)
        if not run or run[0]["epoch"] != epoch or after + 1 < run[0]["seq"] or run[-1]["seq"] < upto:
            return None
        return [event for event in run if after < event["seq"] <= upto]


class Share:
    """What one other tab holds through the leader."""

    __slots__ = ("tab_id", "link", "refs", "visible", "owed_since")

    def __init__(self, tab_id):
        self.tab_id = tab_id
        self.link = None  # the tab runtime's current link (socket id) to this leader
        self.refs = {}  # project id -> release()
        self.visible = False
        self.owed_since = None  # first BEAT it has not answered yet


class Relay:
    """One leadership term's service to the other tabs (see the module docstring)."""

    def __init__(self, rt, post, term, history):
        self.rt = rt
        self.post = post
        self.term = term
        self.history = history
        self.shares = {}  # tab id -> Share
        self.waiting = []  # [(tab id, link, project id, position)] until the leader's own subscription is settled
        self.relayed = 0

    # ------------------------------------------------------------------ from the other tabs
    def on_tab(self, sender, body, now):
        """A follower's TAB (it answers every BEAT): liveness, visibility, link check, projects it still wants."""
        share = self._share(sender)
        if share is None:
            return
        share.visible = body.get("visible") is True
        link = body.get("link")
        if link is not None and link != share.link:
            self.post(channel.REBIND, {"term": self.term, "link": link}, sender)
        elif link is not None:
            watch = body.get("watch") if isinstance(body.get("watch"), list) else []
            for pid in sorted(share.refs):
                if pid not in watch:
                    share.refs.pop(pid)()

    def on_request(self, sender, kind, body, now):
        """LINK, SUB or UNSUB from a follower."""
        share = self._share(sender)
        if share is None:
            return
        link = body.get("link")
        if kind == channel.LINK:
            share.link = link
            self._drop_waiting(sender, None)
            return
        if share.link is None:
            share.link = link
        pid = body.get("projectId")
        if link != share.link or not isinstance(pid, str):
            return  # from an older link of that tab
        if kind == channel.UNSUB:
            release = share.refs.pop(pid, None)
            if release is not None:
                release()
            self._drop_waiting(sender, pid)
            return
        since = body.get("since")
        position = None
        if isinstance(since, list) and len(since) == 2 and isinstance(since[0], str) and wire.is_int(since[1]):
            position = (since[0], since[1])
        if pid not in share.refs:
            if len(share.refs) >= MAX_PROJECTS:
                frame = {"type": "error", "error": "too_many_subscriptions", "projectId": pid, "message": "too many projects for one tab"}
                self._reply(sender, link, frame)
                return
            share.refs[pid] = self.rt.retain(pid, position, now)
        self._drop_waiting(sender, pid)
        self.waiting.append((sender, link, pid, position))
        self._answer_waiting(pid)

    def on_bye(self, sender):
        share = self.shares.pop(sender, None)
        if share is not None:
            _release(share)
            self._drop_waiting(sender, None)

    # ------------------------------------------------------------------ from the leader's runtime
    def on_server_message(self, now, msg):
        kind = msg.get("type")
        if kind in ("event", "ping"):
            self.relayed += 1
            self.post(channel.FRAME, {"term": self.term, "frame": msg}, None)
        elif kind == "subscribed" and isinstance(msg.get("projectId"), str):
            self._answer_waiting(msg["projectId"])
        elif kind == "error" and msg.get("error") == "forbidden" and isinstance(msg.get("projectId"), str):
            pid = msg["projectId"]
            for tab_id in sorted(self.shares):
                share = self.shares[tab_id]
                if pid in share.refs and not [w for w in self.waiting if w[0] == tab_id and w[2] == pid]:
                    self._reply(tab_id, share.link, msg)
            self._answer_waiting(pid, error=msg)

    def socket_lost(self):
        """The leader's socket is gone: the links close, and each tab subscribes again once it is back."""
        self.waiting = []

    # ------------------------------------------------------------------ liveness
    def beat(self, now):
        """A BEAT went out: every share owes an answer from now on."""
        for tab_id in self.shares:
            share = self.shares[tab_id]
            if share.owed_since is None:
                share.owed_since = now

    def expire(self, now, timeout):
        """Release the tabs that left a BEAT unanswered for `timeout`; their ids."""
        gone = []
        for tab_id in sorted(self.shares):
            share = self.shares[tab_id]
            if share.owed_since is not None and now - share.owed_since >= timeout:
                del self.shares[tab_id]
                _release(share)
                self._drop_waiting(tab_id, None)
                gone.append(tab_id)
        return gone

    def deadlines(self, timeout):
        return [self.shares[t].owed_since + timeout for t in self.shares if self.shares[t].owed_since is not None]

    def any_visible(self):
        for tab_id in self.shares:
            if self.shares[tab_id].visible:
                return True
        return False

    def close(self):
        """The term is over: give every reference back."""
        for tab_id in sorted(self.shares):
            _release(self.shares[tab_id])
        self.shares = {}
        self.waiting = []

    # ------------------------------------------------------------------ internals
    def _share(self, tab_id):
        """The share of `tab_id` (made on first contact; it just spoke, so it owes nothing), or None past MAX_TABS."""
        share = self.shares.get(tab_id)
        if share is None:
            if len(self.shares) >= MAX_TABS:
                return None
            share = Share(tab_id)
            self.shares[tab_id] = share
        share.owed_since = None
        return share

    def _reply(self, tab_id, link, frame):
        self.post(channel.REPLY, {"term": self.term, "link": link, "frame": frame}, tab_id)

    def _answer_waiting(self, pid, error=None):
        sub = self.rt.subscriptions.get(pid)
        live = self.rt.connection.state == "live"
        keep = []
        for item in self.waiting:
            tab_id, link, project_id, position = item
            if project_id != pid:
                keep.append(item)
                continue
            if error is not None:
                self._reply(tab_id, link, error)
            elif sub is not None and sub.status == "forbidden":
                self._reply(tab_id, link, {"type": "error", "error": "forbidden", "projectId": pid, "message": "not a member of this project"})
            elif live and sub is not None and sub.status == "subscribed" and sub.epoch is not None:
                missed = None
                if position is not None and position[0] == sub.epoch:
                    missed = self.history.missed(pid, sub.epoch, position[1], sub.seq)
                for event in missed or []:
                    self._reply(tab_id, link, event)
                replayed = len(missed) if missed is not None else 0
                self._reply(tab_id, link, {"type": "subscribed", "projectId": pid, "recovered": missed is not None, "replayed": replayed, "seq": sub.seq, "epoch": sub.epoch})
            else:
                keep.append(item)
        self.waiting = keep

    def _drop_waiting(self, tab_id, pid):
        self.waiting = [w for w in self.waiting if not (w[0] == tab_id and (pid is None or w[2] == pid))]


def _release(share):
    for pid in sorted(share.refs):
        share.refs.pop(pid)()
