"""Structured JSON logs: one line per lifecycle event. Call `configure_logging()` once at start-up, then
`log_event("ws.connect", client_id=..., ...)`. Tokens never reach a log: `redact()` scrubs them from any text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

LOGGER_NAME = "dashboard"
_TOKEN_PATTERNS = (
    re.compile(r"(token=)[^&\s\"'\\]+", re.IGNORECASE),
    re.compile(r"(bearer[ .])[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+", re.IGNORECASE),
    re.compile(r"()eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+"),
)

logger = logging.getLogger(LOGGER_NAME)


def redact(text: str) -> str:
    """Replace anything that looks like a token (query `token=`, bearer values, bare JWTs)."""
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(r"\1[REDACTED]", text)
    return text


class RedactingFilter(logging.Filter):
    """Scrub tokens from every record, including uvicorn's access log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            try:
                record.msg = record.getMessage()
            except (TypeError, ValueError):
                record.msg = str(record.msg)
            record.args = None
        record.msg = redact(str(record.msg))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload["event"] = record.getMessage()
            payload.update(fields)
        else:
            payload["message"] = record.getMessage()
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(payload, default=str, separators=(",", ":")))


def log_event(event: str, level: int = logging.INFO, **fields: object) -> None:
    """Emit one structured record; `fields` must never carry a token."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={"fields": fields})


def configure_logging(level: str = "info") -> None:
    """JSON lines on stderr for our logger and uvicorn's, all passing through `RedactingFilter`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    for name in (LOGGER_NAME, "uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False
        lg.addFilter(RedactingFilter())


def monotonic() -> float:
    return time.monotonic()
