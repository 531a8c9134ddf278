"""JWT checks done before dialling: present, and not past its `exp` claim.

Portable base64url (MicroPython has no `urlsafe_b64decode`). The signature is not verified here:
the server does that; the client only avoids dialling with a token it already knows is dead.
"""

import base64
import json

MISSING = "missing"
EXPIRED = "expired"
OK = "ok"


def b64url_decode(text):
    """Decode base64url without padding; raises ValueError on bad input."""
    text = text.replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text)
    except Exception:
        raise ValueError("bad base64url")


def claims(token):
    """The JWT payload as a dict, or None when the token is not a decodable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(b64url_decode(parts[1]).decode())
    except (ValueError, UnicodeError):
        return None
    return payload if isinstance(payload, dict) else None


def check(token, wall_ms=None):
    """MISSING, EXPIRED or OK. `wall_ms` is epoch milliseconds; without it expiry is not checked."""
    if not token or not isinstance(token, str):
        return MISSING
    if wall_ms is None:
        return OK
    payload = claims(token)
    if payload is None:
        return OK  # opaque or odd token: let the server decide
    exp = payload.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return OK
    return EXPIRED if exp * 1000 <= wall_ms else OK
