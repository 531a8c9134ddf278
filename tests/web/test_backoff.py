"""`client.backoff`: the seed schedule table, full-jitter bounds, long/restart/suspended delays."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.backoff import JITTER, SEED, Backoff

SEED_TABLE_S = [1, 2, 4, 8, 16, 16, 16, 16, 16, 16]


def test_seed_schedule_matches_the_table():
    backoff = Backoff(mode=SEED, rand=lambda: pytest.fail("seed mode must not draw random numbers"))
    assert backoff.schedule(10) == [s * 1000 for s in SEED_TABLE_S]
    assert sum(backoff.schedule(10)) == 111_000
    assert backoff.delay(50) == 16_000


def test_jitter_with_extreme_random_values():
    assert Backoff(rand=lambda: 0.0).schedule(4) == [250, 250, 250, 250]
    assert Backoff(rand=lambda: 0.5).schedule(6) == [750, 1250, 2250, 4250, 8250, 16000]
    almost_one = 0.9999999
    assert Backoff(rand=lambda: almost_one).delay(0) == 1249
    assert Backoff(rand=lambda: almost_one).delay(9) == 16000


@given(attempt=st.integers(min_value=0, max_value=200), r=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_jitter_stays_between_floor_and_cap(attempt, r):
    backoff = Backoff(base_ms=1000, max_ms=16000, floor_ms=250, mode=JITTER, rand=lambda: r)
    delay = backoff.delay(attempt)
    assert isinstance(delay, int)
    assert 250 <= delay <= 16000
    assert delay <= 250 + 1000 * 2 ** min(attempt, 30)


@given(
    base=st.integers(min_value=1, max_value=10_000),
    cap=st.integers(min_value=1, max_value=120_000),
    attempt=st.integers(min_value=0, max_value=40),
    r1=st.floats(min_value=0, max_value=1, exclude_max=True),
    r2=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_jitter_is_monotonic_in_the_random_draw_and_capped(base, cap, attempt, r1, r2):
    lo, hi = sorted((r1, r2))
    a = Backoff(base_ms=base, max_ms=cap, floor_ms=0, rand=lambda: lo).delay(attempt)
    b = Backoff(base_ms=base, max_ms=cap, floor_ms=0, rand=lambda: hi).delay(attempt)
    assert 0 <= a <= b <= cap


@given(r=st.floats(min_value=0, max_value=1, exclude_max=True))
def test_long_restart_and_suspended_delays_stay_in_their_ranges(r):
    backoff = Backoff(max_ms=16000, rand=lambda: r)
    assert 8000 <= backoff.long_delay() <= 16000
    assert 0 <= backoff.window_delay(5000) < 5000
    assert 48000 <= backoff.around(60000) <= 72000


def test_window_of_zero_means_now_and_bad_mode_is_refused():
    assert Backoff(rand=lambda: 0.7).window_delay(0) == 0
    with pytest.raises(ValueError):
        Backoff(mode="linear")
    with pytest.raises(ValueError):
        Backoff(base_ms=-1)
