"""Markdown tables and PNG plots from the JSON results. Call `write(results_dir, docs=...)`.

Writes `<results_dir>/summary.md` and `<results_dir>/*.png`. With `docs=True` it also replaces the part of
`docs/performance.md` between the GENERATED markers (the prose around it is written by hand).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench.env import RESULTS, ROOT

DOC = ROOT / "docs" / "performance.md"
COLORS = {"app": "tab:blue", "bare": "tab:gray", "app-redis": "tab:green", "app-gc": "tab:purple"}
BEGIN = "<!-- BEGIN GENERATED (python -m bench report) -->"
END = "<!-- END GENERATED -->"


def _load(d: Path, name: str) -> dict[str, Any] | None:
    p = d / name
    if not p.exists():
        return None
    return dict(json.loads(p.read_text()))


def _f(v: Any, digits: int = 1, unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, (int, float)):
        if abs(v) >= 1000:
            return f"{v:,.0f}{unit}"
        return f"{v:.{digits}f}{unit}"
    return str(v)


def _ok(v: Any) -> str:
    return "met" if v is True else ("**not met**" if v is False else "–")


def machine_lines(data: dict[str, Any]) -> list[str]:
    m = data["machine"]
    v = m["versions"]
    return [
        f"- Machine: {m['nproc']} cores ({m['cpu_model']}), {m['mem_total_mb'] / 1024:.1f} GiB RAM, "
        f"load at start {m['loadavg_at_start']}, RLIMIT_NOFILE {m['nofile']}; git {m['git_head']}; "
        f"finished {data.get('finished_utc', '?')}.",
        f"- Versions: Python {v['python']}, uvicorn {v['uvicorn']}, Starlette {v['starlette']}, websockets "
        f"{v['websockets']}, uvloop {v['uvloop']}, httptools {v['httptools']}"
        + (f", {m['chromium']}" if m.get("chromium") else "") + ".",
        "- uvicorn (both servers): " + ", ".join(f"`{k}={val}`" for k, val in sorted(m["uvicorn_settings"].items())) + ".",
    ]


# -- fan-out ---------------------------------------------------------------------------------------


def fanout_md(data: dict[str, Any], img: str) -> list[str]:
    s = data["settings"]
    out = ["### Fan-out: deliveries/s and publish-to-receipt latency", ""]
    out += machine_lines(data)
    out.append(f"- Load: {s['workers']} load-generator processes (`{s.get('client', 'websockets')}` client, uvloop)"
               + (", server pinned to CPU 0 and clients to CPU 1" if s.get("pin") else "")
               + f"; fixed-rate steps of {s['step_s']:g} s, then a burst of back-to-back changes; "
               f"every client subscribed to one project. Events are published as the product's changes publish "
               f"them, two per change (`story.status.changed` ≈ 430 B, then `project.updated` ≈ 400 B); our server "
               f"speaks `dashboard.v2` to the clients (batches), the bare loop sends one frame per event.")
    out.append("")
    out.append("| N | server | run | step | offered events/s | delivered events/s | events / frame | p50 ms | p90 ms | p99 ms | max ms | lost | closed (code × n) | server CPU µs / delivered event |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in data["runs"]:
        if "steps" not in r:
            continue
        for i, st in enumerate(r["steps"] + [r["burst"]]):
            lat = st["latency"]
            label = f"{i}" if i < len(r["steps"]) else f"burst {st['events']}"
            per_frame = st["received"] / st["frames"] if st.get("frames") else None
            out.append(f"| {r['n']} | {r['kind']} | {r.get('rep', 0) + 1} | {label} | {_f(st['offered_deliveries_per_s'], 0)} | "
                       f"{_f(st['deliveries_per_s'], 0)} | {_f(per_frame, 2)} | {_f(lat.get('p50_ms'))} | {_f(lat.get('p90_ms'))} | "
                       f"{_f(lat.get('p99_ms'))} | {_f(lat.get('p100_ms'))} | {st['lost']} | "
                       f"{', '.join(f'{k} × {v}' for k, v in st['closed'].items()) or '–'} | "
                       f"{_f(st['server_cpu_us_per_delivery'])} |")
    out.append("")
    out.append("Verdict (medians over the repeated runs; CPU = server CPU µs per delivered event; capacity = 10⁶ / "
               "that CPU in the burst, i.e. events one core of this machine can deliver per second):")
    out.append("")
    out.append("| N (server if not app) | burst events/s app / bare | ≥ 1.5 | p99 ms at each step app / bare (ratio) | all ≤ 1.0 | "
               "burst p99 ms app / bare | ≤ 1.2 | lost, dup, gaps app | CPU µs/event burst app / bare | CPU µs/event at each step app / bare | capacity per core app / bare |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, v in data.get("verdict", {}).items():
        a, b = v["app"], v["bare"]
        if "step_p99" not in a:  # a result file from before these targets
            continue
        steps = "; ".join(f"{_f(x)} / {_f(y)} ({_f(r, 2)})" for x, y, r in zip(a["step_p99"], b["step_p99"], v["step_p99_ratios"], strict=True))
        cpu = "; ".join(f"{_f(x)} / {_f(y)}" for x, y in zip(a["step_cpu"], b["step_cpu"], strict=True))
        out.append(f"| {n} | {_f(a['burst_dps'], 0)} / {_f(b['burst_dps'], 0)} = {_f(v['throughput_ratio'], 2)} | "
                   f"{_ok(v['throughput_ok'])} | {steps} | {_ok(v['step_p99_ok'])} | {_f(a['burst_p99'])} / "
                   f"{_f(b['burst_p99'])} = {_f(v['burst_p99_ratio'], 2)} | {_ok(v['burst_p99_ok'])} | "
                   f"{a['lost']}, {a['dups']}, {a['gaps']} ({_ok(v['exact_ok'])}) | {_f(a['burst_cpu_us'])} / "
                   f"{_f(b['burst_cpu_us'])} | {cpu} | {_f(v['capacity_app_per_core'], 0)} / "
                   f"{_f(v['capacity_bare_per_core'], 0)} |")
    out += ["", f"![fan-out latency]({img}fanout-latency.png)", ""]
    return out


def memory_md(data: dict[str, Any], img: str) -> list[str]:
    out = ["### Memory per idle, authenticated, subscribed connection", ""]
    out.append("RSS of the server process (psutil): after a one-connection warm-up (base), after N/2 connections "
               "opened and subscribed (half), after all N (all). **KB / connection = (RSS_all − RSS_half) / (N/2)**, "
               "the marginal cost of one more idle connection; the average (RSS_all − RSS_base) / N also counts "
               "free heap left from start-up that the first connections reuse.")
    out.append("")
    out.append("| N | server | run | connect + subscribe s (per s) | idle server CPU % | RSS base / half / all MB | KB / connection (marginal) | KB / connection (average) | RSS after publishing MB |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for r in data["runs"]:
        if "rss_idle_mb" not in r:
            continue
        out.append(f"| {r['n']} | {r['kind']} | {r.get('rep', 0) + 1} | {_f(r['connect_s'])} ({_f(r['connected'] / r['connect_s'], 0)}) | "
                   f"{_f(r.get('idle_cpu_pct'))} | {_f(r['rss_base_mb'])} / {_f(r.get('rss_half_mb'))} / "
                   f"{_f(r['rss_idle_mb'])} | {_f(r['rss_per_conn_kb'])} | {_f(r.get('rss_avg_per_conn_kb'))} | "
                   f"{_f(r.get('rss_after_mb'))} |")
    out.append("")
    out.append("| N (server if not app) | app KB/conn (median) | ratio to bare | target ≤ 1.1 |")
    out.append("|---|---|---|---|")
    for n, v in data.get("verdict", {}).items():
        out.append(f"| {n} | {_f(v['mem_kb'])} | {_f(v['mem_ratio'], 2)} | {_ok(v['mem_ok'])} |")
    out += ["", f"![memory]({img}memory.png)", ""]
    return out


def plot_fanout(data: dict[str, Any], d: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n"] for r in data["runs"] if "steps" in r})
    if not sizes:
        return
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.2), squeeze=False)
    for ax, n in zip(axes[0], sizes, strict=True):
        for r in data["runs"]:
            if r["n"] != n or "steps" not in r:
                continue
            xs = [st["offered_deliveries_per_s"] for st in r["steps"]]
            color = COLORS.get(r["kind"], "tab:orange")
            first = r.get("rep", 0) == 0
            ax.plot(xs, [st["latency"].get("p50_ms") for st in r["steps"]], "o--", color=color, alpha=0.8,
                    label=f"{r['kind']} p50" if first else None)
            ax.plot(xs, [st["latency"].get("p99_ms") for st in r["steps"]], "s-", color=color, alpha=0.8,
                    label=f"{r['kind']} p99" if first else None)
        ax.set_title(f"N = {n} subscribers")
        ax.set_xlabel("offered deliveries / s")
        ax.set_ylabel("publish → receipt latency (ms)")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(d / "fanout-latency.png", dpi=110)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels, mem, colors = [], [], []
    for r in data["runs"]:
        if "rss_per_conn_kb" in r:
            labels.append(f"{r['kind']}\nN={r['n']}")
            mem.append(r["rss_per_conn_kb"])
            colors.append(COLORS.get(r["kind"], "tab:orange"))
    ax1.bar(labels, mem, color=colors)
    ax1.set_ylabel("server RSS per connection (KB)")
    tp = [(f"{r['kind']}\nN={r['n']}", r["burst"]["deliveries_per_s"] or 0, COLORS.get(r["kind"], "tab:orange"))
          for r in data["runs"] if "burst" in r]
    ax2.bar([t[0] for t in tp], [t[1] for t in tp], color=[t[2] for t in tp])
    ax2.set_ylabel("burst: events delivered / s")
    fig.tight_layout()
    fig.savefig(d / "memory.png", dpi=110)
    plt.close(fig)


# -- storm -----------------------------------------------------------------------------------------


def storm_md(data: dict[str, Any], img: str, stem: str = "storm") -> list[str]:
    s = data["settings"]
    term = s["kill"] == "term"
    variant = f", server experiment `{s['variant']}`" if s.get("variant") else ""
    out = ["### Reconnect storm" + (" (SIGTERM: restart hint + 1012" if term else " (SIGKILL") + variant + ")", ""]
    out += machine_lines(data)
    out.append(f"- {s['clients']} headless clients running the real client core (`client.runtime.Runtime`) in "
               f"{s['workers']} processes, bus `{s['bus']}`; server {'SIGKILL' if s['kill'] == 'kill' else 'SIGTERM'}, "
               f"restart after {s['down_s']:g} s on the same port. Events: {s['before']} before, {s['outage']} into "
               f"Redis while down, {s['rate']:g}/s for {s['during_s']:g} s after the restart, {s['after']} after.")
    out.append("")
    out.append("| schedule | peak dials / 100 ms | peak handshakes / 100 ms | peak handshakes / s | dials after kill | server ready after kill s | "
               "50 % back s | 99 % back s (after ready) | all back s | never back | lost events | seq gaps | recovered (resume) |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in data["runs"]:
        if "peak_dials_per_100ms" not in r:
            continue
        out.append(f"| {r['mode']} | {r['peak_dials_per_100ms']} | {r['peak_handshakes_per_100ms']} | "
                   f"{_f(r.get('peak_handshakes_per_s'), 0)} | {r['dials_after_kill']} | {_f(r['restart_ready_s'])} | {_f(r['t50_s'])} | {_f(r['t99_s'])} "
                   f"({_f(r.get('t99_after_ready_s'))}) | {_f(r['t100_s'])} | {r.get('never_back', 0)} | {r['lost']} | "
                   f"{r['seq_gaps']} | {r['recovered_true']}/{r['clients']} |")
    out.append("")
    for r in data["runs"]:
        if "close_codes" in r:
            codes = ", ".join(f"{k} × {v}" for k, v in sorted(r["close_codes"].items()))
            st = r.get("runtime_stats", {})
            out.append(f"- {r['mode']}: close codes seen by clients {codes}; client-core counters: "
                       f"{st.get('recovered', 0)} recovered, {st.get('unrecovered', 0)} unrecovered, "
                       f"{st.get('gaps', 0)} gaps, {st.get('duplicates', 0)} duplicates dropped, "
                       f"{st.get('failedAttempts', 0)} failed attempts; final states {r.get('final_states')}.")
    v = data.get("verdict", {})
    for r in data["runs"]:
        if r.get("publish_failed"):
            out.append(f"- {r['mode']}: **{r['publish_failed']} of {r['publish_failed'] + r['published']} publishes failed "
                       "in the server** (an exception from `bus.publish`; those events never existed, so they are not "
                       "counted as lost).")
    if "peak_ratio" in v:
        out.append(f"- Peak (jitter / seed): {_f(v.get('peak_ratio'), 2)}, target ≤ 0.25: {_ok(v.get('peak_ok'))}.")
    out.append(f"- All back within backoff cap + 5 s: {_ok(v.get('all_back_ok'))}. Zero lost and contiguous seq: "
               f"{_ok(v.get('lost_ok'))}.")
    if "term_peak_ok" in v:
        out.append(f"- After SIGTERM (jitter, hinted window {_f((v.get('term_back_limit_s') or 2) - 2)} s): peak handshakes per second ≤ 1.5 × N / restart window = "
                   f"{_f(v['term_peak_limit_per_s'], 0)}: {_ok(v['term_peak_ok'])}; everyone back within window + 2 s = "
                   f"{_f(v['term_back_limit_s'])} s: {_ok(v['term_back_ok'])}.")
    if "kill_back_ok" in v:
        out.append(f"- After SIGKILL (jitter): everyone back within 20 s: {_ok(v['kill_back_ok'])}.")
    out += ["", f"![storm]({img}{stem}.png)", ""]
    return out


def plot_storm(data: dict[str, Any], d: Path, name: str = "storm.png") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in data["runs"] if "dial_bins" in r]
    if not runs:
        return
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    for r in runs:
        xs = [i * 0.1 for i in range(len(r["dial_bins"]))]
        ax1.step(xs, r["dial_bins"], where="post", label=f"{r['mode']}: dials")
        cx = [c[0] for c in r["curve"]]
        cy = [c[1] / r["clients"] * 100 for c in r["curve"]]
        ax2.plot(cx, cy, label=r["mode"])
        ax1.axvline(r["restart_ready_s"], color="gray", linestyle=":", alpha=0.6)
        ax2.axvline(r["restart_ready_s"], color="gray", linestyle=":", alpha=0.6)
    ax1.set_ylabel("dials per 100 ms")
    ax1.legend()
    ax1.grid(True, alpha=0.3)
    ax2.set_ylabel("% live and re-subscribed")
    ax2.set_xlabel("seconds after the kill (dotted: server ready again)")
    ax2.legend()
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(d / name, dpi=110)
    plt.close(fig)


# -- browser ---------------------------------------------------------------------------------------


def browser_md(data: dict[str, Any], img: str) -> list[str]:
    out = ["### Time to live data in headless Chromium", ""]
    out += machine_lines(data)
    out.append(f"- {data['settings']['runs']} runs per cell, pages interleaved. Signed in beforehand (token and "
               "user pre-seeded in `localStorage` by an init script); clock from navigation start to the first DOM "
               "state with `data-state=\"live\"` and the first project's stories rendered.")
    out.append("")
    out.append("| page | cold median ms [min–max] | warm median ms [min–max] | requests (cold) | transferred KiB (cold) | cold / floor | cold: interpreter ready / main.py done / badge live / stories shown (medians, ms) |")
    out.append("|---|---|---|---|---|---|---|")
    res = data["results"]
    floor = res.get("js-floor", {}).get("cold", {}).get("median_ms")
    for name, cell in res.items():
        c, w = cell["cold"], cell["warm"]
        samples = [s for s in c.get("samples", []) if s.get("liveAt") is not None]
        reqs = samples[0].get("requests") if samples else None
        kib = (samples[0].get("transferBytes", 0) / 1024) if samples else None
        fails = (f" ({c['failures']} failed)" if c.get("failures") else "")
        out.append(f"| {name} | {_f(c.get('median_ms'), 0)} [{_f(c.get('min_ms'), 0)}–{_f(c.get('max_ms'), 0)}]{fails} | "
                   f"{_f(w.get('median_ms'), 0)} [{_f(w.get('min_ms'), 0)}–{_f(w.get('max_ms'), 0)}] | {_f(reqs, 0)} | "
                   f"{_f(kib, 0)} | {_f(c['median_ms'] / floor if floor and c.get('median_ms') else None, 1)} | "
                   f"{_f(c.get('interpreter_ready_median_ms'), 0)} / {_f(c.get('interpreter_done_median_ms'), 0)} / "
                   f"{_f(c.get('liveSeenAt_median_ms'), 0)} / {_f(c.get('storiesAt_median_ms'), 0)} |")
    v = data.get("verdict", {})
    out.append("")
    out.append(f"- MicroPython cold < 600 ms: {_ok(v.get('under_600_ok'))}; within 4× the JS floor: "
               f"{_ok(v.get('within_4x_ok'))} (ratio {_f(v.get('ratio_to_floor'), 1)}).")
    if v.get("micropython_floor_cold_ms") and v.get("micropython_cold_ms"):
        out.append(f"- Of the MicroPython page's cold {_f(v['micropython_cold_ms'], 0)} ms, PyScript + MicroPython alone "
                   f"take {_f(v['micropython_floor_cold_ms'], 0)} ms (`micropython-floor`); the rest, "
                   f"{_f(v['micropython_cold_ms'] - v['micropython_floor_cold_ms'], 0)} ms, is the dashboard's own "
                   "start-up (its Python files, imports, REST calls, socket, rendering).")
    out += ["", f"![browser]({img}browser.png)", ""]
    return out


def plot_browser(data: dict[str, Any], d: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = data["results"]
    names = list(res)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.38
    for j, kind in enumerate(("cold", "warm")):
        med = [res[n][kind].get("median_ms") or 0 for n in names]
        lo = [max(0, (res[n][kind].get("median_ms") or 0) - (res[n][kind].get("min_ms") or 0)) for n in names]
        hi = [max(0, (res[n][kind].get("max_ms") or 0) - (res[n][kind].get("median_ms") or 0)) for n in names]
        ax.bar([i + (j - 0.5) * width for i in range(len(names))], med, width, yerr=[lo, hi], capsize=3, label=kind)
    ax.axhline(600, color="tab:red", linestyle=":", label="600 ms target (MicroPython cold)")
    ax.set_xticks(range(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("navigation → live data (ms)")
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(d / "browser.png", dpi=110)
    plt.close(fig)


def redis_md(data: dict[str, Any]) -> list[str]:
    out = ["### Our server with the Redis bus (publish → Redis Streams → reader task → fan-out)", ""]
    out.append("| N | server | connected | connect errors | step | offered del/s | achieved del/s | p50 ms | p99 ms | "
               "server CPU µs/delivery | KB / connection |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in data["runs"]:
        if "steps" not in r:
            continue
        errs = "; ".join(f"{k} × {v}" for k, v in r.get("connect_errors", {}).items()) or "–"
        for i, st in enumerate(r["steps"] + [r["burst"]]):
            lat = st["latency"]
            label = f"{i}" if i < len(r["steps"]) else "burst"
            out.append(f"| {r['n']} | {r['kind']} | {r['connected']} | {errs if i == 0 else ''} | {label} | "
                       f"{_f(st['offered_deliveries_per_s'], 0)} | {_f(st['deliveries_per_s'], 0)} | "
                       f"{_f(lat.get('p50_ms'))} | {_f(lat.get('p99_ms'))} | {_f(st['server_cpu_us_per_delivery'])} | "
                       f"{_f(r['rss_per_conn_kb']) if i == 0 else ''} |")
    out.append("")
    return out


# -- profile ---------------------------------------------------------------------------------------


def profile_md(data: dict[str, Any], rel: str) -> list[str]:
    out = ["### Profiles", ""]
    for r in data["runs"]:
        tm = r.get("tracemalloc", {})
        out.append(f"- {r['kind']} N={r['n']}: traced Python allocations {_f(tm.get('per_conn_bytes', 0) / 1024)} KiB "
                   f"per connection (`{rel}profile-memory-{r['kind']}-{r['n']}.txt`), CPU profile "
                   f"`{rel}profile-cpu-{r['kind']}-{r['n']}.txt` (.html alongside).")
    out.append("")
    return out


def cluster_md(data: dict[str, Any]) -> list[str]:
    from bench.cluster_fanout import markdown

    return markdown(data)


def write(d: Path = RESULTS, docs: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    fan, browser, prof = _load(d, "fanout.json"), _load(d, "browser.json"), _load(d, "profile.json")
    fan_redis = _load(d, "fanout-redis.json")
    cluster = _load(d, "cluster.json")
    storms = [(p.stem, _load(d, p.name)) for p in sorted(d.glob("storm*.json"), key=lambda p: (p.stem != "storm", p.stem))]
    sections: list[list[str]] = []
    for data, md, plot in ((fan, fanout_md, plot_fanout), (browser, browser_md, plot_browser)):
        if data is None:
            continue
        try:
            plot(data, d)
        except Exception as exc:  # noqa: BLE001 - a plot problem must not lose the tables
            print(f"   plot failed: {exc!r}")
        sections.append(md(data, ""))
        if data is fan:
            sections.append(memory_md(fan, ""))
    storm_sections = []
    for stem, data in storms:
        assert data is not None
        try:
            plot_storm(data, d, stem + ".png")
        except Exception as exc:  # noqa: BLE001
            print(f"   plot failed: {exc!r}")
        storm_sections.append(storm_md(data, "", stem))
    at = 2 if fan else 0
    sections[at:at] = storm_sections
    if fan_redis is not None:
        sections.append(redis_md(fan_redis))
    if cluster is not None:
        sections.append(cluster_md(cluster))
    if prof is not None:
        sections.append(profile_md(prof, ""))
    body = [line for sec in sections for line in sec]
    summary = d / "summary.md"
    summary.write_text("# Benchmark results\n\nGenerated by `python -m bench report` from the JSON files here.\n\n"
                       + "\n".join(body).replace("](", "](./") + "\n")
    if docs and DOC.exists():
        rel = "../" + str(d.relative_to(ROOT)) + "/"
        doc_body = []
        if fan is not None:
            doc_body += fanout_md(fan, rel) + memory_md(fan, rel)
        for stem, data in storms:
            doc_body += storm_md(data, rel, stem)  # type: ignore[arg-type]
        if browser is not None:
            doc_body += browser_md(browser, rel)
        if fan_redis is not None:
            doc_body += redis_md(fan_redis)
        if cluster is not None:
            doc_body += cluster_md(cluster)
        if prof is not None:
            doc_body += profile_md(prof, "bench/results/")
        text = DOC.read_text()
        if BEGIN in text and END in text:
            head, _, rest = text.partition(BEGIN)
            _, _, tail = rest.partition(END)
            DOC.write_text(head + BEGIN + "\n\n" + "\n".join(doc_body) + "\n" + END + tail)
    print(f"   report: {summary}", flush=True)
    return summary
