"""Portable scenario: drives `client.runtime.Runtime` through connect, drops, events, gaps, cache
fetches, mutations, suspension and wake-ups, and prints a deterministic trace.

Pure Python that runs unchanged on CPython and MicroPython: `run(emit)` calls emit(line) for each
trace line; `main()` prints them. test_portable.py runs it under both and compares the traces.
"""

import json

from client import logtext
from client.runtime import Runtime

CONFIG = {
    "heartbeatIntervalMs": 1000,
    "heartbeatMisses": 2,
    "reconnectBaseMs": 100,
    "reconnectMaxMs": 1600,
    "reconnectMaxAttempts": 4,
    "connectTimeoutMs": 2000,
    "suspendedRetryMs": 10000,
    "restartWindowMs": 800,
    "reconnectFloorMs": 25,
    "stableAfterMs": 500,
}
HEX = "0123456789abcdef"


class Lcg:
    """Deterministic rand() in [0, 1) (CPython and MicroPython seed `random` differently)."""

    def __init__(self, seed):
        self.state = seed

    def __call__(self):
        self.state = (self.state * 1103515245 + 12345) % 2147483648
        return self.state / 2147483648


def canon(value):
    """Canonical text: sorted keys, integral floats as ints, ASCII-only strings."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == int(value):
            return str(int(value))
        return "%.3f" % value
    if isinstance(value, str):
        out = ['"']
        for ch in value:
            code = ord(ch)
            if ch == '"' or ch == "\\":
                out.append("\\" + ch)
            elif code < 32 or code > 126:
                out.append("\\u" + HEX[(code >> 12) & 15] + HEX[(code >> 8) & 15] + HEX[(code >> 4) & 15] + HEX[code & 15])
            else:
                out.append(ch)
        out.append('"')
        return "".join(out)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(canon(v) for v in value) + "]"
    if isinstance(value, dict):
        keys = sorted(value.keys())
        return "{" + ",".join(canon(k) + ":" + canon(value[k]) for k in keys) + "}"
    return canon(str(value))


def story(sid, status, ver):
    return {"id": sid, "projectId": "apollo", "title": "s" + str(sid), "status": status, "assignee": None, "updatedAt": ver}


class Scenario:
    def __init__(self, emit):
        self.emit = emit
        self.now = 0.0
        self.token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LWFsaWNlIiwiZXhwIjo0MTAyNDQ0ODAwfQ.c2ln"
        self.rt = Runtime(CONFIG, lambda: self.token, rand=Lcg(42), ws_url="ws://test/ws/status-updates", wall_clock=lambda: 1764000000000 + self.now)
        self.fetches = []
        self.sid = None
        self.rt.on_status(lambda st: self.emit("  status " + canon([st["state"], st["attempt"], st["nextRetryAt"], st["closeCode"]])))
        self.rt.on_mutation(lambda rec: self.emit("  mutation " + canon(rec)))
        self.rt.on_auth(lambda rec: self.emit("  auth " + canon(rec)))

    def step(self, label):
        self.emit("t=" + canon(self.now) + " " + label)

    def drain(self):
        for cmd in self.rt.commands():
            kind = cmd[0]
            if kind == "open":
                self.sid = cmd[1]
                self.emit("  open " + canon([cmd[1], cmd[2], cmd[3][0]]))
            elif kind == "send":
                self.emit("  send " + canon([cmd[1], json.loads(cmd[2])]))
            elif kind == "fetch":
                self.fetches.append(cmd)
                body = json.loads(cmd[4]) if cmd[4] is not None else None
                self.emit("  fetch " + canon([cmd[1], cmd[2], cmd[3], body, cmd[5]]))
            elif kind == "log":
                rec = cmd[1]
                self.emit("  log " + canon(rec))
                level, text = logtext.line(rec)
                self.emit("  console." + level + " " + canon(text) + " " + canon(logtext.fields(rec)))
            else:
                self.emit("  " + canon(list(cmd)))
        self.emit("  timer " + canon(self.rt.get_timer()))

    def advance(self, ms):
        end = self.now + ms
        while True:
            deadline = self.rt.get_timer()
            if deadline is None or deadline > end:
                break
            self.now = deadline
            self.step("timer")
            self.rt.handle_timer(self.now)
            self.drain()
        self.now = end

    def server(self, msg):
        self.step("recv " + canon(msg))
        self.rt.socket_message(self.sid, json.dumps(msg), self.now)
        self.drain()

    def handshake(self):
        self.step("socket open")
        self.rt.socket_opened(self.sid, self.now)
        self.drain()
        self.server({"type": "connected", "clientId": "c-1", "userId": "u-alice", "heartbeatMs": 1000, "epoch": "e1"})

    def close(self, code, reason=""):
        self.step("socket closed " + str(code))
        self.rt.socket_closed(self.sid, code, reason, self.now)
        self.drain()

    def reply(self, path_end, status, body):
        for cmd in self.fetches:
            if cmd[3].endswith(path_end):
                self.fetches.remove(cmd)
                self.step("fetch result " + cmd[1] + " " + str(status))
                self.rt.fetch_result(cmd[1], status, None if body is None else json.dumps(body), self.now)
                self.drain()
                return
        self.emit("  MISSING fetch " + path_end)

    def event(self, seq, status, ver, epoch="e1", mid=None, sid=1):
        data = {"storyId": sid, "from": "todo", "to": status, "story": story(sid, status, ver)}
        if mid is not None:
            data["clientMutationId"] = mid
        self.server({"type": "event", "eventType": "story.status.changed", "projectId": "apollo", "seq": seq, "epoch": epoch, "timestamp": 1, "data": data})


def run(emit):
    s = Scenario(emit)
    rt = s.rt
    s.step("subscribe apollo, zeus; watch stories + project")
    rt.subscribe("apollo", lambda e: emit("  handler apollo seq=" + canon(e["seq"]) + " own=" + canon(e["own"])), 0.0)
    rt.subscribe("zeus", lambda e: emit("  handler zeus seq=" + canon(e["seq"])), 0.0)
    rt.watch(("stories", "apollo"), lambda e: emit("  entry stories " + canon([e.state, e.stale, e.fetching, e.data])), 0.0)
    rt.watch(("project", "apollo"), lambda e: emit("  entry project " + canon([e.state, e.stale, e.data])), 0.0)
    s.drain()
    s.step("start")
    rt.start(s.now)
    s.drain()
    s.advance(30)
    s.handshake()
    s.reply("/apollo/stories", 200, [story(1, "todo", 10), story(2, "todo", 11)])
    s.reply("/api/projects/apollo", 200, {"id": "apollo", "name": "Apollo", "counts": {"todo": 2, "done": 0, "openEscalations": 0}, "updatedAt": 5})
    s.server({"type": "subscribed", "projectId": "apollo", "recovered": False, "replayed": 0, "seq": 3, "epoch": "e1"})
    s.server({"type": "subscribed", "projectId": "zeus", "recovered": False, "replayed": 0, "seq": 0, "epoch": "e1"})
    s.advance(300)
    s.reply("/apollo/stories", 200, [story(1, "todo", 10), story(2, "todo", 11)])
    s.reply("/api/projects/apollo", 200, {"id": "apollo", "name": "Apollo", "counts": {"todo": 2, "done": 0, "openEscalations": 0}, "updatedAt": 5})
    s.server({"type": "ping"})
    s.advance(40)
    s.server({"type": "pong"})  # our own ping's answer: the round trip
    emit("  link " + canon([rt.connection.client_id, rt.connection.rtt_ms]))
    s.event(4, "review", 20)
    s.event(4, "review", 20)  # duplicate
    s.event(7, "done", 30, sid=2)  # gap
    s.advance(300)
    s.reply("/apollo/stories", 200, [story(1, "review", 20), story(2, "done", 30)])
    s.reply("/api/projects/apollo", 200, {"id": "apollo", "name": "Apollo", "counts": {"todo": 0, "review": 1, "done": 1, "openEscalations": 0}, "updatedAt": 6})
    s.advance(600)  # stable: backoff resets
    s.step("move story 1 -> done (optimistic), echo first, then answer")
    mid = rt.move_story("apollo", 1, "done", s.now)
    s.drain()
    s.event(8, "done", 40, mid=mid)
    s.reply("/api/stories/1", 200, story(1, "done", 40))
    s.advance(300)
    s.reply("/apollo/stories", 200, [story(1, "done", 40), story(2, "done", 30)])
    s.reply("/api/projects/apollo", 200, {"id": "apollo", "name": "Apollo", "counts": {"done": 2, "openEscalations": 0}, "updatedAt": 7})
    s.step("move story 2 -> blocked, server refuses")
    rt.move_story("apollo", 2, "blocked", s.now)
    s.drain()
    s.reply("/api/stories/2", 422, {"error": "invalid", "message": "no"})
    s.advance(300)
    s.reply("/apollo/stories", 200, [story(1, "done", 40), story(2, "done", 30)])
    s.reply("/api/projects/apollo", 200, {"id": "apollo", "name": "Apollo", "counts": {"done": 2, "openEscalations": 0}, "updatedAt": 7})
    s.step("network drop (1006), reconnect with since + hello; apollo recovered, zeus not")
    s.close(1006)
    s.advance(5000)
    s.handshake()
    s.event(9, "todo", 50, sid=1)
    s.server({"type": "subscribed", "projectId": "apollo", "recovered": True, "replayed": 1, "seq": 9, "epoch": "e1"})
    s.server({"type": "subscribed", "projectId": "zeus", "recovered": False, "replayed": 0, "seq": 4, "epoch": "e1"})
    s.advance(300)
    s.step("accept-then-close loop")
    for _ in range(3):
        s.close(1011)
        s.advance(rt.status["nextRetryAt"] - s.now)
        s.handshake()
        s.advance(100)  # connected, but closed again before it counts as stable
    s.step("retry_now from suspended, then restart hint + 1012")
    s.close(1011)
    rt.retry_now(s.now)
    s.drain()
    s.handshake()
    s.advance(600)
    s.server({"type": "restart", "reconnectWithinMs": 400})
    s.close(1012, "service restart")
    s.advance(500)
    s.handshake()
    s.step("hidden: silent socket survives; visible: probe, no answer, redial")
    rt.visibility_changed(False, s.now)
    s.drain()
    s.advance(10000)
    rt.visibility_changed(True, s.now)
    s.drain()
    s.advance(3500)
    s.handshake()
    s.step("offline / online")
    rt.network_changed(False, s.now)
    s.drain()
    s.advance(60000)
    rt.network_changed(True, s.now)
    s.drain()
    s.handshake()
    s.step("dashboard.v2 batch: a change and a duplicate; a malformed batch; in-band token refresh")
    change = {"storyId": 2, "from": "done", "to": "review", "story": story(2, "review", 60)}
    s.server({"type": "batch", "events": [
        {"type": "event", "eventType": "story.status.changed", "projectId": "apollo", "seq": 10, "epoch": "e1", "timestamp": 2, "data": change},
        {"type": "event", "eventType": "project.updated", "projectId": "apollo", "seq": 11, "epoch": "e1", "timestamp": 2, "data": {}},
        {"type": "event", "eventType": "project.updated", "projectId": "apollo", "seq": 11, "epoch": "e1", "timestamp": 2, "data": {}},
    ]})
    s.server({"type": "batch", "events": [{"type": "pong"}]})
    emit("  send_auth " + canon(rt.send_auth("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LWFsaWNlIn0.c2ln", s.now)))
    s.drain()
    s.server({"type": "auth", "expiresAt": 1764003600000})
    s.step("page frozen (pagehide/freeze): close 4001, nothing runs; back (pageshow/resume): dial at once, since, no hello")
    rt.lifecycle_changed(True, s.now)
    s.drain()
    s.advance(120000)
    rt.lifecycle_changed(False, s.now)
    s.drain()
    s.handshake()
    s.event(10, "review", 60, sid=1)
    s.server({"type": "subscribed", "projectId": "apollo", "recovered": True, "replayed": 1, "seq": 10, "epoch": "e1"})
    s.server({"type": "subscribed", "projectId": "zeus", "recovered": True, "replayed": 0, "seq": 4, "epoch": "e1"})
    s.advance(300)
    s.step("connect timeout, then 4401 -> auth-required")
    s.close(1006)
    s.advance(2500)
    s.advance(100)
    s.handshake()
    s.close(4401, "token expired")
    s.advance(60000)
    s.step("logout")
    rt.stop(s.now)
    s.drain()
    stats = rt.stats
    emit("stats " + canon(stats))
    run_pending(emit)


def run_pending(emit):
    """Pending changes (client.pending): queued offline, kept across a reload, sent in order when live with the
    original ids, a lost answer sent again, a conflict dropped with the server's story."""
    emit("pending")
    stored = []
    pages = []

    def page():
        s = Scenario(emit)
        s.rt.enable_pending(stored[-1] if stored else None, s.now)
        s.rt.pending.on_change(lambda text, count: (stored.append(text), emit("  stored " + str(count) + " " + canon(json.loads(text)))))
        pages.append(s)
        return s

    def live_page(stories):
        s = page()
        s.rt.start(s.now)
        s.drain()
        s.handshake()
        s.rt.watch(("stories", "apollo"), lambda e: emit("  stories " + canon(e.data)), s.now)
        s.drain()
        s.reply("/apollo/stories", 200, stories)
        return s

    s = live_page([story(1, "todo", 5), story(2, "todo", 5)])
    rt = s.rt
    s.step("offline: two moves and an escalation")
    rt.network_changed(False, s.now)
    s.drain()
    rt.move_story("apollo", 1, "review", s.now)
    rt.move_story("apollo", 2, "done", s.now)
    rt.create_escalation("apollo", "help", s.now)
    s.drain()
    s.step("reload, still offline")
    s = page()
    rt = s.rt
    rt.network_changed(False, s.now)
    rt.start(s.now)
    rt.watch(("stories", "apollo"), lambda e: emit("  stories " + canon(e.data)), s.now)
    s.drain()
    s.reply("/apollo/stories", 0, None)
    s.step("online")
    rt.network_changed(True, s.now)
    s.drain()
    s.handshake()
    s.reply("/apollo/stories", 200, [story(1, "todo", 5), story(2, "todo", 5)])
    s.reply("/stories/1", 0, None)
    s.advance(100)
    s.reply("/stories/1", 200, story(1, "review", 9))
    s.reply("/stories/2", 409, {"error": "conflict", "current": story(2, "blocked", 8)})
    s.event(1, "review", 9, sid=1)
    raised = {"id": 5, "projectId": "apollo", "title": "help", "status": "open", "createdBy": "u-alice", "createdAt": 10, "resolvedAt": None}
    s.server({"type": "event", "eventType": "escalation.created", "projectId": "apollo", "seq": 2, "epoch": "e1", "timestamp": 3,
              "data": {"escalation": raised, "clientMutationId": rt.pending.queue.ids()[0]}})  # the echo clears the mark
    s.reply("/apollo/escalations", 201, raised)
    s.advance(1000)
    emit("  pending left " + canon(rt.pending.queue.ids()))
    s.step("another page, live: a move, a second before its answer, the first answer lost")
    stored.clear()
    s = live_page([story(1, "review", 9)])
    rt = s.rt
    first = rt.move_story("apollo", 1, "done", s.now)
    s.drain()
    rt.move_story("apollo", 1, "blocked", s.now)
    s.drain()
    s.reply("/stories/1", 0, None)
    emit("  queue first " + canon(rt.pending.queue.ids()[0] == first) + " of " + canon(rt.pending.queue.count))
    s.advance(100)
    s.reply("/stories/1", 200, story(1, "done", 11))
    s.reply("/stories/1", 200, story(1, "blocked", 12))
    emit("  pending left " + canon(rt.pending.queue.ids()))


def main():
    lines = []
    run(lines.append)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
