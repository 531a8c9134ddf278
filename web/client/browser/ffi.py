"""The one place that smooths over MicroPython and Pyodide FFI differences.

Use `proxy(fn)` for every Python callable handed to JavaScript and `release(p)` when the
JavaScript side no longer needs it; `to_js`, `is_none` and `now_ms` cover the rest.
"""

import js
from pyscript.ffi import create_proxy, is_none, to_js

from client.clock import epoch_ms

__all__ = ["js", "proxy", "release", "to_js", "is_none", "now_ms", "wall_ms", "epoch_now", "text"]
_origin = []  # epoch ms at performance.now() == 0, read once


def proxy(fn):
    """Wrap `fn` for JavaScript. Keep the result and pass it to `release()` when done."""
    return create_proxy(fn)


def release(p):
    """Free a proxy made by `proxy()`. Pyodide needs `destroy()`; MicroPython frees it itself."""
    if p is None:
        return
    try:
        destroy = getattr(p, "destroy")
    except AttributeError:
        return
    try:
        destroy()
    except Exception:  # already destroyed
        pass


def now_ms():
    """Monotonic milliseconds (`performance.now()`), the clock the runtime runs on."""
    return float(js.performance.now())


def epoch_now():
    """Epoch milliseconds now. Not `Date.now()`: MicroPython's bridge wraps integer-valued numbers above
    2**31 to 32 bits, so the date is read from its small UTC fields (`client.clock`)."""
    d = js.Date.new()
    return float(epoch_ms(int(d.getUTCFullYear()), int(d.getUTCMonth()) + 1, int(d.getUTCDate()), int(d.getUTCHours()),
                          int(d.getUTCMinutes()), int(d.getUTCSeconds()), int(d.getUTCMilliseconds())))


def wall_ms(monotonic_ms):
    """Turn a `now_ms()` reading into epoch milliseconds (not from `performance.timeOrigin`: when it has
    no fraction, MicroPython gets it wrapped, see `epoch_now`)."""
    if not _origin:
        _origin.append(epoch_now() - now_ms())
    return _origin[0] + float(monotonic_ms)


def text(value, default=""):
    """A JS string or null/undefined as a Python str."""
    if value is None or is_none(value):
        return default
    try:
        return str(value)
    except Exception:
        return default
