"""`client.tokens`: portable base64url and the pre-dial JWT check."""

import base64

from client import tokens
from client_harness import make_jwt


def test_b64url_decodes_url_alphabet_without_padding():
    raw = bytes([0xFB, 0xFF, 0xBF, 0x01])  # encodes with - and _ in the URL alphabet
    text = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    assert "-" in text or "_" in text
    assert tokens.b64url_decode(text) == raw


def test_check_missing_expired_ok():
    now_ms = 1_700_000_000_000
    assert tokens.check(None, now_ms) == tokens.MISSING
    assert tokens.check("", now_ms) == tokens.MISSING
    assert tokens.check(make_jwt(exp_s=1_700_000_000 - 1), now_ms) == tokens.EXPIRED
    assert tokens.check(make_jwt(exp_s=1_700_000_000), now_ms) == tokens.EXPIRED
    assert tokens.check(make_jwt(exp_s=1_700_000_001), now_ms) == tokens.OK
    assert tokens.check(make_jwt(), now_ms) == tokens.OK  # no exp claim
    assert tokens.check("opaque-token", now_ms) == tokens.OK  # the server decides
    assert tokens.check(make_jwt(exp_s=1), None) == tokens.OK  # no wall clock: expiry unknown


def test_claims_of_garbage_is_none():
    assert tokens.claims("a.!!!.c") is None
    assert tokens.claims("a.b") is None
    assert tokens.claims(make_jwt(exp_s=5))["exp"] == 5
