"""The README is part of the product: its settings table and its two commands must stay true."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from backend.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ROW = re.compile(r"^\| `(DASHBOARD_[A-Z_]+)` \| ([^|]+) \|", re.MULTILINE)


def documented() -> dict[str, str]:
    return {name: default.strip() for name, default in ROW.findall(README)}


def test_every_setting_is_in_the_readme_table() -> None:
    names = {f"DASHBOARD_{f.name.upper()}" for f in fields(Settings) if f.name != "extra"}
    table = documented()
    assert names - table.keys() == set(), "settings missing from the README table"
    assert table.keys() - names == set(), "README documents settings that do not exist"


def test_readme_defaults_match_the_code() -> None:
    table = documented()
    for f in fields(Settings):
        if f.name == "extra":
            continue
        shown = table[f"DASHBOARD_{f.name.upper()}"]
        default = f.default
        if isinstance(default, bool):
            assert shown.startswith(f"`{int(default)}`"), (f.name, shown)
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            assert shown.startswith("`") and float(shown.strip("`")) == default, (f.name, shown)
        elif isinstance(default, str) and default:
            assert shown == f"`{default}`", (f.name, shown)


def test_ci_runs_make_test_only() -> None:
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands[-1].strip() in {"exec make test", "make test"}
    assert all("pytest" not in line for line in commands)


def test_readme_names_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
