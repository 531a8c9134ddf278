"""Versioned schema migrations: `NNNN_name.<engine>.sql`, one file per step and engine (`sqlite`, `postgres`).

`load(engine)` lists `(version, name, sql)` in order; the engines apply the missing ones at start-up and in
`dashboard migrate`, each step in its own transaction, recorded in `schema_migrations`. Never edit a released step:
add the next one.
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sqlite|postgres)\.sql$")


def load(engine: str) -> list[tuple[int, str, str]]:
    """Every step for `engine`, by version; raises if a version is missing or doubled."""
    steps: list[tuple[int, str, str]] = []
    for path in sorted(HERE.iterdir()):
        match = _NAME.match(path.name)
        if match and match.group(3) == engine:
            steps.append((int(match.group(1)), match.group(2), path.read_text()))
    for expected, (version, name, _) in enumerate(steps, start=1):
        if version != expected:
            raise RuntimeError(f"migration {version:04d}_{name} for {engine}: expected version {expected}")
    return steps


def latest(engine: str) -> int:
    return len(load(engine))
