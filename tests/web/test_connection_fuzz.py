"""Random input sequences against the Runtime: it never raises, and the connection rules hold."""

import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from client.runtime import Runtime
from client_harness import WALL0, make_jwt

STATES = {"idle", "connecting", "live", "reconnecting", "offline", "suspended", "auth-required"}

advance = st.tuples(st.just("advance"), st.integers(min_value=0, max_value=90_000))
closed = st.tuples(st.just("closed"), st.sampled_from([1000, 1001, 1006, 1008, 1011, 1012, 1013, 4000, 4008, 4401, 4403, 4409, 4429]))
step = st.one_of(
    advance,
    advance,
    closed,
    st.tuples(st.just("visible"), st.booleans()),
    st.tuples(st.just("online"), st.booleans()),
    st.tuples(st.just("start"), st.none()),
    st.tuples(st.just("stop"), st.none()),
    st.tuples(st.just("opened"), st.booleans()),
    st.tuples(st.just("connected"), st.booleans()),
    st.tuples(st.just("message"), st.sampled_from(['{"type":"ping"}', '{"type":"pong"}', "garbage", '{"type":"restart","reconnectWithinMs":300}'])),
    st.tuples(st.just("closed"), st.sampled_from([1000, 1001, 1006, 1008, 1011, 1012, 1013, 4000, 4008, 4401, 4403, 4409, 4429])),
    st.tuples(st.just("visible"), st.booleans()),
    st.tuples(st.just("online"), st.booleans()),
    st.tuples(st.just("retry"), st.none()),
    st.tuples(st.just("token"), st.sampled_from(["good", "none", "expired"])),
)


@settings(max_examples=400, deadline=None)
@example(steps=[("start", None), ("closed", 1006), ("visible", False), ("advance", 5000)], r=0.5)
@example(steps=[("start", None), ("closed", 1006), ("online", False), ("advance", 5000), ("visible", True)], r=0.5)
@example(steps=[("start", None), ("connected", True), ("visible", False), ("advance", 90000), ("closed", 4401), ("retry", None)], r=0.1)
@example(steps=[("start", None), ("online", False), ("retry", None), ("closed", 1001)], r=0.0)
@example(steps=[("start", None), ("online", False), ("retry", None), ("closed", 1001), ("advance", 0)], r=0.0)
@given(steps=st.lists(step, max_size=60), r=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_random_inputs_keep_the_connection_rules(steps, r):
    tokens = {"good": make_jwt(exp_s=WALL0 // 1000 + 10**6), "none": None, "expired": make_jwt(exp_s=WALL0 // 1000 - 1)}
    box = {"token": tokens["good"], "now": 0.0}
    rt = Runtime({}, lambda: box["token"], rand=lambda: r, wall_clock=lambda: WALL0 + box["now"])
    open_sids = []  # sockets the core believes are open or opening
    hidden = False
    online = True

    def run(cmds, cause):
        for cmd in cmds:
            if cmd[0] == "open":
                assert open_sids == [], "a second socket while one is still in use"
                assert cause in ("start", "retry", "visible", "online", "timer", "closed"), cause
                if cause in ("timer", "closed", "online"):
                    assert not hidden, "dialled while hidden"
                if cause in ("timer", "closed", "visible"):
                    assert online, "dialled while offline"
                assert json.dumps(cmd[3]).count("bearer.") == 1 and box["token"] not in cmd[2]
                open_sids.append(cmd[1])
            elif cmd[0] == "close":
                assert cmd[1] in open_sids
                assert cmd[2] == 1000 or 3000 <= cmd[2] <= 4999  # the only codes a browser accepts
                open_sids.remove(cmd[1])
            elif cmd[0] == "send":
                assert cmd[1] in open_sids
        status = rt.status
        assert status["state"] in STATES
        if status["state"] in ("idle", "offline", "suspended", "auth-required") or status["phase"] == "waiting":
            assert open_sids == []
        timer = rt.get_timer()
        assert timer is None or timer >= 0

    for kind, arg in steps:
        now = box["now"]
        sid = open_sids[-1] if open_sids else "s0"
        if kind == "advance":
            end = now + arg
            while rt.get_timer() is not None and rt.get_timer() <= end:
                box["now"] = max(box["now"], rt.get_timer())
                rt.handle_timer(box["now"])
                run(rt.commands(), "timer")
            box["now"] = end
        elif kind == "start":
            rt.start(now)
        elif kind == "stop":
            rt.stop(now)
        elif kind == "opened":
            rt.socket_opened(sid if arg else "stale", now)
        elif kind == "connected":
            rt.socket_message(sid if arg else "stale", '{"type":"connected","heartbeatMs":1000}', now)
        elif kind == "message":
            rt.socket_message(sid, arg, now)
        elif kind == "closed":
            rt.socket_closed(sid, arg, "", now)
            if sid in open_sids:
                open_sids.remove(sid)
        elif kind == "visible":
            hidden = not arg
            rt.visibility_changed(arg, now)
        elif kind == "online":
            online = arg
            rt.network_changed(arg, now)
        elif kind == "retry":
            rt.retry_now(now)
        elif kind == "token":
            box["token"] = tokens[arg]
        run(rt.commands(), kind)
