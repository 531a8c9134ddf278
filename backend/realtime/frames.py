"""Server → client frames of `dashboard.v1` (docs/protocol.md) and the close codes, as one source for the server.

Frames are built as JSON text here; `Event.frame` (backend.bus) is the one for events.
"""

from __future__ import annotations

import json

PROTOCOL = "dashboard.v1"
BEARER_PREFIX = "bearer."

# Close codes (docs/protocol.md, "Close codes").
NORMAL = 1000
GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
SERVICE_RESTART = 1012
HEARTBEAT_TIMEOUT = 4000
SLOW_CONSUMER = 4008
AUTH_FAILED = 4401
ORIGIN_FORBIDDEN = 4403
TOO_MANY_CONNECTIONS = 4409
RATE_LIMITED = 4429


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


def subscribed(project_id: str, *, recovered: bool, replayed: int, seq: int, epoch: str) -> str:
    return encode(
        {
            "type": "subscribed",
            "projectId": project_id,
            "recovered": recovered,
            "replayed": replayed,
            "seq": seq,
            "epoch": epoch,
        }
    )


def unsubscribed(project_id: str) -> str:
    return encode({"type": "unsubscribed", "projectId": project_id})


def restart(reconnect_within_ms: int) -> str:
    return encode({"type": "restart", "reconnectWithinMs": reconnect_within_ms})
