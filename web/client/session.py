"""`Session`: the life of the signed-in user's access token (sans-I/O, like the other core modules).

It plans each refresh at a random moment between 70% and 85% of the token's life, refreshes at once when
the page wakes up (`wake`: visible, online, resume) and the token expires within 60 s, hands a refreshed
token to the open socket, and decides when the user has to sign in again: only when a refresh is refused
(401 `refresh_failed`), or when the link is refused (4401, REST 401) with a token that has not expired. A
link refused with an expired token (the laptop slept past the expiry) gets ONE refresh first. A network
error is retried with backoff, never a sign-out.

Inputs carry `now` (monotonic ms); `wall_clock()` gives epoch ms for the token's `exp`/`iat`. Outputs are
`commands()` and `get_timer()` (call `handle_timer(now)` then):

- ("refresh", rid): POST /api/auth/refresh, answer with `refreshed(rid, status, body_text, now)` (status 0 =
  network error). Before the request, under the browser-wide lock, the adapter re-reads storage: a token
  for which `fresher(token)` is true was stored by another tab; hand it to `token_seen` instead.
- ("store", token, user): keep the new token where every tab and the token provider read it.
- ("auth", token): give it to the open socket (`Runtime.send_auth`; nothing to do when none is live).
- ("reconnect",): the link was refused for want of a token and has one now (`retry_now`).
- ("logout", token): POST /api/auth/logout with that bearer (the user signed out).
- ("signed_out", reason): show the sign-in form with `message(reason)`; reasons below.
- ("log", record): telemetry; never holds a token.
"""

import json
import random

from . import tokens

LEAD_MIN = 0.70  # refresh between these fractions of the token's life
LEAD_MAX = 0.85
SOON_MS = 60000  # on wake, refresh at once when the token expires within this
EXPIRED_MARGIN_MS = 1000  # a token this close to `exp` counts as expired when the link is refused
RETRY_BASE_MS = 1000  # network error: retry after U(0.5, 1) x base x 2^n, capped
RETRY_MAX_MS = 30000
REFRESH_TIMEOUT_MS = 20000  # no answer at all: count it as a network error

NONE = "none"  # no token (yet)
SCHEDULED = "scheduled"  # waiting for the planned moment (no moment: a token without `exp`)
REFRESHING = "refreshing"
WAITING = "waiting"  # the last refresh hit a network error; retry at `retry_at`
REFUSED = "refused"  # the server refused a refresh while the token still works: no more tries until the link is refused
SIGNED_OUT = "signed-out"

REFRESH_FAILED = "refresh_failed"  # the refresh cookie is missing, expired, revoked or reused
REJECTED = "rejected"  # the server refused a token that had not expired (session ended, revoked)
ELSEWHERE = "elsewhere"  # signed out in another tab (or another user signed in there)
USER = "user"  # the user pressed "Sign out" here

MESSAGES = {
    REFRESH_FAILED: "Your session has expired or was ended. Please sign in again.",
    REJECTED: "Your session was ended (signed out or revoked). Please sign in again.",
    ELSEWHERE: "You were signed out in another tab. Please sign in again.",
    USER: "",
}


def message(reason):
    """The sign-in form's notice for a `signed_out` reason."""
    return MESSAGES.get(reason, MESSAGES[REFRESH_FAILED])


def token_times(token):
    """(exp_ms, iat_ms) of a JWT, each None when missing."""
    payload = tokens.claims(token) if isinstance(token, str) else None
    if payload is None:
        return None, None
    out = []
    for name in ("exp", "iat"):
        value = payload.get(name)
        ok = not isinstance(value, bool) and isinstance(value, (int, float))
        out.append(value * 1000 if ok else None)
    return out[0], out[1]


def token_subject(token):
    payload = tokens.claims(token) if isinstance(token, str) else None
    return None if payload is None else payload.get("sub")


class Session:
    """See the module docstring; docs/client.md ("Sessions") has the whole contract."""

    __slots__ = ("wall_clock", "rand", "out", "state", "token", "exp", "refresh_wall", "deadline", "rid",
                 "failures", "link_refused", "tried", "refreshes")

    def __init__(self, wall_clock, rand=None):
        self.wall_clock = wall_clock
        self.rand = rand if rand is not None else random.random
        self.out = []
        self.state = NONE
        self.token = None
        self.exp = None  # epoch ms of the current token's expiry
        self.refresh_wall = None  # epoch ms of the planned refresh
        self.deadline = None  # `now` of the next timer
        self.rid = 0
        self.failures = 0
        self.link_refused = False  # the link is in auth-required
        self.tried = False  # a refresh was made for this refusal (reset when the link is live again)
        self.refreshes = 0

    # ------------------------------------------------------------------ adapter side
    def commands(self):
        out = list(self.out)
        del self.out[:]
        return out

    def get_timer(self):
        return self.deadline

    def start(self, token, now):
        """The signed-in token (from the sign-in answer or from storage at page load)."""
        if token:
            self._adopt(token, now)

    def handle_timer(self, now):
        if self.deadline is None or now < self.deadline:
            return
        self.deadline = None
        if self.state in (SCHEDULED, WAITING):
            self._refresh(now, "retry" if self.state == WAITING else "schedule")
        elif self.state == REFRESHING:
            self._failed(now, 0, "no answer")

    def wake(self, now, why="wake"):
        """The page can run again (visible, online, resume): re-plan from the wall clock, and refresh at once
        when the token expires within `SOON_MS`."""
        if self.state not in (SCHEDULED, WAITING) or self.exp is None:
            return
        wall = self.wall_clock()
        if self.exp - wall <= SOON_MS:
            self._refresh(now, why)
        elif self.state == SCHEDULED and self.refresh_wall is not None:
            self.deadline = now + max(0, self.refresh_wall - wall)  # the monotonic clock may have stood still

    def fresher(self, token):
        """True when `token` (read from storage) is another token of this user expiring later than ours."""
        if not token or token == self.token or self.state == SIGNED_OUT:
            return False
        exp, _ = token_times(token)
        return self.exp is None or (exp is not None and exp > self.exp)

    def token_seen(self, token, now):
        """What storage holds now (the `storage` event of another tab's write, or read under the refresh lock)."""
        if self.state == SIGNED_OUT or token == self.token:
            return
        if not token:
            self._signed_out(now, ELSEWHERE)
            return
        if self.token is not None and token_subject(token) != token_subject(self.token):
            self._signed_out(now, ELSEWHERE)  # another user signed in in another tab
            return
        if self.fresher(token):
            self._log(now, "session.adopted", expiresAt=token_times(token)[0])
            self._adopt(token, now)

    def refreshed(self, rid, status, body_text, now):
        """The answer to ("refresh", rid): status 0 is a network error."""
        if rid != self.rid or self.state != REFRESHING:
            return
        body = _json(body_text)
        token = body.get("token") if isinstance(body, dict) else None
        if status == 200 and isinstance(token, str) and token:
            self.failures = 0
            self.refreshes += 1
            self.out.append(("store", token, body.get("user")))
            self._log(now, "session.refreshed", expiresAt=token_times(token)[0])
            self._adopt(token, now)
        elif 400 <= status < 500 and status not in (408, 429):
            reason = body.get("reason") if isinstance(body, dict) else None
            self._log(now, "session.refresh-refused", status=status, reason=reason)
            if self.link_refused or self._expired(0):
                self._signed_out(now, REFRESH_FAILED)
            else:
                self.state = REFUSED  # keep working until the link is refused; then ONE more try
                self.deadline = None
        else:
            self._failed(now, status, None)

    def link_state(self, state, now):
        """The link's status `state` after each change (a follower's is its leader's)."""
        if state == "live":
            self.link_refused = False
            self.tried = False
            return
        if state != "auth-required":
            self.link_refused = False
            return
        if self.link_refused or self.state in (SIGNED_OUT, NONE):
            return
        self.link_refused = True
        if not self._expired(EXPIRED_MARGIN_MS) or self.tried:
            self._signed_out(now, REJECTED)
            return
        self.tried = True
        if self.state != REFRESHING:
            self._refresh(now, "expired")

    def sign_out(self, now):
        """The user signs out here: revoke the session on the server, then sign-in form."""
        if self.state == SIGNED_OUT:
            return
        if self.token:
            self.out.append(("logout", self.token))
        self._signed_out(now, USER)

    # ------------------------------------------------------------------ inside
    def _adopt(self, token, now):
        self.token = token
        exp, iat = token_times(token)
        self.exp = exp
        self.failures = 0
        self.state = SCHEDULED
        self.rid += 1  # an answer still on its way is of no use now
        if exp is None:
            self.refresh_wall = None
            self.deadline = None
        else:
            wall = self.wall_clock()
            start = iat if iat is not None and iat <= exp else wall
            life = exp - start if exp > start else 0
            self.refresh_wall = start + life * (LEAD_MIN + self.rand() * (LEAD_MAX - LEAD_MIN))
            self.deadline = now + max(0, self.refresh_wall - wall)
        self.out.append(("auth", token))
        if self.link_refused:
            self.tried = True
            self.out.append(("reconnect",))

    def _refresh(self, now, why):
        self.rid += 1
        self.state = REFRESHING
        self.deadline = now + REFRESH_TIMEOUT_MS
        self._log(now, "session.refresh", reason=why)
        self.out.append(("refresh", self.rid))

    def _failed(self, now, status, reason):
        self.rid += 1
        self.failures += 1
        n = self.failures - 1 if self.failures < 16 else 15
        delay = RETRY_BASE_MS * (2 ** n)
        delay = (RETRY_MAX_MS if delay > RETRY_MAX_MS else delay) * (0.5 + 0.5 * self.rand())
        self.state = WAITING
        self.deadline = now + delay
        self._log(now, "session.refresh-failed", status=status, reason=reason, delayMs=delay)

    def _signed_out(self, now, reason):
        self.state = SIGNED_OUT
        self.deadline = None
        self.rid += 1
        self._log(now, "session.signed-out", reason=reason)
        self.out.append(("signed_out", reason))

    def _expired(self, margin):
        if self.exp is None:
            return False
        return self.exp - self.wall_clock() <= margin

    def _log(self, now, event, **fields):
        record = {"event": event, "at": now}
        for key in fields:
            record[key] = fields[key]
        self.out.append(("log", record))


def _json(text):
    if not text:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None
