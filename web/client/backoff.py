"""Reconnect delays, pure arithmetic with an injected random source.

Build one `Backoff` from the client config, then ask it for a delay each time a retry is scheduled:
`delay(n)` for the n-th consecutive retry (0-based), `long_delay()` after "try again later" close codes,
`window_delay(w)` after a restart hint, `around(period)` while suspended. The connection machine
(connection.py) decides which one applies; this module only computes milliseconds.
"""

import random

JITTER = "jitter"  # min(max, floor + U(0,1) * base * 2**n): full jitter with a small floor
SEED = "seed"  # min(max, base * 2**n): 1, 2, 4, 8, 16, 16, ... s (no jitter, the original schedule)
MODES = (JITTER, SEED)

DEFAULT_BASE_MS = 1000
DEFAULT_MAX_MS = 16000
DEFAULT_FLOOR_MS = 250
MAX_EXPONENT = 30  # 2**30 * base is far above any cap; keeps the numbers small
SUSPENDED_SPREAD = 0.2  # suspended retries land within period * (1 +/- 0.2)


class Backoff:
    """Delay calculator. All results are whole milliseconds (int)."""

    __slots__ = ("base_ms", "max_ms", "floor_ms", "mode", "rand")

    def __init__(self, base_ms=DEFAULT_BASE_MS, max_ms=DEFAULT_MAX_MS, floor_ms=DEFAULT_FLOOR_MS, mode=JITTER, rand=None):
        if mode not in MODES:
            raise ValueError("unknown backoff mode: " + str(mode))
        if base_ms < 0 or max_ms < 0 or floor_ms < 0:
            raise ValueError("backoff times must not be negative")
        self.base_ms = base_ms
        self.max_ms = max_ms
        self.floor_ms = floor_ms
        self.mode = mode
        self.rand = rand if rand is not None else random.random

    def delay(self, attempt):
        """Delay before retry number `attempt` (0 = first retry after a failure)."""
        n = attempt if attempt < MAX_EXPONENT else MAX_EXPONENT
        if n < 0:
            n = 0
        if self.mode == SEED:
            return int(min(self.max_ms, self.base_ms * (2**n)))
        return int(min(self.max_ms, self.floor_ms + self.rand() * self.base_ms * (2**n)))

    def long_delay(self):
        """Delay after 1013/4429/4409 ("try again later"): uniform in [max/2, max] (seed mode: max)."""
        if self.mode == SEED:
            return int(self.max_ms)
        half = self.max_ms / 2
        return int(half + self.rand() * half)

    def window_delay(self, window_ms):
        """A random moment inside a server-hinted restart window (spreads the reconnect herd)."""
        if window_ms <= 0:
            return 0
        return int(self.rand() * window_ms)

    def around(self, period_ms):
        """`period_ms` +/- 20 %: the retry period while suspended."""
        factor = 1 - SUSPENDED_SPREAD + 2 * SUSPENDED_SPREAD * self.rand()
        return int(period_ms * factor)

    def schedule(self, attempts):
        """The first `attempts` retry delays as a list (handy for docs and tests)."""
        return [self.delay(i) for i in range(attempts)]
