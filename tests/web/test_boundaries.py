"""Layering rules of the browser client, checked on the source.

- Only `web/client/browser/` and `web/main.py` may import `js`, `pyscript` or `pyodide`.
- Both PyScript configs (JSON, so PyScript needs no TOML parser) map every `web/client/**.py` into the
  browser FS (MicroPython gets them compiled to `.mpy`), point the interpreter at a local URL and never ask
  for `packages` (which would pull micropip from a CDN); `index.html` preloads exactly those modules.
- `index.html` loads PyScript from our own server only.
"""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"
CLIENT = WEB / "client"
BROWSER_ONLY = {"js", "pyscript", "pyodide", "jsffi", "polyscript"}
VENDOR_DIRS = {
    "/vendor/micropython/micropython.mjs": "@micropython/micropython-webassembly-pyscript/micropython.mjs",
    "/vendor/pyodide/pyodide.mjs": "pyodide/pyodide.mjs",
}
CONFIGS = {
    "pyscript.json": "/vendor/micropython/micropython.mjs",
    "pyscript-pyodide.json": "/vendor/pyodide/pyodide.mjs",
}
PRELOAD = re.compile(r"(/\* BEGIN CLIENT FILES[^*]*\*/ )(\[.*?\])( /\* END CLIENT FILES \*/)", re.S)


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def client_files() -> list[Path]:
    return sorted(CLIENT.rglob("*.py"))


def test_only_the_browser_adapter_imports_browser_modules():
    offenders = []
    for path in client_files():
        if (CLIENT / "browser") in path.parents:
            continue
        bad = imported_roots(path) & BROWSER_ONLY
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offenders == []


def test_the_scan_sees_browser_imports():
    # The adapter really imports js: proves the scan above can find what it forbids.
    assert "js" in imported_roots(CLIENT / "browser" / "ffi.py")
    assert "client" in imported_roots(WEB / "main.py")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pyscript_config_maps_every_client_module(name):
    config = json.loads((WEB / name).read_text())
    compiled = "micropython" in config["interpreter"]  # MicroPython imports the .mpy bytecode (backend/bytecode.py)
    expected = {client_url(module, compiled): "./" + module + (".mpy" if compiled else ".py") for module in client_modules()}
    assert config["files"] == expected
    assert len(expected) == len(client_files())


@pytest.mark.parametrize("name,interpreter", sorted(CONFIGS.items()))
def test_pyscript_config_stays_local(name, interpreter):
    config = json.loads((WEB / name).read_text())
    assert config["interpreter"] == interpreter
    assert (ROOT / "node_modules" / VENDOR_DIRS[interpreter]).is_file()
    assert "packages" not in config
    assert "js_modules" not in config


def test_index_html_loads_everything_from_our_origin():
    html = (ROOT / "index.html").read_text()
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    urls += re.findall(r"""import\(["']([^"']+)["']\)""", html)
    assert "/vendor/pyscript/core.js" in urls
    assert "/vendor/pyscript/core.css" in urls
    assert 'href="data:,"' in html  # no automatic /favicon.ico request
    for url in urls:
        assert url.startswith(("/", "data:", "#")), url  # "#main": the skip link stays in the page
        assert not url.startswith("//"), url
    assert "http://" not in html and "https://" not in html


def test_index_html_preloads_exactly_the_client_files():
    match = PRELOAD.search((ROOT / "index.html").read_text())
    assert match is not None
    assert json.loads(match.group(2)) == client_modules()


def client_modules() -> list[str]:
    """`client/runtime`, `client/browser/app`, …: every client module, without extension."""
    return [path.relative_to(WEB).with_suffix("").as_posix() for path in client_files()]


def client_url(module: str, compiled: bool) -> str:
    return f"/web/mpy/{module}.mpy" if compiled else f"/web/{module}.py"


def render_config(interpreter: str) -> str:
    """The PyScript config for `interpreter`, mapping every client module (JSON: PyScript parses it natively)."""
    compiled = "micropython" in interpreter
    files = {client_url(m, compiled): "./" + m + (".mpy" if compiled else ".py") for m in client_modules()}
    return json.dumps({"interpreter": interpreter, "files": files}, indent=2) + "\n"


if __name__ == "__main__":
    for config_name, config_interpreter in CONFIGS.items():
        (WEB / config_name).write_text(render_config(config_interpreter))
        print("wrote", WEB / config_name)
    index = ROOT / "index.html"
    html = index.read_text()
    listing = "[\n" + "".join(f'        "{module}",\n' for module in client_modules()).rstrip(",\n") + "\n      ]"
    index.write_text(PRELOAD.sub(lambda m: m.group(1) + listing + m.group(3), html, count=1))
    print("wrote", index)
