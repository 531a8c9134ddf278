"""`SignOuts`: sign-outs the server has not heard yet (sans-I/O, like the other core modules).

Signing out forgets the token at once, but the session lives on the server (and its refresh cookie in the browser)
until `POST /api/auth/logout` arrives. A sign-out made offline is therefore owed: the page keeps the signed-out
access token (the server takes it even expired, for sign-out only) and sends it again at the next page load, on
`online`, when the page is shown, and on a timer with backoff, until the server answers. A token only ends its own
session, so a later sign-in is never touched.

Inputs carry `now` (monotonic ms): `start(stored, now)` with what storage holds, `sign_out(token, now)`,
`answered(token, status, now)` (status 0: no answer), `wake(stored, now)` (what storage holds now: another tab
may owe one too), `handle_timer(now)` at `get_timer()`. Outputs from `commands()`:

- ("logout", token, at_sign_out): POST /api/auth/logout with that bearer; answer with `answered`. `at_sign_out`
  is True for the send at the moment of signing out (with the browser's cookies, so the server's answer deletes
  the refresh cookie) and False for a late one (without cookies: by then the cookie may be a new sign-in's).
- ("save", tokens): what storage should hold now (at most `MAX_OWED`, oldest dropped first).
- ("log", record): telemetry; never holds a token.
"""

MAX_OWED = 8  # a bound on what storage keeps (one per sign-out made offline)
RETRY_BASE_MS = 5000
RETRY_MAX_MS = 300000


class SignOuts:
    def __init__(self):
        self.owed = []  # tokens, oldest first
        self.sending = set()  # tokens whose request is out
        self.failures = 0
        self.deadline = None
        self.out = []

    def start(self, stored, now):
        """At page load: send every sign-out still owed."""
        self._merge(stored)
        self._send_all(now, "load")

    def commands(self):
        out, self.out = self.out, []
        return out

    def get_timer(self):
        """When to call `handle_timer` (monotonic ms), or None."""
        return self.deadline

    def sign_out(self, token, now):
        """The user signed out with `token` (None: nothing to tell the server)."""
        if not token:
            return
        if token not in self.owed:
            self.owed.append(token)
            del self.owed[:-MAX_OWED]
            self._save()
        self._send(token, now, "sign-out")

    def answered(self, token, status, now):
        """The server's answer to ("logout", token): any HTTP answer settles it (204, or 401 for a token it does not
        know); 0 (network error) keeps it owed and plans a retry."""
        self.sending.discard(token)
        if status == 0:
            self.failures += 1
            n = self.failures - 1 if self.failures < 12 else 11
            delay = RETRY_BASE_MS * (2 ** n)
            self.deadline = now + (RETRY_MAX_MS if delay > RETRY_MAX_MS else delay)
            self._log(now, "session.signout-owed", owed=len(self.owed), retryInMs=self.deadline - now)
            return
        self.failures = 0
        if token in self.owed:
            self.owed.remove(token)
            self._save()
        self._log(now, "session.signout-sent", status=status, owed=len(self.owed))
        if not self.owed:
            self.deadline = None

    def wake(self, stored, now, why="wake"):
        """The network may be back (`online`, page shown): send what is owed now instead of at the timer."""
        self._merge(stored)
        self._send_all(now, why)

    def handle_timer(self, now):
        if self.deadline is None or now < self.deadline:
            return
        self.deadline = None
        self._send_all(now, "retry")

    # ------------------------------------------------------------------ inside
    def _merge(self, stored):
        added = False
        for token in stored or ():
            if isinstance(token, str) and token and token not in self.owed:
                self.owed.append(token)
                added = True
        if added:
            del self.owed[:-MAX_OWED]

    def _send_all(self, now, why):
        for token in list(self.owed):
            self._send(token, now, why)

    def _send(self, token, now, why):
        if token in self.sending:
            return
        self.sending.add(token)
        self._log(now, "session.signout", reason=why)
        self.out.append(("logout", token, why == "sign-out"))

    def _save(self):
        self.out.append(("save", list(self.owed)))

    def _log(self, now, event, **fields):
        record = {"event": event, "at": now}
        for key in fields:
            record[key] = fields[key]
        self.out.append(("log", record))
