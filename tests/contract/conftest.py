"""Fixtures for the client/server contract tests; the driver lives in `contract_driver`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "realtime"))  # realtime_harness


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
