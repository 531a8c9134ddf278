"""The signed-in session in `localStorage`: `save(token, user)`, `token()`, `user()`, `forget_token()`, `clear()`."""

import json

from .ffi import is_none, js

TOKEN_KEY = "dashboard.token"
USER_KEY = "dashboard.user"


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


def forget_token():
    """Drop a token the server refused, so a reload does not dial with it again."""
    js.window.localStorage.removeItem(TOKEN_KEY)


def clear():
    js.window.localStorage.removeItem(TOKEN_KEY)
    js.window.localStorage.removeItem(USER_KEY)
