"""The signed-in session in `localStorage`: `save(token, user)`, `token()`, `user()`, `forget_token(reason)`, `clear(reason)`;
sign-outs the server has not heard yet: `owed_signouts()`, `save_owed_signouts(tokens)` (client/signout.py).

Removing the token is how a tab tells the others that the session is over (their `storage` event); the reason
(`client.session` reasons) is written to `SIGNOUT_KEY` first so they can say why: `signout_reason()`."""

import json

from .ffi import is_none, js

TOKEN_KEY = "dashboard.token"
USER_KEY = "dashboard.user"
SIGNOUT_KEY = "dashboard.signout"
OWED_KEY = "dashboard.signout-owed"


def _get(key):
    value = js.window.localStorage.getItem(key)
    if value is None or is_none(value):
        return None
    return str(value)


def token():
    """The stored JWT or None; read again before every connect and every request."""
    return _get(TOKEN_KEY)


def user():
    raw = _get(USER_KEY)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def save(jwt, user_info):
    js.window.localStorage.setItem(TOKEN_KEY, str(jwt))
    js.window.localStorage.setItem(USER_KEY, json.dumps(user_info or {}))


def forget_token(reason=None):
    """Drop a token the server refused, so a reload does not dial with it again."""
    _why(reason)
    js.window.localStorage.removeItem(TOKEN_KEY)


def clear(reason=None):
    _why(reason)
    js.window.localStorage.removeItem(TOKEN_KEY)
    js.window.localStorage.removeItem(USER_KEY)


def signout_reason():
    """Why the last tab that removed the token did so (None if unknown)."""
    return _get(SIGNOUT_KEY)


def _why(reason):
    if reason:
        js.window.localStorage.setItem(SIGNOUT_KEY, str(reason))


def owed_signouts():
    """The signed-out tokens whose sign-out the server has not answered yet (a list, maybe empty)."""
    try:
        value = json.loads(_get(OWED_KEY) or "[]")
    except ValueError:
        return []
    return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []


def save_owed_signouts(tokens):
    if tokens:
        js.window.localStorage.setItem(OWED_KEY, json.dumps(list(tokens)))
    else:
        js.window.localStorage.removeItem(OWED_KEY)
