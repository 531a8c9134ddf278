"""Sign-outs the server has not heard yet (`client.signout.SignOuts`): owed until any HTTP answer, kept in storage,
sent again at page load, on wake-ups and on a backoff timer, never more than one request per token at a time."""

from hypothesis import given, settings
from hypothesis import strategies as st

from client.signout import MAX_OWED, RETRY_BASE_MS, RETRY_MAX_MS, SignOuts


def split(core):
    """(logout commands, last saved list or None) of what the core asked for since the last call."""
    sends, saved = [], None
    for command in core.commands():
        if command[0] == "logout":
            sends.append(command[1:])
        elif command[0] == "save":
            saved = command[1]
        else:
            assert command[0] == "log" and not any(isinstance(v, str) and v.startswith("T") for v in command[1].values())
    return sends, saved


def test_a_sign_out_online_is_sent_with_cookies_and_settled_by_its_answer():
    core = SignOuts()
    core.start([], 0)
    assert split(core) == ([], None)
    core.sign_out("T1", 10)
    assert split(core) == ([("T1", True)], ["T1"])  # owed in storage before the request leaves
    core.answered("T1", 204, 30)
    assert split(core) == ([], [])
    assert core.owed == [] and core.get_timer() is None


def test_a_sign_out_offline_stays_owed_and_is_sent_late_without_cookies():
    core = SignOuts()
    core.sign_out("T1", 0)
    split(core)
    core.answered("T1", 0, 5)  # offline
    assert split(core) == ([], None) and core.owed == ["T1"]
    assert core.get_timer() == 5 + RETRY_BASE_MS
    core.wake([], 100, "online")
    assert split(core) == ([("T1", False)], None)
    core.wake([], 120, "visible")  # already on its way: not twice
    assert split(core) == ([], None)
    core.answered("T1", 204, 150)
    assert split(core) == ([], [])


def test_the_next_page_load_sends_what_an_earlier_page_owed():
    core = SignOuts()
    core.start(["T0", 7, "", None, "T1"], 0)  # what storage held; junk is ignored
    assert split(core) == ([("T0", False), ("T1", False)], None)
    core.answered("T0", 401, 10)  # a token the server does not take: settled all the same
    assert split(core) == ([], ["T1"])


def test_retries_back_off_and_are_capped():
    core = SignOuts()
    core.sign_out("T1", 0)
    split(core)
    now, delays = 0, []
    for _ in range(10):
        core.answered("T1", 0, now)
        delays.append(core.get_timer() - now)
        now = core.get_timer()
        core.handle_timer(now - 1)  # early: nothing
        assert split(core)[0] == []
        core.handle_timer(now)
        assert split(core)[0] == [("T1", False)]
    assert delays[:3] == [RETRY_BASE_MS, 2 * RETRY_BASE_MS, 4 * RETRY_BASE_MS]
    assert max(delays) == RETRY_MAX_MS


def test_storage_keeps_at_most_max_owed_newest_last():
    core = SignOuts()
    for i in range(MAX_OWED + 3):
        core.sign_out("T%d" % i, i)
        core.answered("T%d" % i, 0, i)
    _, saved = split(core)
    assert saved == ["T%d" % i for i in range(3, MAX_OWED + 3)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["sign_out", "answer", "wake", "timer"]), st.integers(0, 3),
                          st.sampled_from([0, 0, 204, 401])), max_size=40))
def test_every_token_is_owed_until_an_answer_and_never_sent_twice_at_once(steps):
    core = SignOuts()
    out, signed, now = set(), set(), 0
    for op, n, status in steps:
        now += 1000
        token = "T%d" % n
        if op == "sign_out":
            core.sign_out(token, now)
            signed.add(token)
        elif op == "answer" and token in out:
            out.discard(token)
            core.answered(token, status, now)
            if status:
                signed.discard(token)
        elif op == "wake":
            core.wake([], now)
        elif core.get_timer() is not None:
            core.handle_timer(core.get_timer())
        for (sent, _) in split(core)[0]:
            assert sent not in out, "two requests at once for one token"
            out.add(sent)
        assert set(core.owed) == signed  # owed exactly until an HTTP answer
        if signed - out:  # owed and not on its way: a retry is planned
            assert core.get_timer() is not None
