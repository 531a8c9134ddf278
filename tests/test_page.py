"""The page and its vendored runtimes are served by our own server, with a policy that keeps the page on its origin."""

from __future__ import annotations

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


def test_edited_module_is_recompiled(tmp_path) -> None:
    from backend.bytecode import CompiledClient

    (tmp_path / "client").mkdir()
    module = tmp_path / "client" / "m.py"
    module.write_text("X = 1\n")
    compiled = CompiledClient(tmp_path / "client")
    first = compiled.get("client/m.mpy")
    module.write_text("X = 2  # edited\nY = 3\n")
    second = compiled.get("client/m.mpy")
    assert first is not None and second is not None and first[0] != second[0] and first[1] != second[1]


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
