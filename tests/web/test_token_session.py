"""The token's life on the client core (`client.session.Session`) with a fake clock: the refresh schedule, wake-ups,
in-band hand-over, one refresh for a refused link with an expired token, and what signs the user out."""

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client import session as sessionmod
from client.session import Session

WALL0 = 1_764_000_000_000  # epoch ms at now == 0 (a whole second)


def jwt(iat_s, life_s, sub="alice"):
    def enc(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return enc({"alg": "HS256"}) + "." + enc({"sub": sub, "iat": iat_s, "exp": iat_s + life_s, "jti": str(iat_s)}) + ".c2ln"


class Clock:
    def __init__(self):
        self.now = 0.0

    def wall(self):
        return WALL0 + self.now


class Rig:
    """A Session on a fake clock; `advance(ms)` fires its deadlines in order, like the adapter's one setTimeout."""

    def __init__(self, life_s=900, rand=0.5):
        self.clock = Clock()
        self.s = Session(self.clock.wall, rand=lambda: rand)
        self.life_s = life_s
        self.token = self.issue()
        self.log = []
        self.s.start(self.token, self.clock.now)
        self.started = self.cmds()

    @property
    def now(self):
        return self.clock.now

    def issue(self, life_s=None, sub="alice"):
        return jwt(int(self.clock.wall() // 1000), self.life_s if life_s is None else life_s, sub)

    def cmds(self):
        out = self.s.commands()
        self.log.extend(out)
        return [c for c in out if c[0] != "log"]

    def records(self, event=None):
        return [c[1] for c in self.log if c[0] == "log" and (event is None or c[1]["event"] == event)]

    def advance(self, ms):
        end = self.clock.now + ms
        out = []
        while True:
            deadline = self.s.get_timer()
            if deadline is None or deadline > end:
                break
            self.clock.now = max(self.clock.now, deadline)
            self.s.handle_timer(self.clock.now)
            out.extend(self.cmds())
        self.clock.now = end
        return out

    def answer(self, rid, status, body=None):
        self.s.refreshed(rid, status, json.dumps(body) if body is not None else "", self.clock.now)
        return self.cmds()

    def ok(self, rid):
        token = self.issue()
        return token, self.answer(rid, 200, {"token": token, "expiresAt": 0, "user": {"id": "alice"}})


def kinds(cmds):
    return [c[0] for c in cmds]


def test_start_hands_the_token_over_and_plans_the_refresh_inside_70_to_85_percent():
    for rand, at in ((0.0, 630_000), (0.5, 697_500), (0.999999, 765_000)):
        r = Rig(rand=rand)
        assert r.started == [("auth", r.token)]
        assert r.s.get_timer() == pytest.approx(at, abs=1)
        assert r.advance(at - 2) == []
        assert r.advance(2) == [("refresh", r.s.rid)]


@settings(max_examples=60, deadline=None)
@given(rand=st.floats(min_value=0, max_value=0.999999), life_s=st.integers(min_value=2, max_value=86_400),
       late_ms=st.integers(min_value=0, max_value=999))
def test_the_refresh_moment_is_always_between_70_and_85_percent_of_the_life(rand, life_s, late_ms):
    clock = Clock()
    clock.now = late_ms  # iat is whole seconds: adopted up to 1 s after it was issued
    s = Session(clock.wall, rand=lambda: rand)
    s.start(jwt(WALL0 // 1000, life_s), clock.now)
    due = clock.wall() + (s.get_timer() - clock.now)  # wall time of the deadline
    life = life_s * 1000
    planned = WALL0 + (0.70 + 0.15 * rand) * life
    assert WALL0 + 0.70 * life - 1e-6 <= planned <= WALL0 + 0.85 * life + 1e-6
    assert due == pytest.approx(max(planned, clock.wall()))  # never in the past


def test_a_refresh_stores_the_new_token_sends_it_in_band_and_plans_the_next_one():
    r = Rig()
    r.cmds()
    (cmd,) = r.advance(700_000)
    r.clock.now += 150
    token, cmds = r.ok(cmd[1])
    assert cmds == [("store", token, {"id": "alice"}), ("auth", token)]
    assert r.s.token == token and r.s.state == "scheduled"
    assert r.s.get_timer() == pytest.approx(r.now + 697_500 - (r.clock.wall() % 1000), abs=1)
    assert all(token not in json.dumps(rec) for rec in r.records())  # never in a record
    assert r.records("session.refreshed")


def test_a_late_answer_for_an_old_request_is_ignored():
    r = Rig()
    (cmd,) = r.advance(700_000)
    r.advance(sessionmod.REFRESH_TIMEOUT_MS - 2_000)  # no answer: counts as a network error, retried later
    assert r.s.state == "waiting"
    assert r.answer(cmd[1], 200, {"token": r.issue()}) == []
    assert r.s.token == r.token


def test_network_errors_retry_with_growing_backoff_and_never_sign_out():
    r = Rig(life_s=60)
    (cmd,) = r.advance(60_000 * 0.8)
    delays = []
    for _ in range(7):
        assert r.answer(cmd[1], 0) == []
        delays.append(r.s.get_timer() - r.now)
        (cmd,) = r.advance(delays[-1])
    assert delays == [750, 1500, 3000, 6000, 12000, 22500, 22500]  # U(0.5,1) = 0.75 of 1, 2, 4 ... capped 30 s
    assert r.answer(cmd[1], 503, {"error": "unavailable"}) == []
    assert r.answer(cmd[1], 429, {}) == []
    assert "signed_out" not in kinds(r.log)
    token, cmds = r.ok(r.advance(30_000)[0][1])
    assert ("auth", token) in cmds


def test_wake_refreshes_at_once_when_the_token_expires_within_60_s():
    r = Rig(life_s=900)
    r.cmds()
    r.s.wake(r.now)  # 900 s left: nothing
    assert r.cmds() == []
    r.clock.now = 850_000  # a sleeping laptop: the timer did not fire, 50 s left
    r.s.wake(r.now, "visible")
    assert r.cmds() == [("refresh", r.s.rid)]
    assert r.records("session.refresh")[-1]["reason"] == "visible"
    r.s.wake(r.now)  # already refreshing: one request
    assert r.cmds() == []


def test_wake_replans_from_the_wall_clock_when_the_monotonic_clock_stood_still():
    r = Rig(life_s=900)
    r.cmds()
    planned_wall = r.clock.wall() + r.s.get_timer()
    r.clock.now = 10  # wall jumped 300 s while `now` barely moved: shift WALL instead
    r.s.wall_clock = lambda: WALL0 + 300_000 + r.clock.now
    r.s.wake(r.now)
    assert r.s.get_timer() == pytest.approx(r.now + planned_wall - (WALL0 + 300_000 + r.now), abs=1)


def test_a_link_refused_with_an_expired_token_gets_one_refresh_then_reconnects():
    r = Rig(life_s=4)
    r.cmds()
    r.clock.now = 10_000  # slept past the expiry: the dial found the token expired
    r.s.link_state("auth-required", r.now)
    (cmd,) = r.cmds()
    assert cmd[0] == "refresh"
    r.s.link_state("auth-required", r.now)  # the same refusal reported again: still one request
    assert r.cmds() == []
    token, cmds = r.ok(cmd[1])
    assert cmds == [("store", token, {"id": "alice"}), ("auth", token), ("reconnect",)]
    r.s.link_state("connecting", r.now)
    r.s.link_state("live", r.now)
    assert "signed_out" not in kinds(r.log)


def test_a_link_refused_again_after_its_refresh_signs_out():
    r = Rig(life_s=4)
    r.clock.now = 10_000
    r.s.link_state("auth-required", r.now)
    r.ok(r.cmds()[-1][1])
    r.s.link_state("connecting", r.now)
    r.clock.now = 20_000  # e.g. the new token expired too before the socket was up
    r.s.link_state("auth-required", r.now)
    assert r.cmds() == [("signed_out", "rejected")]


def test_a_refused_refresh_for_a_refused_link_signs_out_with_a_message():
    r = Rig(life_s=4)
    r.clock.now = 10_000
    r.s.link_state("auth-required", r.now)
    (cmd,) = [c for c in r.cmds() if c[0] == "refresh"]
    assert r.answer(cmd[1], 401, {"error": "refresh_failed", "reason": "revoked"}) == [("signed_out", "refresh_failed")]
    assert sessionmod.message("refresh_failed").endswith("Please sign in again.")
    assert r.records("session.refresh-refused")[0]["reason"] == "revoked"
    r.advance(3_600_000)
    r.s.wake(r.now)
    assert r.cmds() == []  # signed out: nothing more


def test_a_refresh_refused_while_the_token_works_waits_for_the_link_then_tries_once_more():
    r = Rig(life_s=4)
    (cmd,) = r.advance(3_400)
    assert r.answer(cmd[1], 401, {"error": "refresh_failed"}) == []  # 0.6 s left: the socket keeps going
    assert r.s.state == "refused" and r.s.get_timer() is None
    r.s.wake(r.now)
    assert r.cmds() == []
    r.clock.now = 4_000  # the server closes 4401 at `exp`
    r.s.link_state("auth-required", r.now)
    (cmd,) = r.cmds()
    assert cmd[0] == "refresh"
    assert r.answer(cmd[1], 401, {"error": "refresh_failed"}) == [("signed_out", "refresh_failed")]


def test_a_link_refused_with_a_token_that_has_not_expired_signs_out_at_once():
    r = Rig()
    r.cmds()
    r.advance(5_000)
    r.s.link_state("auth-required", r.now)  # revoked session, or signed out elsewhere: a refresh cannot help
    assert r.cmds() == [("signed_out", "rejected")]


def test_the_refusal_episode_ends_when_the_link_is_live_again():
    r = Rig(life_s=4)
    for t in (10_000, 30_000):
        r.clock.now = t
        r.s.link_state("auth-required", r.now)
        (cmd,) = [c for c in r.cmds() if c[0] == "refresh"]
        r.ok(cmd[1])
        r.s.link_state("live", r.now)
        r.clock.now += 2_000
        r.s.link_state("live", r.now)
    assert "signed_out" not in kinds(r.log)


def test_a_refresh_in_flight_when_the_link_is_refused_decides_alone():
    r = Rig(life_s=4)
    (cmd,) = r.advance(3_400)
    r.clock.now = 4_100
    r.s.link_state("auth-required", r.now)
    assert r.cmds() == []  # no second request
    token, cmds = r.ok(cmd[1])
    assert cmds[-1] == ("reconnect",)


def test_a_fresher_token_from_another_tab_is_adopted_and_replaces_our_refresh():
    r = Rig(life_s=900)
    r.cmds()
    r.clock.now = 100_000
    other = r.issue()
    assert r.s.fresher(other) and not r.s.fresher(r.token) and not r.s.fresher(None)
    r.s.token_seen(other, r.now)
    assert r.cmds() == [("auth", other)]  # no store: it is stored already
    assert r.s.get_timer() == pytest.approx(r.now + 697_500, abs=1)
    (cmd,) = r.advance(697_500)  # under the lock, storage holds a fresher one: no request goes out
    newer = r.issue()
    r.s.token_seen(newer, r.now)
    assert r.cmds() == [("auth", newer)]
    assert r.answer(cmd[1], 200, {"token": r.issue()}) == []  # that request is void now
    older = jwt(WALL0 // 1000, 900)
    r.s.token_seen(older, r.now)  # an older one is not taken
    assert r.s.token == newer and r.cmds() == []


def test_storage_emptied_or_another_user_means_signed_out_elsewhere():
    r = Rig()
    r.s.token_seen(None, r.now)
    assert r.cmds()[-1] == ("signed_out", "elsewhere")
    r = Rig()
    r.s.token_seen(r.issue(sub="bob"), r.now)
    assert r.cmds()[-1] == ("signed_out", "elsewhere")


def test_a_token_seen_while_the_link_is_refused_reconnects():
    r = Rig(life_s=4)
    r.clock.now = 10_000
    r.s.link_state("auth-required", r.now)
    r.cmds()
    other = r.issue()
    r.s.token_seen(other, r.now)
    assert r.cmds() == [("auth", other), ("reconnect",)]


def test_sign_out_revokes_with_the_bearer_then_signs_out():
    r = Rig()
    r.cmds()
    r.s.sign_out(r.now)
    assert r.cmds() == [("logout", r.token), ("signed_out", "user")]
    r.s.sign_out(r.now)
    r.s.token_seen(None, r.now)
    assert r.cmds() == [] and r.s.get_timer() is None


def test_a_token_without_exp_is_never_refreshed_on_a_timer():
    clock = Clock()
    s = Session(clock.wall, rand=lambda: 0.5)
    s.start("opaque", 0)
    assert s.commands() == [("auth", "opaque")] and s.get_timer() is None
    s.link_state("auth-required", 5)  # cannot tell it expired: the server refused it
    assert s.commands()[-1] == ("signed_out", "rejected")
