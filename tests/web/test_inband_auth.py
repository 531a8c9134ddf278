"""In-band token refresh on the client core: `send_auth(token, now)` while live, the server's `auth` answer,
and `auth_mismatch` followed by the 4401 close."""

from client_harness import Const, Driver


def test_send_auth_while_live_sends_the_token_in_band_and_nothing_else():
    d = Driver({}, rand=Const(0.5))
    d.rt.subscribe("apollo", lambda e: None)
    d.connect()
    assert d.rt.send_auth("new.jwt.token", d.now) is True
    cmds = d.pump()
    assert d.sent(cmds) == [{"action": "auth", "token": "new.jwt.token"}]
    assert not d.opens(cmds) and not d.closes(cmds)
    assert "new.jwt.token" not in str(d.records(cmds))  # never in a log record


def test_send_auth_when_not_live_sends_nothing():
    d = Driver({}, rand=Const(0.5))
    assert d.rt.send_auth("t", d.now) is False
    d.start()
    assert d.rt.send_auth("t", d.now) is False  # dialling: the dial already carries the provider's token
    assert d.sent(d.pump()) == []


def test_the_servers_answer_is_reported_and_the_subscriptions_stay():
    d = Driver({}, rand=Const(0.5))
    events = []
    d.rt.subscribe("apollo", events.append)
    heard = []
    d.rt.on_auth(heard.append)
    d.connect()
    d.server({"type": "subscribed", "projectId": "apollo", "recovered": False, "replayed": 0, "seq": 3, "epoch": "e"})
    d.rt.send_auth("t2", d.now)
    d.pump()
    cmds = d.server({"type": "auth", "expiresAt": 1_764_000_900_000})
    assert heard == [{"ok": True, "expiresAt": 1_764_000_900_000}] and d.rt.auth_expires_at == 1_764_000_900_000
    assert d.sent(cmds) == [] and d.state == "live"
    assert d.records(cmds, "auth-accepted")[0]["expiresAt"] == 1_764_000_900_000
    d.server({"type": "event", "eventType": "project.updated", "projectId": "apollo", "seq": 4, "epoch": "e",
              "timestamp": 1, "data": {}})
    assert [e["seq"] for e in events] == [4]


def test_auth_mismatch_is_reported_then_the_4401_close_requires_sign_in():
    d = Driver({}, rand=Const(0.5))
    heard = []
    d.rt.on_auth(heard.append)
    d.connect()
    d.rt.send_auth("someone-else", d.now)
    d.server({"type": "error", "error": "auth_mismatch", "message": "the token belongs to another user"})
    assert heard == [{"ok": False, "error": "auth_mismatch"}]
    d.closed(4401, "auth mismatch")
    assert d.state == "auth-required" and d.opens(d.advance(60_000)) == []
