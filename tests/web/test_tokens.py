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


def test_epoch_ms_from_utc_fields_matches_the_calendar():
    # the browser reads the date from its UTC fields: MicroPython's bridge wraps Date.now() to 32 bits
    import datetime

    from client.clock import epoch_ms

    for stamp in (0, 951782400123, 1764000000000, 1772323199999, 4102444800000, -86400000):
        t = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(milliseconds=stamp)
        assert epoch_ms(t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond // 1000) == stamp
