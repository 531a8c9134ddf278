"""Messages between the tabs of one browser: a versioned, typed envelope (docs/browser.md, "Tabs").

Every message posted on the tabs' BroadcastChannel is the JSON text of
`{"v": 1, "kind": "<kind>", "from": "<tab id>", "to": "<tab id>" | null, "body": {...}}`.
`make(kind, sender, body, to)` builds one, `parse(data)` reads one back: it returns the envelope dict or
None for anything that is not a well-formed version-1 envelope (never raises). A receiver ignores
kinds it does not know, so a newer page and an older page can share the channel; a change that older
pages would misread needs a new `VERSION`.

The kinds below are the leader/follower protocol of `client.tabs`; other features (session sign-out,
the pending-change queue) add their own kinds on the same channel through `Tabs.listen()` and
`Tabs.post()`.
"""

import json

VERSION = 1
MAX_TEXT = 256 * 1024  # a larger message is dropped unread (one browser, one origin: never expected)

# any tab -> all
HELLO = "hello"  # a tab starts: the leader answers with STATUS
TAB = "tab"  # a follower's state, in answer to every BEAT: {leader, link, visible, watch}
BYE = "bye"  # the tab is going away: its share is released; from the leader: a new one comes next
# leader -> all
BEAT = "beat"  # sent from the leader's timer only (a frozen page never sends one): {term, live, hb, status}
STATUS = "status"  # same body, sent on a change or to answer HELLO (may come from a frozen page)
FRAME = "frame"  # a server frame for every tab: {term, frame}
# leader -> one tab
REPLY = "reply"  # a server frame for one tab's link: {term, link, frame}
REBIND = "rebind"  # "I do not know your link any more, reconnect it": {term, link}
# follower -> leader
LINK = "link"  # the follower's runtime opened a link to this leader: {link}
SUB = "sub"  # {link, projectId, since: [epoch, seq] | null}
UNSUB = "unsub"  # {link, projectId}
RETRY = "retry"  # the user pressed Retry in a follower

KINDS = (HELLO, TAB, BYE, BEAT, STATUS, FRAME, REPLY, REBIND, LINK, SUB, UNSUB, RETRY)


def make(kind, sender, body=None, to=None):
    """The JSON text of one envelope, ready for a ("post", text) command."""
    return json.dumps({"v": VERSION, "kind": kind, "from": sender, "to": to, "body": body if body is not None else {}}, separators=(",", ":"))


def parse(data):
    """The envelope dict of a received message, or None (malformed, another version, not for anyone)."""
    if not isinstance(data, str) or len(data) > MAX_TEXT:
        return None
    try:
        msg = json.loads(data)
    except (ValueError, TypeError):
        return None
    if not isinstance(msg, dict) or msg.get("v") != VERSION:
        return None
    if not isinstance(msg.get("kind"), str) or not isinstance(msg.get("from"), str):
        return None
    to = msg.get("to")
    if to is not None and not isinstance(to, str):
        return None
    if not isinstance(msg.get("body"), dict):
        return None
    return msg
