"""Test driver for `client.runtime.Runtime`: a float clock, a scripted server side, recorded commands.

`Driver.advance(ms)` fires every deadline that falls inside the step, in order, the way the browser
adapter does (`handle_timer(get_timer())`); `connect()` plays a full handshake.
"""

import base64
import json

from client.runtime import Runtime

URL = "ws://test/ws/status-updates"
WALL0 = 1_764_000_000_000  # epoch ms at now == 0


def make_jwt(exp_s=None, sub="u-alice"):
    def enc(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    payload = {"sub": sub}
    if exp_s is not None:
        payload["exp"] = exp_s
    return enc({"alg": "HS256", "typ": "JWT"}) + "." + enc(payload) + ".c2ln"


class Const:
    """rand() returning a fixed value (or cycling through several)."""

    def __init__(self, *values):
        self.values = values or (0.5,)
        self.i = 0

    def __call__(self):
        value = self.values[self.i % len(self.values)]
        self.i += 1
        return value


class Driver:
    def __init__(self, config=None, rand=None, token="default", wall=True):
        self.now = 0.0
        self.token = make_jwt(exp_s=(WALL0 // 1000) + 86400) if token == "default" else token
        self.rt = Runtime(
            config or {},
            lambda: self.token,
            rand=rand if rand is not None else Const(0.5),
            ws_url=URL,
            wall_clock=(lambda: WALL0 + self.now) if wall else None,
        )
        self.log = []  # every command ever produced
        self.statuses = []
        self.rt.on_status(self.statuses.append)

    # ---------------------------------------------------------------- time
    def pump(self):
        cmds = self.rt.commands()
        self.log.extend(cmds)
        return cmds

    def advance(self, ms):
        return self.advance_to(self.now + ms)

    def advance_to(self, t):
        out = []
        while True:
            deadline = self.rt.get_timer()
            if deadline is None or deadline > t:
                break
            self.now = max(self.now, deadline)
            self.rt.handle_timer(self.now)
            out.extend(self.pump())
        self.now = t
        return out

    # ---------------------------------------------------------------- inputs
    def start(self):
        self.rt.start(self.now)
        return self.pump()

    def opened(self, sid=None):
        self.rt.socket_opened(sid or self.sid, self.now)
        return self.pump()

    def server(self, obj, sid=None):
        text = obj if isinstance(obj, str) else json.dumps(obj)
        self.rt.socket_message(sid or self.sid, text, self.now)
        return self.pump()

    def closed(self, code, reason="", sid=None):
        self.rt.socket_closed(sid or self.sid, code, reason, self.now)
        return self.pump()

    def connected(self, sid=None, heartbeat_ms=None, epoch="e0"):
        msg = {"type": "connected", "clientId": "c-1", "userId": "u-alice", "epoch": epoch}
        if heartbeat_ms is not None:
            msg["heartbeatMs"] = heartbeat_ms
        return self.server(msg, sid)

    def connect(self, heartbeat_ms=None):
        """Open + connected on the socket most recently dialled (dials first when idle)."""
        if self.rt.status["state"] == "idle":
            self.start()
        self.opened()
        return self.connected(heartbeat_ms=heartbeat_ms)

    def fetch_result(self, rid, status, body, sid=None):
        text = body if (body is None or isinstance(body, str)) else json.dumps(body)
        self.rt.fetch_result(rid, status, text, self.now)
        return self.pump()

    # ---------------------------------------------------------------- inspection
    @property
    def state(self):
        return self.rt.status["state"]

    @property
    def sid(self):
        opens = [c for c in self.log if c[0] == "open"]
        return opens[-1][1] if opens else None

    def opens(self, cmds=None):
        return [c for c in (self.log if cmds is None else cmds) if c[0] == "open"]

    def sent(self, cmds=None, sid=None):
        return [json.loads(c[2]) for c in (self.log if cmds is None else cmds) if c[0] == "send" and (sid is None or c[1] == sid)]

    def closes(self, cmds=None):
        return [c for c in (self.log if cmds is None else cmds) if c[0] == "close"]

    def fetches(self, cmds=None):
        return [c for c in (self.log if cmds is None else cmds) if c[0] == "fetch"]

    def records(self, cmds=None, event=None):
        return [c[1] for c in (self.log if cmds is None else cmds) if c[0] == "log" and (event is None or c[1]["event"] == event)]
