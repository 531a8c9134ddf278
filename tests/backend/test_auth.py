"""Passwords (scrypt) and JWTs: every way a token can be wrong must raise `AuthError`, never leak the token."""

from __future__ import annotations

import base64
import json
import os
import stat
import time
import warnings
from pathlib import Path
from typing import Any

import jwt
import pytest

from backend.auth import AuthError, bearer_token, hash_password, issue_token, verify_password, verify_token
from backend.settings import Settings

SECRET = "k" * 40


@pytest.fixture
def settings() -> Settings:
    return Settings(jwt_secret=SECRET)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "alice", "iat": now, "exp": now + 600, "aud": "dashboard", "iss": "orchestrator-dashboard",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(payload: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def rejected(settings: Settings, token: str | None) -> str:
    with pytest.raises(AuthError) as info:
        verify_token(settings, token)
    message = str(info.value)
    if token:
        assert token not in message
    return message


# -- passwords ---------------------------------------------------------------------------------------


def test_scrypt_hash_round_trip() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$")
    assert "correct horse" not in stored
    assert verify_password("correct horse", stored)
    assert not verify_password("correct horsE", stored)
    assert not verify_password("", stored)


def test_scrypt_salts_differ_and_fixed_salt_is_deterministic() -> None:
    assert hash_password("pw") != hash_password("pw")
    salt = b"\x01" * 16
    assert hash_password("pw", salt=salt) == hash_password("pw", salt=salt)


@pytest.mark.parametrize(
    "stored", ["", "plain", "md5$00$00", "scrypt$00", "scrypt$zz$00", "scrypt$00$00$00", "scrypt$$"]
)
def test_malformed_stored_hash_never_verifies(stored: str) -> None:
    assert verify_password("pw", stored) is False


# -- tokens ------------------------------------------------------------------------------------------


def test_issue_and_verify(settings: Settings) -> None:
    now = time.time()
    token, expires = issue_token(settings, "alice", now=now)
    assert expires == int(now) + settings.token_ttl_s
    got = verify_token(settings, token)
    assert got["sub"] == "alice"
    assert got["aud"] == "dashboard" and got["iss"] == "orchestrator-dashboard"
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "HS256"


def test_expired_token(settings: Settings) -> None:
    token, _ = issue_token(settings, "alice", now=time.time() - 120, ttl_s=60)
    assert rejected(settings, token) == "token expired"


def test_leeway_accepts_recently_expired(settings: Settings) -> None:
    token, _ = issue_token(settings, "alice", now=time.time() - 120, ttl_s=60)
    assert verify_token(settings.with_overrides(jwt_leeway_s=300), token)["sub"] == "alice"


def test_missing_token(settings: Settings) -> None:
    assert rejected(settings, None) == "missing token"
    assert rejected(settings, "") == "missing token"


@pytest.mark.parametrize("field", ["sub", "iat", "exp", "aud", "iss"])
def test_missing_claim(settings: Settings, field: str) -> None:
    assert "invalid token" in rejected(settings, sign(claims(**{field: None})))


@pytest.mark.parametrize(
    "override", [{"aud": "other"}, {"iss": "someone-else"}, {"sub": 42}, {"nbf": int(time.time()) + 3600}]
)
def test_wrong_claims(settings: Settings, override: dict[str, Any]) -> None:
    assert "invalid token" in rejected(settings, sign(claims(**override)))


def test_alg_none(settings: Settings) -> None:
    token = jwt.encode(claims(), None, algorithm="none")
    assert "invalid token" in rejected(settings, token)


def test_other_hmac_algorithm_is_refused(settings: Settings) -> None:
    with warnings.catch_warnings():  # PyJWT warns that 40 bytes is short for HS512; the point is the same key
        warnings.simplefilter("ignore")
        token = sign(claims(), algorithm="HS512")
    assert "invalid token" in rejected(settings, token)


def test_wrong_key(settings: Settings) -> None:
    assert "invalid token" in rejected(settings, sign(claims(), key="z" * 40))


def test_tampered_payload(settings: Settings) -> None:
    token, _ = issue_token(settings, "alice")
    header, payload, signature = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({**claims(), "sub": "bob"}).encode()).rstrip(b"=").decode()
    assert "invalid token" in rejected(settings, f"{header}.{forged}.{signature}")
    assert "invalid token" in rejected(settings, f"{header}.{payload}.{signature[:-2]}AA")


@pytest.mark.parametrize("garbage", ["x", "a.b.c", "eyJ.eyJ.sig", "Bearer abc"])
def test_garbage_token(settings: Settings, garbage: str) -> None:
    assert "invalid token" in rejected(settings, garbage)


def test_short_secret_is_refused() -> None:
    short = Settings(jwt_secret="too-short")
    with pytest.raises(ValueError, match="at least 32 bytes"):
        short.resolved_jwt_secret()
    with pytest.raises(ValueError):
        issue_token(short, "alice")


def test_app_refuses_to_start_with_a_short_secret() -> None:
    from backend.app import create_app

    with pytest.raises(ValueError, match="at least 32 bytes"):
        create_app(Settings(db=":memory:", jwt_secret="x" * 31))


def test_generated_secret_is_private_and_reused(tmp_path: Path) -> None:
    settings = Settings(var_dir=str(tmp_path / "var"))
    first = settings.resolved_jwt_secret()
    path = tmp_path / "var" / "jwt-secret"
    assert len(first) >= 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Settings(var_dir=str(tmp_path / "var")).resolved_jwt_secret() == first
    token, _ = issue_token(settings, "alice")
    assert verify_token(Settings(var_dir=str(tmp_path / "var")), token)["sub"] == "alice"
    other = Settings(var_dir=str(tmp_path / "other"))
    assert "invalid token" in rejected(other, token)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer  abc.def.ghi ", "abc.def.ghi"),
        ("BEARER tok", "tok"),
    ],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert bearer_token(header) == expected
