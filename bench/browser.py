"""Time to live data in headless Chromium: the dashboard page (MicroPython, Pyodide) against a plain-JS floor.

Call `run_browser(cfg)` (`python -m bench browser`). Definition of one measurement:

- The user is already signed in: the driver logs in once over REST and an init script (added to every
  context with `context.add_init_script`) stores the token and user in `localStorage` (`dashboard.token`,
  `dashboard.user`) before any page script runs. Login is therefore not part of the time.
- The clock starts at navigation (`performance.timeOrigin`, i.e. `performance.now() == 0`) and stops at the
  first DOM mutation after which `[data-testid="connection-status"]` has `data-state="live"` **and** at
  least one `[data-testid="story"]` of the first project is rendered (a MutationObserver installed by the
  same init script records `performance.now()`).
- Cold: a fresh browser context (empty HTTP cache and storage) per run. Warm: `page.reload()` in that context.
- Pages: `/` (MicroPython, the default), `/?runtime=pyodide`, and three floors served by the bench server:
  `floor.html` (plain JavaScript: the same requests, socket and list with no Python runtime) and
  `floor-micropython.html` / `floor-pyodide.html` (PyScript and the interpreter running a three-line script
  that marks the badge live and renders one story: the interpreter's own start-up, no client code, no network),
  and `floor-micropython-import.html` (the page's own `web/pyscript.toml`, i.e. every client file, and an
  `import client.browser.app` before marking live: start-up plus fetching and importing our Python).

Chromium is Debian's `/usr/bin/chromium` (never `playwright install`).
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.env import HOST, PYTHON, RAW, RESULTS, Child, free_port, machine_info, print_header, wait_http, write_json
from bench.fanout import login_session, server_env

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage"]
PAGES = {
    "js-floor": "/bench/pages/floor.html",
    "micropython-floor": "/bench/pages/floor-micropython.html",
    "micropython-import": "/bench/pages/floor-micropython-import.html",
    "micropython": "/",
    "pyodide-floor": "/bench/pages/floor-pyodide.html",
    "pyodide": "/?runtime=pyodide",
}

INIT_SCRIPT = """
(() => {
  try {
    localStorage.setItem("dashboard.token", %(token)s);
    localStorage.setItem("dashboard.user", %(user)s);
  } catch (e) {}
  const bench = window.__bench = {liveAt: null, liveSeenAt: null, storiesAt: null, marks: {}};
  // PyScript lifecycle events fire on the script element; a capturing listener on window sees them all.
  for (const name of ["mpy:ready", "mpy:done", "py:ready", "py:done"]) {
    window.addEventListener(name, () => { if (!(name in bench.marks)) bench.marks[name] = performance.now(); }, true);
  }
  const check = () => {
    if (bench.liveAt !== null) return;
    const badge = document.querySelector('[data-testid="connection-status"]');
    const live = badge !== null && badge.getAttribute("data-state") === "live";
    const stories = document.querySelector('[data-testid="story"]') !== null;
    if (live && bench.liveSeenAt === null) bench.liveSeenAt = performance.now();
    if (stories && bench.storiesAt === null) bench.storiesAt = performance.now();
    if (live && stories) { bench.liveAt = performance.now(); observer.disconnect(); }
  };
  const observer = new MutationObserver(check);
  observer.observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-state"]});
})();
"""

COLLECT = """
() => {
  const res = performance.getEntriesByType("resource");
  const nav = performance.getEntriesByType("navigation")[0];
  let transfer = 0, decoded = 0;
  for (const r of res) { transfer += r.transferSize || 0; decoded += r.decodedBodySize || 0; }
  if (nav) { transfer += nav.transferSize || 0; decoded += nav.decodedBodySize || 0; }
  return {liveAt: window.__bench.liveAt, liveSeenAt: window.__bench.liveSeenAt, storiesAt: window.__bench.storiesAt,
          marks: window.__bench.marks,
          requests: res.length + 1, transferBytes: transfer, decodedBytes: decoded,
          domContentLoaded: nav ? nav.domContentLoadedEventEnd : null};
}
"""


@dataclass
class BrowserConfig:
    runs: int = 5
    pages: list[str] = field(default_factory=lambda: list(PAGES))
    timeout_s: float = 60.0
    out: str = "browser.json"
    tag: str = "full"


def _measure(page: Any, timeout_ms: float) -> dict[str, Any]:
    try:
        page.wait_for_function("() => window.__bench && window.__bench.liveAt !== null", timeout=timeout_ms,
                               polling=50)
    except Exception as exc:  # noqa: BLE001 - recorded as a failed run, not fatal
        sample = {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
        try:
            sample.update(page.evaluate(COLLECT))
            sample["state"] = page.evaluate(
                "() => document.querySelector('[data-testid=\"connection-status\"]')?.getAttribute('data-state')")
        except Exception:  # noqa: BLE001
            pass
        return sample
    return dict(page.evaluate(COLLECT))


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values),
            "mean_ms": statistics.fmean(values)}


def run_browser(cfg: BrowserConfig) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    info = machine_info()
    info["chromium"] = _chromium_version()
    print_header("browser time to live data", info, asdict(cfg))
    RAW.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    port = free_port()
    base = f"http://{HOST}:{port}"
    env = server_env(tmp)
    server = Child([PYTHON, "-m", "bench.server", "--kind", "app", "--port", str(port)], env=env,
                   log=RAW / f"server-browser-{cfg.tag}.log")
    results: dict[str, Any] = {}
    try:
        wait_http(f"{base}/bench/ready", 60, server)
        session = login_session(base)
        script = INIT_SCRIPT % {"token": json.dumps(session["token"]), "user": json.dumps(json.dumps(session["user"]))}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                # One throw-away visit so that the server's first-request costs are not charged to any page.
                ctx = browser.new_context()
                ctx.add_init_script(script)
                warm = ctx.new_page()
                warm.goto(base + PAGES["js-floor"])
                _measure(warm, cfg.timeout_s * 1000)
                ctx.close()
                order = [(run, name) for run in range(cfg.runs) for name in cfg.pages]  # interleaved
                samples: dict[str, dict[str, list[dict[str, Any]]]] = {n: {"cold": [], "warm": []} for n in cfg.pages}
                for run, name in order:
                    ctx = browser.new_context()
                    ctx.add_init_script(script)
                    page = ctx.new_page()
                    errors: list[str] = []
                    page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)[:200]))
                    page.goto(base + PAGES[name], wait_until="commit", timeout=cfg.timeout_s * 1000)
                    cold = _measure(page, cfg.timeout_s * 1000)
                    page.reload(wait_until="commit", timeout=cfg.timeout_s * 1000)
                    warm_sample = _measure(page, cfg.timeout_s * 1000)
                    for sample in (cold, warm_sample):
                        if errors:
                            sample["page_errors"] = list(errors)
                    samples[name]["cold"].append(cold)
                    samples[name]["warm"].append(warm_sample)
                    marks = " ".join(f"{k}={v:.0f}" for k, v in sorted((cold.get("marks") or {}).items()))
                    print(f"   [{name} run {run + 1}] cold {_ms(cold)}  warm {_ms(warm_sample)}  {marks}"
                          f"  ({cold.get('requests', '?')} requests, {cold.get('transferBytes', 0) / 1024:.0f} KiB cold)",
                          flush=True)
                    ctx.close()
            finally:
                browser.close()
        for name in cfg.pages:
            results[name] = {}
            for kind in ("cold", "warm"):
                ok = [s["liveAt"] for s in samples[name][kind] if s.get("liveAt") is not None]
                results[name][kind] = _stats(ok)
                results[name][kind]["failures"] = sum(1 for s in samples[name][kind] if s.get("liveAt") is None)
                results[name][kind]["samples"] = samples[name][kind]
                for mark in ("ready", "done"):
                    values = [v for smp in samples[name][kind] for k, v in (smp.get("marks") or {}).items()
                              if k.endswith(":" + mark)]
                    results[name][kind][f"interpreter_{mark}_median_ms"] = statistics.median(values) if values else None
                for key in ("liveSeenAt", "storiesAt"):
                    values = [smp[key] for smp in samples[name][kind] if smp.get(key) is not None]
                    results[name][kind][f"{key}_median_ms"] = statistics.median(values) if values else None
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    data = {"benchmark": "browser", "machine": info, "settings": asdict(cfg), "pages": PAGES, "results": results,
            "verdict": verdict(results), "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(RESULTS / cfg.out, data)
    return data


def _ms(sample: dict[str, Any]) -> str:
    return f"{sample['liveAt']:.0f} ms" if sample.get("liveAt") is not None else f"FAILED ({sample.get('error', '?')})"


def verdict(results: dict[str, Any]) -> dict[str, Any]:
    """Target: MicroPython cold median < 600 ms and within 4x the JS floor."""
    mp = results.get("micropython", {}).get("cold", {}).get("median_ms")
    floor = results.get("js-floor", {}).get("cold", {}).get("median_ms")
    out: dict[str, Any] = {"micropython_cold_ms": mp, "floor_cold_ms": floor,
                           "micropython_floor_cold_ms": results.get("micropython-floor", {}).get("cold", {}).get("median_ms")}
    if mp is not None:
        out["under_600_ok"] = mp < 600
    if mp is not None and floor:
        out["ratio_to_floor"] = mp / floor
        out["within_4x_ok"] = mp <= 4 * floor
    return out


def _chromium_version() -> str:
    import subprocess

    try:
        return subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
