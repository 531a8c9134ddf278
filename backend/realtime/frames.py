"""Server → client frames of `dashboard.v1`/`dashboard.v2` (docs/protocol.md) and the close codes, as one source
for the server.

Frames are built as JSON text here; `Event.frame` (backend.bus) is the one for events and `batches` builds the
`dashboard.v2` batch frames.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

PROTOCOL_V1 = "dashboard.v1"
PROTOCOL_V2 = "dashboard.v2"  # v1 plus `{"type":"batch","events":[…]}` frames
PROTOCOLS = (PROTOCOL_V2, PROTOCOL_V1)  # newest first: the server selects the first one the client offers
PROTOCOL = PROTOCOL_V1  # what a client that offers none (`?token=` on the command line) speaks
BEARER_PREFIX = "bearer."

# Close codes (docs/protocol.md, "Close codes").
NORMAL = 1000
GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
SERVICE_RESTART = 1012
TRY_AGAIN_LATER = 1013
HEARTBEAT_TIMEOUT = 4000
PAGE_GOING_AWAY = 4001  # the client core's 1001 (page frozen or cached): browsers refuse 1001 from script
SLOW_CONSUMER = 4008
AUTH_FAILED = 4401
ORIGIN_FORBIDDEN = 4403
TOO_MANY_CONNECTIONS = 4409
RATE_LIMITED = 4429

# Close codes that become their own metric label: ours, the standard ones and the client core's (4001, 4100-4103).
# Clients may send any code 1000-4999; everything else is counted as "other", so the label set stays bounded.
LABELLED_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
     HEARTBEAT_TIMEOUT, PAGE_GOING_AWAY, SLOW_CONSUMER, 4100, 4101, 4102, 4103, AUTH_FAILED, ORIGIN_FORBIDDEN,
     TOO_MANY_CONNECTIONS, RATE_LIMITED}
)


def close_label(code: int) -> str:
    """The `code` label of `websocket_disconnects_total` for a close code."""
    return str(code) if code in LABELLED_CLOSE_CODES else "other"


def select_protocol(offered: Iterable[str]) -> str | None:
    """The newest protocol the client offers, or None if it offers none of ours."""
    offered = set(offered)
    return next((p for p in PROTOCOLS if p in offered), None)


def encode(message: dict[str, object]) -> str:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


PING = encode({"type": "ping"})
PONG = encode({"type": "pong"})


def error(error: str, message: str, **extra: object) -> str:
    """`{"type":"error","error":…,"message":…}` plus extra fields such as `projectId`."""
    return encode({"type": "error", "error": error, "message": message, **extra})


def connected(client_id: str, user_id: str, heartbeat_ms: int, epoch: str) -> str:
    return encode(
        {"type": "connected", "clientId": client_id, "userId": user_id, "heartbeatMs": heartbeat_ms, "epoch": epoch}
    )


def subscribed(project_id: str, *, recovered: bool, replayed: int, seq: int, epoch: str, **extra: object) -> str:
    """`extra`: `reason="backlogged"` when a replay was refused because the client is behind."""
    return encode(
        {
            "type": "subscribed",
            "projectId": project_id,
            "recovered": recovered,
            "replayed": replayed,
            "seq": seq,
            "epoch": epoch,
            **extra,
        }
    )


def auth(expires_at_ms: int | None) -> str:
    """The answer to an in-band `auth`: the connection now lives until the new token's expiry."""
    return encode({"type": "auth", "expiresAt": expires_at_ms})


def unsubscribed(project_id: str) -> str:
    return encode({"type": "unsubscribed", "projectId": project_id})


def restart(reconnect_within_ms: int) -> str:
    return encode({"type": "restart", "reconnectWithinMs": reconnect_within_ms})
