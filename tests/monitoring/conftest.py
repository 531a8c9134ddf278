"""Monitoring tests reuse the real-time harness (a real uvicorn, `websockets` clients)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "realtime"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
