"""Reads `index.html` started before Python ran: `await take(path, token)` → `(status, body)` or None.

index.html requests `/api/config` and, with a stored token, `/api/projects` while PyScript and the
interpreter load. Each is handed out once, and only for the same token; anything else (no such read, other
token, network error) returns None and the caller fetches as usual. Only reads that the client core would
issue before any subscription exists are prefetched, so no freshness rule of the cache is bent.
"""

from .ffi import is_none, js, text


async def take(path, token=None):
    try:
        taker = js.window.dashboardTakeRead
        if taker is None or is_none(taker):
            return None
        promise = taker(path, token or "")
        if promise is None or is_none(promise):
            return None
        result = await promise
    except Exception:  # an older page without the hook, or a failed read: fetch as usual
        return None
    if result is None or is_none(result):
        return None
    return int(result.status), text(result.body)
