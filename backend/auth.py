"""Passwords (stdlib scrypt) and JWTs (PyJWT, HS256 pinned). Call `issue_token()` at login and
`verify_token()` on every REST request and WebSocket handshake; both raise `AuthError` on failure.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import jwt

from .settings import Settings

ALGORITHM = "HS256"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}


class AuthError(Exception):
    """Missing, malformed, expired or otherwise invalid credentials. The message never holds the token."""


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    try:
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return hmac.compare_digest(digest.hex(), digest_hex)


def issue_token(
    settings: Settings, user_id: str, *, now: float | None = None, ttl_s: int | None = None, sid: str | None = None,
) -> tuple[str, int]:
    """Return `(token, expires_at_epoch_s)` for `user_id`; `sid` names the sign-in session (`backend.sessions`), whose
    revocation kills the token at once. Every token has a random `jti`."""
    issued = int(time.time() if now is None else now)
    expires = issued + (settings.token_ttl_s if ttl_s is None else ttl_s)
    claims: dict[str, object] = {
        "sub": user_id,
        "iat": issued,
        "exp": expires,
        "aud": settings.jwt_audience,
        "iss": settings.jwt_issuer,
        "jti": secrets.token_urlsafe(12),
    }
    if sid is not None:
        claims["sid"] = sid
    return jwt.encode(claims, settings.resolved_jwt_secret(), algorithm=ALGORITHM), expires


def verify_token(settings: Settings, token: str | None, *, expired_ok: bool = False) -> dict[str, object]:
    """Return the verified claims; raise `AuthError` with a short, token-free reason. `expired_ok`: a token past its
    `exp` still passes (signature, audience and issuer are checked all the same); only sign-out uses it."""
    if not token:
        raise AuthError("missing token")
    try:
        claims = jwt.decode(
            token,
            settings.resolved_jwt_secret(),
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway_s,
            options={"require": ["sub", "iat", "exp", "aud", "iss"], "enforce_minimum_key_length": True,
                     "verify_exp": not expired_ok},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token ({type(exc).__name__})") from None
    if not isinstance(claims.get("sub"), str):
        raise AuthError("invalid token (sub)")
    if "sid" in claims and not isinstance(claims["sid"], str):
        raise AuthError("invalid token (sid)")
    return claims


def bearer_token(authorization: str | None) -> str | None:
    """Extract the token of an `Authorization: Bearer <jwt>` header value."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
