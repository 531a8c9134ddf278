"""One browser profile in a box, for the tabs protocol: several tabs (each a `Runtime` wrapped in
`client.tabs.Tabs`), one BroadcastChannel, Web Locks with `steal`, page freezing, and a fake server with
per-project history and resume, all on one float clock.

Pure Python that runs unchanged on CPython (tests/web/test_tabs.py) and MicroPython (the trace of
tabs_scenario.py). What it models was measured in Chromium (docs/browser.md, "Tabs"): the channel
delivers in order to every other tab, never to the sender, and also to a frozen page; a frozen page's
timers, socket frames and lock callbacks wait until it is unfrozen; a frozen page keeps its lock; `steal`
grants at once and the old holder learns it (AbortError) when it runs again; a closed or crashed page's
locks are released and the next waiting request is granted.
"""

import json

from client.runtime import Runtime
from client.tabs import Tabs

WALL0 = 1764000000000
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LWFsaWNlIiwiZXhwIjo0MTAyNDQ0ODAwfQ.c2ln"
CONFIG = {
    "heartbeatIntervalMs": 1000,
    "heartbeatMisses": 2,
    "reconnectBaseMs": 100,
    "reconnectMaxMs": 800,
    "reconnectMaxAttempts": 4,
    "connectTimeoutMs": 2000,
    "suspendedRetryMs": 10000,
    "restartWindowMs": 400,
    "reconnectFloorMs": 25,
    "stableAfterMs": 500,
    "tabsHeartbeatMs": 500,
    "tabsTimeoutMs": 2500,
    "tabsHiddenTimeoutMs": 20000,
    "tabsStaggerMs": 500,
}


class Lcg:
    """Deterministic rand() in [0, 1) on every interpreter."""

    def __init__(self, seed):
        self.state = seed

    def __call__(self):
        self.state = (self.state * 1103515245 + 12345) % 2147483648
        return self.state / 2147483648


def story(pid, sid, status, ver):
    return {"id": sid, "projectId": pid, "title": "s" + str(sid), "status": status, "assignee": None, "updatedAt": ver}


class Project:
    __slots__ = ("pid", "epoch", "seq", "history", "stories", "ver")

    def __init__(self, pid, epoch="e1"):
        self.pid = pid
        self.epoch = epoch
        self.seq = 0
        self.history = []
        self.stories = [story(pid, 1, "todo", 1), story(pid, 2, "todo", 2)]
        self.ver = 10


class ServerSocket:
    __slots__ = ("tab", "sid", "subs", "open")

    def __init__(self, tab, sid):
        self.tab = tab
        self.sid = sid
        self.subs = []
        self.open = True


class Server:
    """Speaks enough of dashboard.v1: connected, subscribe with since (replay, then subscribed), events, pings."""

    def __init__(self, world):
        self.world = world
        self.projects = {}
        self.order = []
        self.sockets = []
        self.accepted = 0
        self.up = True
        self.subscribes = []  # (tab name, project id, since) as received
        self.ping_ms = 1000
        self.next_ping = 1000.0

    def project(self, pid):
        if pid not in self.projects:
            self.projects[pid] = Project(pid)
            self.order.append(pid)
        return self.projects[pid]

    def active(self):
        return len([s for s in self.sockets if s.open])

    def connect(self, tab, sid):
        if not self.up:
            self.world.later(tab, "socket", lambda: tab.tabs.socket_closed(sid, 1006, "", self.world.now))
            return
        sock = ServerSocket(tab, sid)
        self.sockets.append(sock)
        self.accepted += 1
        self.send(sock, None, "open")
        self.send(sock, {"type": "connected", "clientId": "c" + str(self.accepted), "userId": "u-alice", "heartbeatMs": 1000, "epoch": "b1"})

    def find(self, tab, sid):
        for sock in self.sockets:
            if sock.tab is tab and sock.sid == sid and sock.open:
                return sock
        return None

    def send(self, sock, msg, kind="message"):
        tab = sock.tab
        sid = sock.sid
        if kind == "open":
            self.world.later(tab, "socket", lambda: tab.tabs.socket_opened(sid, self.world.now))
            return
        text = json.dumps(msg)
        self.world.later(tab, "socket", lambda: tab.tabs.socket_message(sid, text, self.world.now))

    def receive(self, tab, sid, text):
        sock = self.find(tab, sid)
        if sock is None:
            return
        msg = json.loads(text)
        action = msg.get("action")
        if action == "subscribe":
            pid = msg["projectId"]
            since = msg.get("since")
            self.subscribes.append((tab.name, pid, None if since is None else [since["epoch"], since["seq"]]))
            project = self.project(pid)
            if pid not in sock.subs:
                sock.subs.append(pid)
            replay = []
            recovered = False
            if since is not None and since["epoch"] == project.epoch and since["seq"] <= project.seq:
                first = project.seq - len(project.history) + 1
                if since["seq"] + 1 >= first:
                    recovered = True
                    replay = [e for e in project.history if e["seq"] > since["seq"]]
            for event in replay:
                self.send(sock, event)
            self.send(sock, {"type": "subscribed", "projectId": pid, "recovered": recovered, "replayed": len(replay), "seq": project.seq, "epoch": project.epoch})
        elif action == "unsubscribe":
            if msg["projectId"] in sock.subs:
                sock.subs.remove(msg["projectId"])
        elif action == "ping":
            self.send(sock, {"type": "pong"})

    def disconnect(self, tab, sid):
        sock = self.find(tab, sid)
        if sock is not None:
            sock.open = False
            self.world.later(tab, "socket", lambda: tab.tabs.socket_closed(sid, 1000, "", self.world.now))

    def kill(self):
        """SIGKILL: every socket drops with 1006; nothing is accepted until `restart()`."""
        self.up = False
        for sock in self.sockets:
            if sock.open:
                sock.open = False
                tab = sock.tab
                sid = sock.sid
                self.world.later(tab, "socket", lambda tab=tab, sid=sid: tab.tabs.socket_closed(sid, 1006, "", self.world.now))

    def restart(self):
        self.up = True

    def publish(self, pid, story_id, status):
        project = self.project(pid)
        project.seq += 1
        project.ver += 1
        for item in project.stories:
            if item["id"] == story_id:
                item["status"] = status
                item["updatedAt"] = project.ver
        data = {"storyId": story_id, "to": status, "story": story(pid, story_id, status, project.ver)}
        event = {"type": "event", "eventType": "story.status.changed", "projectId": pid, "seq": project.seq, "epoch": project.epoch, "timestamp": WALL0, "data": data}
        project.history.append(event)
        for sock in self.sockets:
            if sock.open and pid in sock.subs:
                self.send(sock, event)
        return event

    def forbid(self, pid):
        """The membership is revoked: every socket holding `pid` gets `forbidden` and loses it."""
        for sock in self.sockets:
            if sock.open and pid in sock.subs:
                sock.subs.remove(pid)
                self.send(sock, {"type": "error", "error": "forbidden", "projectId": pid, "message": "not a member"})

    def subscribed(self, pid):
        """How many open sockets hold `pid`."""
        return len([s for s in self.sockets if s.open and pid in s.subs])

    def ping_all(self):
        for sock in self.sockets:
            if sock.open:
                self.send(sock, {"type": "ping"})

    def rest(self, tab, rid, method, path):
        tab.reads.append(path)
        parts = path.split("/")
        body = None
        if method == "GET" and len(parts) == 5 and parts[4] == "stories":
            body = [dict(s) for s in self.project(parts[3]).stories]
        elif method == "GET" and len(parts) == 5 and parts[4] == "escalations":
            body = []
        status = 200 if body is not None else 404
        text = json.dumps(body if body is not None else {"error": "not_found"})
        self.world.later(tab, "fetch", lambda: tab.tabs.fetch_result(rid, status, text, self.world.now))


class Locks:
    """One exclusive lock name: holder, FIFO queue, steal."""

    def __init__(self, world):
        self.world = world
        self.holder = None  # (tab, lid)
        self.queue = []

    def request(self, tab, lid, steal):
        if steal:
            old = self.holder
            self.holder = (tab, lid)
            if old is not None:
                self.world.later(old[0], "lock", lambda: old[0].tabs.lock_lost(old[1], self.world.now))
            self.world.later(tab, "lock", lambda: tab.tabs.lock_granted(lid, self.world.now))
            return
        self.queue.append((tab, lid))
        self.grant_next()

    def grant_next(self):
        if self.holder is None and self.queue:
            tab, lid = self.queue.pop(0)
            self.holder = (tab, lid)
            self.world.later(tab, "lock", lambda: tab.tabs.lock_granted(lid, self.world.now))

    def release(self, tab, lid):
        if self.holder is not None and self.holder[0] is tab and self.holder[1] == lid:
            self.holder = None
            self.grant_next()
            return
        for item in self.queue:
            if item[0] is tab and item[1] == lid:
                self.queue.remove(item)
                self.world.later(tab, "lock", lambda: tab.tabs.lock_failed(lid, "AbortError", self.world.now))
                return

    def drop_tab(self, tab):
        """The page is gone: its queued requests vanish, its lock is released."""
        self.queue = [item for item in self.queue if item[0] is not tab]
        if self.holder is not None and self.holder[0] is tab:
            self.holder = None
            self.grant_next()


class Tab:
    """One page: its runtime, its Tabs, what it applied and what it read over REST."""

    def __init__(self, world, name, watch, shared=True, seed=1):
        self.world = world
        self.name = name
        self.rt = Runtime(CONFIG, lambda: TOKEN, rand=Lcg(seed), ws_url="ws://test/ws", wall_clock=lambda: WALL0 + world.now)
        self.tabs = Tabs(self.rt, shared=shared, config=CONFIG, tab_id=name, wall_clock=lambda: WALL0 + world.now)
        self.applied = []  # (project id, epoch, seq) of every event handed to the page
        self.reads = []
        self.frozen = False
        self.gone = False
        self.parked = []
        self.unsubs = {}
        self.commands = []
        for pid in watch:
            self.watch(pid)

    def watch(self, pid):
        def on_event(event, pid=pid):
            self.applied.append((pid, event["epoch"], event["seq"]))

        stops = [self.rt.subscribe(pid, on_event, self.world.now), self.rt.watch(("stories", pid), lambda entry: None, self.world.now)]
        self.unsubs[pid] = stops
        self.pump()

    def unwatch(self, pid):
        for stop in self.unsubs.pop(pid):
            stop()
        self.pump()

    def stories(self, pid):
        entry = self.rt.cache.get(("stories", pid))
        return None if entry is None else entry.data

    def status(self):
        return self.tabs.status

    def pump(self):
        if self.gone:
            return
        for cmd in self.tabs.commands():
            self.commands.append(cmd)
            self.world.run(self, cmd)


class World:
    """`channel_to_frozen` False: a frozen page gets channel messages only when unfrozen (Chromium delivers
    them at once; the protocol must not rely on it)."""

    def __init__(self, trace=None, channel_to_frozen=True):
        self.channel_to_frozen = channel_to_frozen
        self.now = 0.0
        self.tabs = []
        self.queue = []  # [(tab, kind, fn)] in delivery order
        self.server = Server(self)
        self.locks = Locks(self)
        self.trace = trace

    def emit(self, line):
        if self.trace is not None:
            self.trace(line)

    def open_tab(self, name, watch=("apollo",), shared=True, seed=1):
        tab = Tab(self, name, watch, shared=shared, seed=seed)
        self.tabs.append(tab)
        tab.tabs.start(self.now)
        tab.pump()
        return tab

    def later(self, tab, kind, fn):
        self.queue.append((tab, kind, fn))

    def run(self, tab, cmd):
        kind = cmd[0]
        if kind == "open":
            self.emit("  " + tab.name + " open " + cmd[1])
            sid = cmd[1]
            self.later(tab, "net", lambda: self.server.connect(tab, sid))
        elif kind == "send":
            self.server.receive(tab, cmd[1], cmd[2])
        elif kind == "close":
            self.emit("  " + tab.name + " close " + cmd[1] + " " + str(cmd[2]))
            self.server.disconnect(tab, cmd[1])
        elif kind == "fetch":
            self.server.rest(tab, cmd[1], cmd[2], cmd[3])
        elif kind == "post":
            msg = json.loads(cmd[1])
            if msg["kind"] not in ("beat", "tab"):
                self.emit("  " + tab.name + " post " + msg["kind"] + (" to " + msg["to"] if msg["to"] else ""))
            for other in self.tabs:
                if other is not tab and not other.gone:
                    text = cmd[1]
                    self.later(other, "channel", lambda other=other, text=text: other.tabs.channel_message(text, self.now))
        elif kind == "lock":
            self.emit("  " + tab.name + " lock " + cmd[1] + (" steal" if cmd[2] else ""))
            self.locks.request(tab, cmd[1], cmd[2])
        elif kind == "unlock":
            self.locks.release(tab, cmd[1])
        elif kind == "log":
            record = cmd[1]
            if record["event"].startswith("tabs."):
                self.emit("  " + tab.name + " " + record["event"] + " role=" + record["role"] + " leader=" + str(record["leader"]))

    def settle(self, limit=100000):
        """Deliver everything queued (and what that causes), in order; frozen tabs park all but the channel."""
        for _ in range(limit):
            if not self.queue:
                return
            tab, kind, fn = self.queue.pop(0)
            if tab.gone:
                continue
            if tab.frozen and (kind != "channel" or not self.channel_to_frozen):
                tab.parked.append((tab, kind, fn))
                continue
            fn()
            tab.pump()
        raise RuntimeError("the world does not settle")

    def advance(self, ms):
        """Run every timer due within `ms` (and everything they cause), in deadline order."""
        end = self.now + ms
        self.settle()
        for _ in range(100000):
            best = None
            if self.server.next_ping <= end:
                best = (self.server.next_ping, None)
            for tab in self.tabs:
                if tab.gone or tab.frozen:
                    continue
                deadline = tab.tabs.get_timer()
                if deadline is not None and deadline <= end and (best is None or deadline < best[0]):
                    best = (deadline, tab)
            if best is None:
                break
            self.now = max(self.now, best[0])
            if best[1] is None:
                self.server.next_ping += self.server.ping_ms
                self.server.ping_all()
            else:
                best[1].tabs.handle_timer(self.now)
                best[1].pump()
            self.settle()
        else:
            raise RuntimeError("a timer keeps firing without moving its deadline")
        self.now = end

    def close_tab(self, tab):
        """The user closes the tab: pagehide (bye, lock released), then it is gone."""
        tab.tabs.lifecycle_changed(True, self.now)  # the adapter's pagehide, then BrowserTabs' own
        tab.tabs.page_hidden(self.now)
        tab.pump()
        tab.gone = True
        self.locks.drop_tab(tab)
        self.forget_sockets(tab)
        self.settle()

    def crash_tab(self, tab):
        """The page dies without a word: its lock is released, its sockets drop."""
        tab.gone = True
        self.locks.drop_tab(tab)
        self.forget_sockets(tab)
        self.settle()

    def forget_sockets(self, tab):
        for sock in self.server.sockets:
            if sock.tab is tab:
                sock.open = False

    def freeze(self, tab):
        tab.frozen = True

    def unfreeze(self, tab):
        """What Chromium does on `resume`: the waiting lock outcomes and replies run first, the frames that
        arrived meanwhile are dropped and the socket closes with 1006."""
        tab.frozen = False
        kept = [item for item in tab.parked if item[1] != "socket"]  # channel messages, if parked, keep their order
        tab.parked = []
        for sock in self.server.sockets:
            if sock.tab is tab and sock.open:
                sock.open = False
                sid = sock.sid
                kept.append((tab, "socket", lambda sid=sid: tab.tabs.socket_closed(sid, 1006, "", self.now)))
        self.queue = kept + self.queue
        self.settle()

    def leaders(self):
        return [t.name for t in self.tabs if not t.gone and t.tabs.role == "leader"]
