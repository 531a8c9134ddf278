"""Structured logs never carry a token and stay one valid JSON object per line."""

from __future__ import annotations

import json
import logging

import pytest

from backend.logs import JsonFormatter, RedactingFilter, redact

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"


@pytest.mark.parametrize(
    "text",
    [
        f"WebSocket /ws/status-updates?token={JWT} [accepted]",
        f'WebSocket /ws?token={JWT}" [accepted]',
        f"GET /x?a=1&token={JWT}&b=2",
        f"Authorization: Bearer {JWT}",
        f"offered subprotocol bearer.{JWT}",
        f"bare {JWT} in a message",
    ],
)
def test_redact_removes_every_token_form(text: str) -> None:
    cleaned = redact(text)
    assert JWT not in cleaned
    assert "[REDACTED]" in cleaned


def test_redact_keeps_other_text() -> None:
    assert redact("GET /api/projects?limit=5 200") == "GET /api/projects?limit=5 200"


def test_json_lines_stay_valid_json_after_redaction() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s "%s" [accepted]', ("127.0.0.1:5", f"WebSocket /ws?token={JWT}"), None)
    RedactingFilter().filter(record)
    line = JsonFormatter().format(record)
    payload = json.loads(line)
    assert JWT not in line
    assert payload["message"] == '127.0.0.1:5 "WebSocket /ws?token=[REDACTED]" [accepted]'


def test_structured_fields_are_kept() -> None:
    record = logging.LogRecord("dashboard", logging.INFO, __file__, 1, "ws.close", None, None)
    record.fields = {"code": 4401, "client_id": "c-1"}
    payload = json.loads(JsonFormatter().format(record))
    assert payload["event"] == "ws.close" and payload["code"] == 4401 and payload["client_id"] == "c-1"
