"""The page and its vendored runtimes are served by our own server, with a policy that keeps the page on its origin."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from backend.app import ROOT, create_app
from backend.settings import Settings


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    settings = Settings(db=":memory:", jwt_secret="s" * 40, var_dir=str(tmp_path_factory.mktemp("var")))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_index_carries_a_same_origin_content_security_policy(client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["connect-src"] == "'self'"
    assert directives["default-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"


def directives(response) -> dict[str, list[str]]:
    policy = response.headers["content-security-policy"]
    return {name: values for name, *values in (part.split() for part in policy.split(";"))}


def test_the_page_allows_no_inline_code_or_eval_it_does_not_know(client) -> None:
    policy = directives(client.get("/"))
    for directive in ("script-src", "style-src", "default-src"):
        assert "'unsafe-inline'" not in policy[directive] and "'unsafe-eval'" not in policy[directive], directive
    assert "'wasm-unsafe-eval'" in policy["script-src"]  # MicroPython compiles its WebAssembly
    from backend.page_policy import inline_script_hashes

    hashes = inline_script_hashes((ROOT / "index.html").read_text())
    assert hashes and all(h in policy["script-src"] for h in hashes)


def test_only_the_pyodide_page_may_evaluate_strings(client) -> None:
    policy = directives(client.get("/?runtime=pyodide"))
    assert "'unsafe-eval'" in policy["script-src"] and "'unsafe-inline'" not in policy["script-src"]
    assert "'unsafe-eval'" not in directives(client.get("/?runtime=other"))["script-src"]


def test_inline_script_hashes_match_the_bytes_between_the_tags() -> None:
    import base64
    import hashlib

    from backend.page_policy import inline_script_hashes

    html = '<head><script src="/x.js"></script><script>\n  let a = "</p>";\n</script></head><script>b()</script>'
    expected = [base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() for s in ('\n  let a = "</p>";\n', "b()")]
    assert inline_script_hashes(html) == [f"'sha256-{h}'" for h in expected]


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/vendor/pyscript/core.js", "javascript"),
        ("/vendor/micropython/micropython.mjs", "javascript"),
        ("/vendor/micropython/micropython.wasm", "application/wasm"),
        ("/vendor/pyodide/pyodide.mjs", "javascript"),
        ("/web/main.py", "python"),
        ("/web/pyscript.json", "json"),
    ],
)
def test_runtimes_and_client_files_are_served_locally(client, path: str, media: str) -> None:
    response = client.get(path)
    assert response.status_code == 200, path
    assert media in response.headers["content-type"]


def test_page_and_configs_name_no_other_origin() -> None:
    texts = [ROOT / "index.html", *Path(ROOT / "web").glob("*.json")]
    for path in texts:
        urls = re.findall(r"(?:https?:)?//[\w.-]+", path.read_text())
        assert urls == [], (path.name, urls)


def test_client_modules_are_served_as_micropython_bytecode(client) -> None:
    response = client.get("/web/mpy/client/runtime.mpy")
    assert response.status_code == 200
    assert response.content[:2] == b"M\x06"  # .mpy header: magic, format version 6 (MicroPython 1.27)
    etag = response.headers["etag"]
    assert client.get("/web/mpy/client/runtime.mpy", headers={"If-None-Match": etag}).status_code == 304
    assert client.get("/web/mpy/client/browser/app.mpy").status_code == 200


@pytest.mark.parametrize(
    "path", ["/web/mpy/client/missing.mpy", "/web/mpy/client/runtime.py", "/web/mpy/main.mpy", "/web/mpy/client/../../backend/app.mpy"]
)
def test_bytecode_route_serves_client_modules_only(client, path: str) -> None:
    assert client.get(path).status_code == 404


def test_no_compiler_runs_on_a_request_path(client, monkeypatch) -> None:
    import subprocess

    from backend import bytecode

    def refuse(*args, **kwargs):
        raise AssertionError("mpy-cross ran while serving a request")

    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(bytecode, "compile_module", refuse)
    for module in ("runtime", "connection", "browser/app", "logtext"):
        response = client.get(f"/web/mpy/client/{module}.mpy")
        assert response.status_code == 200 and response.content[:2] == b"M\x06", module
        assert response.headers["cache-control"] == "no-cache"


def test_start_up_compiles_every_client_module_into_the_build(client) -> None:
    from backend.bytecode import BUILD_DIR

    sources = sorted((ROOT / "web" / "client").rglob("*.py"))
    manifest = json.loads((BUILD_DIR / "manifest.json").read_text())
    assert sorted(manifest) == [p.relative_to(ROOT / "web" / "client").as_posix() for p in sources]
    for source in sources:
        assert (BUILD_DIR / "client" / source.relative_to(ROOT / "web" / "client").with_suffix(".mpy")).is_file()


def test_only_changed_modules_are_recompiled_and_removed_ones_dropped(tmp_path, monkeypatch) -> None:
    from backend import bytecode

    client = tmp_path / "client"
    (client / "sub").mkdir(parents=True)
    (client / "a.py").write_text("X = 1\n")
    (client / "sub" / "b.py").write_text("Y = 2\n")
    build = tmp_path / "build"
    compiled: list[str] = []
    real = bytecode.compile_module
    monkeypatch.setattr(bytecode, "compile_module", lambda source, name: compiled.append(name) or real(source, name))
    bytecode.compile_client(client, build)
    assert sorted(compiled) == ["client/a.py", "client/sub/b.py"]
    first = (build / "client" / "a.mpy").read_bytes()
    compiled.clear()
    bytecode.compile_client(client, build)  # a restart with nothing changed
    assert compiled == []
    (client / "a.py").write_text("X = 2  # edited\nZ = 3\n")
    (client / "sub" / "b.py").unlink()
    bytecode.compile_client(client, build)
    assert compiled == ["client/a.py"]
    assert (build / "client" / "a.mpy").read_bytes() != first
    assert not (build / "client" / "sub" / "b.mpy").exists()


def test_a_module_micropython_cannot_compile_stops_the_start(tmp_path) -> None:
    from backend.bytecode import CompileError, compile_client

    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "bad.py").write_text("def broken(:\n")
    with pytest.raises(CompileError, match="client/bad.py"):
        compile_client(tmp_path / "client", tmp_path / "build")


@pytest.mark.parametrize(
    "path",
    [
        "/vendor/axe-core/axe.min.js",
        "/node_modules/axe-core/axe.min.js",
        "/web/../node_modules/axe-core/axe.min.js",
        "/vendor/pyscript/../../../axe-core/axe.min.js",
    ],
)
def test_test_only_packages_are_never_served(client, path: str) -> None:
    """axe-core is a devDependency the e2e suite injects itself; only the runtime folders are mounted."""
    assert (ROOT / "node_modules" / "axe-core" / "axe.min.js").is_file()  # installed, and still not reachable
    response = client.get(path)
    assert response.status_code == 404, path
    assert b"axe" not in response.content[:200]
