"""Portability proof: the same scenarios (the runtime's, then the tabs protocol's) give the same trace on CPython, on the MicroPython
WebAssembly build (the browser's default interpreter), also from the `.mpy` bytecode the page imports, and on
Pyodide, all running in Node."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MICROPYTHON = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"


def load_scenario(name="scenario"):
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))  # tabs_scenario imports scenario and tabs_world by name, as in the runners
    spec = importlib.util.spec_from_file_location("portable_" + name, HERE / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpython_trace():
    """The runtime scenario, then the tabs scenario (the order the runners print them in)."""
    lines = []
    load_scenario().run(lines.append)
    load_scenario("tabs_scenario").run(lines.append)
    load_scenario("session_scenario").run(lines.append)
    return lines


def test_cpython_trace_is_deterministic_and_covers_the_story():
    first = cpython_trace()
    assert first == cpython_trace()
    text = "\n".join(first)
    for needle in (
        '"event":"connected"',
        '"since":{"epoch":"e1","seq":8}',  # resumed from the last seen seq
        '"action":"hello"',
        '"event":"gap"',
        '"event":"exhausted"',  # accept-then-close loop ends in suspended
        '"event":"probe"',
        "probe timeout",
        '"event":"offline"',
        "connect timeout",
        '"state":"auth-required"',
        '"rolledBack":true',
        '"event":"freeze"',  # page lifecycle: closed with 4001, then resumed at once
        '"event":"resume"',
        '"resumes":1',
        "own=true",
        '"event":"closed"',
        'console.warn "[WebSocket] Reconnecting in ',
        'console.info "[WebSocket] Connected (attempt ',
        'console.error "[WebSocket] No answer after 4 attempts; retrying every 10 s"',
        'link ["c-1",40]',
        # pending changes: queued offline, restored after a reload, sent in order, conflict dropped
        '"expect":{"status":"todo"}',
        '"error":"conflict"',
        '"queued":true',
        "pending left []",
        "queue first true of 2",  # a lost answer while live goes again before the change made after it
        # tabs_scenario: hand-over on close, steal from a frozen leader, resume after a server kill
        "ta tabs.role role=leader",
        "tb tabs.role role=leader leader=tb",
        "tc lock l2 steal",
        "tb tabs.role role=follower leader=tc",
        '["tc","apollo",["e1",3]]',
        # session_scenario: refresh schedule, backoff, one refresh for a refused link, sign-out reasons
        '["refresh",2]',
        '"reason":"expired"',
        '["auth","T5"],["reconnect"]',
        '["signed_out","refresh_failed"]',
        '["signed_out","rejected"]',
        '["logout","T1"]',
        # signouts: owed until answered, sent late without cookies, retried on a timer
        '["logout","T1",true]',
        '["logout","T0",false]',
        '["save",[]]',
    ):
        assert needle in text, needle
    assert [line for line in first if line.startswith("stats ")]


RUNNERS = {
    # interpreter: (runner, npm entry point it loads)
    "micropython": ("run_micropython.mjs", MICROPYTHON),
    "pyodide": ("run_pyodide.mjs", ROOT / "node_modules" / "pyodide" / "pyodide.mjs"),
}


def compiled_client(tmp_path: Path) -> Path:
    """The top-level client modules compiled to .mpy exactly as the server compiles them for the page."""
    from backend.bytecode import compile_module

    for source in sorted((ROOT / "web" / "client").glob("*.py")):
        (tmp_path / (source.stem + ".mpy")).write_bytes(compile_module(source, f"client/{source.name}"))
    return tmp_path


NEEDS_NODE = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: cannot run the WebAssembly interpreters")


@NEEDS_NODE
@pytest.mark.parametrize("interpreter", [*sorted(RUNNERS), "micropython-bytecode"])
def test_webassembly_trace_is_identical_to_cpython(interpreter, tmp_path):
    runner, entry = RUNNERS[interpreter.removesuffix("-bytecode")]
    assert entry.is_file(), f"{entry} is missing (npm ci)"
    # "-bytecode": the .mpy files the page imports; a mismatch between mpy-cross and the interpreter fails here.
    extra = [str(compiled_client(tmp_path))] if interpreter.endswith("-bytecode") else []
    proc = subprocess.run(
        ["node", str(HERE / runner), str(ROOT), *extra],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    wasm_lines = proc.stdout.rstrip("\n").split("\n")
    cpy_lines = cpython_trace()
    for i, (a, b) in enumerate(zip(cpy_lines, wasm_lines)):
        assert a == b, f"{interpreter}: first difference at line {i + 1}"
    assert len(wasm_lines) == len(cpy_lines)
