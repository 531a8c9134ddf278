"""Portable scenario for the token's life (`client.session.Session`): the refresh schedule, network errors and
backoff, wake-ups, a laptop that slept past the expiry, another tab's token, a refused refresh, a revoked
session, sign-out. Prints a deterministic trace; test_portable.py requires it to be identical on CPython,
MicroPython and Pyodide."""

import base64

from client import session as sessionmod
from client.session import Session
from client.signout import SignOuts
from scenario import Lcg, canon

WALL0 = 1764000000000  # epoch ms at now == 0


def _b64(text):
    return base64.b64encode(text.encode()).decode().replace("+", "-").replace("/", "_").rstrip("=")


class Story:
    def __init__(self, emit, seed):
        self.emit = emit
        self.now = 0
        self.wall_shift = 0  # the wall clock may move while `now` stands still (sleep)
        self.names = {}
        self.issued = 0
        self.s = Session(self.wall, rand=Lcg(seed))

    def wall(self):
        return WALL0 + self.wall_shift + self.now

    def token(self, life_s, sub="alice"):
        """A JWT text built by hand (json.dumps orders keys differently on MicroPython)."""
        self.issued += 1
        iat = int(self.wall() // 1000)
        payload = '{"sub":"%s","iat":%d,"exp":%d,"jti":"j%d"}' % (sub, iat, iat + life_s, self.issued)
        tok = _b64('{"alg":"HS256"}') + "." + _b64(payload) + ".c2ln"
        self.names[tok] = "T" + str(self.issued)
        return tok

    def show(self, value):
        if isinstance(value, str):
            return self.names.get(value, value)
        if isinstance(value, (list, tuple)):
            return [self.show(v) for v in value]
        return value

    def flush(self, label):
        out = []
        for cmd in self.s.commands():
            if cmd[0] == "log":
                record = dict(cmd[1])
                for key in ("expiresAt",):
                    if record.get(key) is not None:
                        record[key] = record[key] - WALL0
                out.append(["log", record])
            else:
                out.append(self.show(list(cmd)))
        timer = self.s.get_timer()
        self.emit("t=" + canon(self.now) + " " + label + " " + canon(out))
        self.emit("  state=" + self.s.state + " timer=" + canon(timer) + " token=" + canon(self.show(self.s.token)))
        return [c for c in out if c[0] != "log"]

    def advance_to_timer(self, label):
        self.now = self.s.get_timer()
        self.s.handle_timer(self.now)
        return self.flush(label)

    def ok(self, rid, life_s, label):
        tok = self.token(life_s)
        body = '{"token":"%s","expiresAt":0,"user":{"id":"alice"}}' % tok
        self.s.refreshed(rid, 200, body, self.now)
        return self.flush(label)


def run(emit):
    st = Story(emit, 11)
    s = st.s
    s.start(st.token(4), st.now)
    st.flush("session: signed in, 4 s token")
    (cmd,) = st.advance_to_timer("session: planned refresh")
    st.now += 120
    st.ok(cmd[1], 4, "session: refreshed")
    (cmd,) = st.advance_to_timer("session: planned refresh")
    s.refreshed(cmd[1], 0, "", st.now)
    st.flush("session: network error")
    (cmd,) = st.advance_to_timer("session: retry")
    s.refreshed(cmd[1], 503, '{"error":"unavailable"}', st.now)
    st.flush("session: server busy")
    (cmd,) = st.advance_to_timer("session: retry")
    st.ok(cmd[1], 4, "session: refreshed after errors")
    st.now += 500
    s.wake(st.now, "visible")
    (cmd,) = st.flush("session: visible, expires within 60 s")
    s.wake(st.now, "online")
    st.flush("session: online while refreshing")
    st.ok(cmd[1], 4, "session: refreshed")

    st.wall_shift += 3600000  # the laptop slept an hour: the wall clock moved, the timer did not fire
    s.link_state("auth-required", st.now)  # the resume dial found the token expired
    (cmd,) = st.flush("session: refused link, token expired")
    s.link_state("auth-required", st.now)
    st.flush("session: same refusal again")
    st.ok(cmd[1], 4, "session: one refresh")
    s.link_state("connecting", st.now)
    s.link_state("live", st.now)
    st.flush("session: live again")

    st.now += 1000
    other = st.token(4)
    emit("  fresher " + canon([s.fresher(other), s.fresher(s.token), s.fresher(None)]))
    s.token_seen(other, st.now)
    st.flush("session: another tab refreshed")
    (cmd,) = st.advance_to_timer("session: planned refresh")
    s.refreshed(cmd[1], 401, '{"error":"refresh_failed","reason":"revoked"}', st.now)
    st.flush("session: refresh refused, token still works")
    st.now = st.now + 2000
    s.link_state("auth-required", st.now)
    (cmd,) = st.flush("session: the server closed 4401 at exp")
    s.refreshed(cmd[1], 401, '{"error":"refresh_failed","reason":"revoked"}', st.now)
    st.flush("session: refused again")
    emit("  message " + canon(sessionmod.message("refresh_failed")))

    st = Story(emit, 12)
    st.s.start(st.token(900), st.now)
    st.now += 5000
    st.s.link_state("auth-required", st.now)
    st.flush("session: revoked, token not expired")
    emit("  message " + canon(sessionmod.message("rejected")))

    st = Story(emit, 13)
    st.s.start(st.token(900), st.now)
    st.flush("session: signed in, 900 s token")
    st.now += 1000
    st.s.wake(st.now, "visible")
    st.flush("session: visible, far from expiry")
    st.s.sign_out(st.now)
    st.flush("session: signed out here")

    st = Story(emit, 14)
    st.s.start(st.token(900), st.now)
    st.s.token_seen(None, st.now)
    st.flush("session: storage emptied by another tab")
    emit("  message " + canon(sessionmod.message("elsewhere")))

    signouts(emit)


def signouts(emit):
    """Sign-outs the server has not heard yet (`client.signout.SignOuts`)."""
    core = SignOuts()

    def flush(label, now):
        emit("t=" + canon(now) + " signout: " + label + " " + canon([list(c) for c in core.commands()]))
        emit("  owed=" + canon(core.owed) + " timer=" + canon(core.get_timer()))

    core.start(["T0", 5, "T0"], 0)
    flush("page load with one owed", 0)
    core.sign_out("T1", 10)
    flush("signed out offline", 10)
    core.answered("T1", 0, 20)
    core.answered("T0", 0, 20)
    flush("no answers", 20)
    core.handle_timer(core.get_timer())
    flush("retry", 10020)
    core.wake(["T2"], 10030, "online")
    flush("online, another tab owes T2", 10030)
    for token, status in (("T0", 204), ("T1", 401), ("T2", 204)):
        core.answered(token, status, 10040)
    flush("answered", 10040)


def main():
    lines = []
    run(lines.append)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
