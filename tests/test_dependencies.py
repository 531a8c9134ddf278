"""Python dependencies: exactly what the code uses, every package pinned with hashes in requirements.txt
(`make lock`), installed by `make setup` with `--require-hashes`."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "requirements.txt"
MAKEFILE = (ROOT / "Makefile").read_text()
EXTRAS = ("redis", "test", "e2e", "bench")  # what `make setup` installs
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)


def declared() -> list[Requirement]:
    project = PYPROJECT["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    found += [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    return found


def entries() -> list[str]:
    """One text block per locked package (its pin line with the continuation lines of its hashes)."""
    return re.split(r"\n(?=[A-Za-z0-9])", "\n".join(line for line in LOCK.read_text().splitlines() if not line.lstrip().startswith("#")))


def pins() -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(LOCK.read_text())}


def test_every_locked_package_is_pinned_with_hashes() -> None:
    blocks = [block for block in entries() if block.strip()]
    assert len(blocks) == len(pins()) >= 20
    for block in blocks:
        assert PIN.match(block), block.splitlines()[0]
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), f"no hash for {block.splitlines()[0]}"


@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_every_declared_dependency_is_locked_at_an_allowed_version(requirement: Requirement) -> None:
    version = pins().get(canonicalize_name(requirement.name))
    assert version is not None, f"{requirement.name} is not in requirements.txt: run `make lock`"
    assert requirement.specifier.contains(version, prereleases=True), (str(requirement), version)


def test_only_what_is_used() -> None:
    runtime = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
    assert all(not r.extras for r in runtime.values()), "no umbrella extras such as uvicorn[standard]"
    locked = pins()
    for unused in ("watchfiles", "python-dotenv"):  # what uvicorn[standard] pulled in besides the pieces we use
        assert unused not in locked, unused
    assert {"uvicorn", "uvloop", "httptools", "websockets"} <= runtime.keys()


def test_uvicorn_runs_on_the_pieces_we_depend_on() -> None:
    from backend.cli import uvicorn_config
    from backend.settings import Settings

    config = uvicorn_config(object(), Settings(), "127.0.0.1", 0)
    assert (config.loop, config.http, config.ws) == ("uvloop", "httptools", "websockets-sansio")


def test_asyncpg_is_a_runtime_dependency_for_the_postgresql_store() -> None:
    [asyncpg] = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "asyncpg"]
    assert asyncpg.specifier.contains("0.30.0") and not asyncpg.specifier.contains("0.29.0")
    assert "asyncpg" in pins()


def test_make_installs_from_the_lock_with_hashes_and_can_refresh_it() -> None:
    assert "pip install -q --require-hashes -r requirements.txt" in MAKEFILE
    assert "pip install -q --no-deps --no-build-isolation -e ." in MAKEFILE
    assert re.search(r"^lock:", MAKEFILE, re.M) and "pip-compile -q --generate-hashes" in MAKEFILE
    assert re.search(r"^\$\(STAMP\): pyproject.toml requirements.txt$", MAKEFILE, re.M)


def test_the_environment_matches_the_lock() -> None:
    wrong = {}
    for name, version in pins().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert wrong == {}, "run `make setup` (locked, installed) mismatches"
