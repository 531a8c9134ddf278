"""Fan-out and memory: N subscribed clients, our server versus the bare Starlette loop, same run.

Call `run_fanout(cfg)` (see `FanoutConfig`); `python -m bench fanout` does it for you. For each N and
each server kind (`bare` first, then `app`), it:

1. starts `bench.server` on a free loopback port and reads its RSS after a one-connection warm-up;
2. opens N authenticated, subscribed connections from `workers` load-generator processes and reads RSS
   again after they settle (memory per idle connection = delta / N);
3. publishes at each fixed rate of `steps` for `step_s` seconds, waits until every client has every event,
   and records deliveries/s, publish-to-receipt latency (p50/p90/p99/max), lost events and server CPU;
4. publishes a burst of back-to-back events (the throughput phase: deliveries/s until the last receipt);
5. closes everything and kills every process it started.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from websockets.asyncio.client import connect

from bench.env import (HOST, PYTHON, RAW, RESULTS, Child, JsonLineChild, Redis, free_port, machine_info,
                       print_header, wait_http, write_json)

QUANTILES = [0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]


@dataclass
class FanoutConfig:
    sizes: list[int] = field(default_factory=lambda: [1000, 5000])
    kinds: list[str] = field(default_factory=lambda: ["bare", "app"])
    workers: int = 4
    step_s: float = 5.0
    # events per second per step, by N: chosen so the steps span ~5k..40k offered deliveries/s
    steps: dict[int, list[float]] = field(default_factory=dict)
    burst: dict[int, int] = field(default_factory=dict)
    target_step: int = 1  # the step compared against the latency target
    repeat: int = 2  # runs per (N, server); the verdict uses the median
    idle_s: float = 5.0  # server CPU is sampled this long with every connection idle (heartbeats only)
    project: str = "apollo"
    pin: bool = False
    out: str = "fanout.json"
    tag: str = "full"
    profile: bool = False  # trace allocations while connecting, pyinstrument while publishing (slows both)

    def steps_for(self, n: int) -> list[float]:
        if n in self.steps:
            return self.steps[n]
        base = 5000.0 / n
        return [round(base * k, 3) for k in (1, 2, 4, 8)]

    def burst_for(self, n: int) -> int:
        return self.burst.get(n, max(20, min(200, 200_000 // n)))


def server_env(tmp: Path) -> dict[str, str]:
    """Settings for our server in every benchmark: demo data, no per-user cap, quiet logs."""
    return {
        "DASHBOARD_VAR_DIR": str(tmp),
        "DASHBOARD_DB": str(tmp / "bench.db"),
        "DASHBOARD_JWT_SECRET": secrets.token_urlsafe(48),
        "DASHBOARD_DEMO": "1",
        "DASHBOARD_DEMO_ACTIVITY": "0",
        "DASHBOARD_MAX_CONNECTIONS_PER_USER": "0",
        "DASHBOARD_MAX_CONNECTIONS_PER_IP": "0",  # every benchmark client comes from 127.0.0.1
        "DASHBOARD_LOG_LEVEL": "warning",
    }


def login_session(base: str, username: str = "alice", password: str = "alice-demo") -> dict[str, Any]:
    """`POST /api/auth/login` → `{token, expiresAt, user}` (demo user alice by default)."""
    req = urllib.request.Request(f"{base}/api/auth/login", method="POST",
                                 data=json.dumps({"username": username, "password": password}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
        return dict(json.loads(resp.read()))


def login(base: str) -> str:
    return str(login_session(base)["token"])


def summarize(latencies_s: np.ndarray) -> dict[str, Any]:
    if latencies_s.size == 0:
        return {"samples": 0}
    ms = latencies_s * 1000.0
    qs = np.percentile(ms, QUANTILES)
    out = {"samples": int(ms.size), "mean_ms": float(ms.mean())}
    for q, v in zip(QUANTILES, qs, strict=True):
        out[f"p{q:g}_ms"] = float(v)
    return out


class Phase:
    """Run one publish phase against every load generator and merge what they saw."""

    def __init__(self, control: Any, gens: list[JsonLineChild], server: psutil.Process, raw_dir: Path) -> None:
        self.control = control
        self.gens = gens
        self.server = server
        self.raw_dir = raw_dir
        self.next_n = 1

    async def run(self, label: str, n_events: int, rate: float, n_conns: int, project: str) -> dict[str, Any]:
        start = self.next_n
        self.next_n += n_events
        await asyncio.gather(*(g.call(cmd="reset", start=start) for g in self.gens))
        gc0 = await _control(self.control, cmd="gcstats")
        cpu0 = sum(self.server.cpu_times()[:2])
        gen_cpu0 = sum(g.cpu_s() for g in self.gens)
        t_publish = time.monotonic()
        await self.control.send(json.dumps({"cmd": "publish", "n": n_events, "rate": rate, "start": start,
                                            "project": project}))
        pub = json.loads(await asyncio.wait_for(self.control.recv(), 600))
        drain_timeout = 60 + n_events * n_conns / 5000
        waits = await asyncio.gather(*(g.call(drain_timeout + 30, cmd="wait", per_conn=n_events,
                                              wait_s=drain_timeout) for g in self.gens))
        cpu1 = sum(self.server.cpu_times()[:2])
        gen_cpu1 = sum(g.cpu_s() for g in self.gens)
        gc1 = await _control(self.control, cmd="gcstats")
        gc_phase = {}
        if "gc" in gc0 and "gc" in gc1:
            for gen in ("0", "1", "2"):
                count = gc1["gc"][gen][0] - gc0["gc"][gen][0]
                total = gc1["gc"][gen][1] - gc0["gc"][gen][1]
                gc_phase[gen] = {"count": count, "total_ms": total, "max_ms_ever": gc1["gc"][gen][2]}
        dumps = []
        arrays = []
        for i, g in enumerate(self.gens):
            path = self.raw_dir / f"{label}-{i}.f64"
            dumps.append(await g.call(cmd="dump", path=str(path)))
            arrays.append(np.fromfile(path, dtype=np.float64))
            path.unlink(missing_ok=True)
        lat = np.concatenate(arrays) if arrays else np.zeros(0)
        received = sum(d["received"] for d in dumps)
        last = max((d["last_recv"] for d in dumps), default=0.0)
        first = min((d["first_recv"] for d in dumps if d["first_recv"]), default=0.0)
        expected = n_events * n_conns
        window = (last - t_publish) if last else float("nan")
        result = {
            "label": label,
            "events": n_events,
            "rate_events_per_s": rate,
            "offered_deliveries_per_s": rate * n_conns if rate else None,
            "expected_deliveries": expected,
            "received": received,
            "frames": sum(d.get("frames", 0) for d in dumps),
            "lost": expected - received,
            "gaps": sum(d["gaps"] for d in dumps),
            "dups": sum(d["dups"] for d in dumps),
            "open_after": sum(d["open"] for d in dumps),
            "closed": _merge_counts(d["closed"] for d in dumps),
            "timed_out": any(w.get("timed_out") for w in waits),
            "publish": pub,
            "window_s": window,
            "first_receipt_after_s": (first - t_publish) if first else None,
            "deliveries_per_s": received / window if window and window == window and window > 0 else None,
            "server_cpu_s": cpu1 - cpu0,
            "server_cpu_us_per_delivery": (cpu1 - cpu0) * 1e6 / received if received else None,
            "client_cpu_s": gen_cpu1 - gen_cpu0,
            "gc": gc_phase,
            "latency": summarize(lat),
        }
        return result


async def _control(control: Any, timeout: float = 120, **msg: Any) -> dict[str, Any]:
    await control.send(json.dumps(msg))
    return dict(json.loads(await asyncio.wait_for(control.recv(), timeout)))


def _merge_counts(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in items:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


async def warm_up(url: str, protocols: list[str], origin: str, project: str, control: Any) -> None:
    """One connection, one subscribe, one event: imports and caches are hot before the RSS baseline."""
    async with connect(url, subprotocols=protocols, origin=origin, compression=None, proxy=None,
                       ping_interval=None) as ws:  # type: ignore[arg-type]
        await asyncio.wait_for(ws.recv(), 10)
        await ws.send(json.dumps({"action": "subscribe", "projectId": project}))
        while json.loads(await asyncio.wait_for(ws.recv(), 10)).get("type") != "subscribed":
            pass
        await control.send(json.dumps({"cmd": "publish", "n": 1, "rate": 0, "start": 0, "project": project}))
        await asyncio.wait_for(control.recv(), 30)
        while json.loads(await asyncio.wait_for(ws.recv(), 10)).get("type") != "event":
            pass


async def run_one(cfg: FanoutConfig, n: int, kind: str, tmp: Path, rep: int = 0) -> dict[str, Any]:
    port = free_port()
    base = f"http://{HOST}:{port}"
    env = server_env(tmp / f"{kind}-{n}-{rep}")  # a fresh database (and demo seeding) for every run
    Path(env["DASHBOARD_VAR_DIR"]).mkdir(parents=True, exist_ok=True)
    log = RAW / f"server-{cfg.tag}-{kind}-{n}.log"
    # kind = "bare" | "app" | "app-<part>-<part>…": part "redis" selects the Redis bus (publish goes through Redis
    # Streams and back), any other part names a bench.variants experiment (e.g. app-gc, app-redis-redispool)
    parts = kind.split("-")[1:]
    variants = [p for p in parts if p != "redis"]
    redis = None
    if "redis" in parts:
        redis = Redis(tmp)
        env["DASHBOARD_BUS_URL"] = redis.url
    server_cpus = {0} if cfg.pin else None
    gen_cpus = {1} if cfg.pin and (os.cpu_count() or 1) > 1 else None
    server_kind = "bare" if kind == "bare" else "app"
    args = [PYTHON, "-m", "bench.server", "--kind", server_kind, "--port", str(port)]
    if variants:
        args += ["--variant", ",".join(variants)]
    child = Child(args, env=env, log=log, cpus=server_cpus)
    gens: list[JsonLineChild] = []
    result: dict[str, Any] = {"n": n, "kind": kind, "port": port}
    try:
        wait_http(f"{base}/bench/ready", 60, child)
        token = login(base) if server_kind == "app" else "x" * 160
        protocols = ["dashboard.v2", "dashboard.v1", f"bearer.{token}"]  # the bare server selects v1
        url = f"ws://{HOST}:{port}/ws/status-updates"
        origin = base
        proc = psutil.Process(child.pid)
        async with connect(f"ws://{HOST}:{port}/bench/control", proxy=None, ping_interval=None,
                           compression=None, max_size=None) as control:
            await warm_up(url, protocols, origin, cfg.project, control)
            await asyncio.sleep(0.5)
            rss_base = proc.memory_info().rss
            if cfg.profile:
                await _control(control, cmd="tracemalloc", action="start", frames=8)
            gens = list(await asyncio.gather(*(JsonLineChild.start("bench.loadgen", stop_cmd="close", cpus=gen_cpus) for _ in range(cfg.workers))))
            # Two halves: RSS after the first half and after all; the slope over the second half is the marginal
            # cost of one more connection (free heap left over from start-up is used up by the first half).
            shares = [n // cfg.workers + (1 if i < n % cfg.workers else 0) for i in range(cfg.workers)]
            opened: list[dict[str, Any]] = []
            rss_points = []
            connect_s = 0.0
            for half in (0, 1):
                t0 = time.monotonic()
                counts = [k // 2 if half == 0 else k - k // 2 for k in shares]
                opened = await asyncio.gather(*(g.call(timeout=300, cmd="connect", url=url, count=k,
                                                       subprotocols=protocols, origin=origin, project=cfg.project,
                                                       concurrency=max(1, 200 // cfg.workers))
                                                for g, k in zip(gens, counts, strict=True)))
                connect_s += time.monotonic() - t0
                await asyncio.sleep(1.0 if half == 0 else 2.0)
                rss_points.append((sum(o["open"] for o in opened), proc.memory_info().rss))
            n_open = sum(o["open"] for o in opened)
            errors = _merge_counts(o["errors"] for o in opened)
            print(f"   [{kind} N={n}] {n_open}/{n} connected+subscribed in {connect_s:.1f}s "
                  f"({n_open / connect_s:,.0f}/s)" + (f" errors={errors}" if errors else ""), flush=True)
            rss_idle = rss_points[-1][1]
            (n_half, rss_half), (n_full, _) = rss_points
            if cfg.profile:
                result["tracemalloc"] = await _control(
                    control, cmd="tracemalloc", path=str((RESULTS / cfg.out).parent / f"profile-memory-{kind}-{n}.txt"),
                    per=n_open)
                await _control(control, cmd="profile", action="start")
            idle_cpu0 = sum(proc.cpu_times()[:2])
            await asyncio.sleep(cfg.idle_s)
            idle_cpu = (sum(proc.cpu_times()[:2]) - idle_cpu0) / cfg.idle_s * 100
            result.update({
                "idle_cpu_pct": idle_cpu,
                "connected": n_open, "connect_errors": errors, "connect_s": connect_s,
                "rss_base_mb": rss_base / 2**20, "rss_half_mb": rss_half / 2**20, "rss_idle_mb": rss_idle / 2**20,
                "rss_avg_per_conn_kb": (rss_idle - rss_base) / max(1, n_open) / 1024,
                "rss_per_conn_kb": (rss_idle - rss_half) / max(1, n_full - n_half) / 1024,
            })
            phase = Phase(control, gens, proc, RAW)
            steps = []
            for i, rate in enumerate(cfg.steps_for(n)):
                count = max(4, 2 * int(round(rate * cfg.step_s / 2)))  # whole changes of two events
                r = await phase.run(f"{cfg.tag}-{kind}-{n}-step{i}", count, rate, n_open, cfg.project)
                steps.append(r)
                lat = r["latency"]
                g2 = r["gc"].get("2", {})
                print(f"   [{kind} N={n}] step {i}: {rate:g} ev/s x {count} -> {r['deliveries_per_s'] or 0:,.0f} del/s "
                      f"p50 {lat.get('p50_ms', float('nan')):.1f} ms p99 {lat.get('p99_ms', float('nan')):.1f} ms "
                      f"lost {r['lost']} cpu/del {r['server_cpu_us_per_delivery'] or 0:.1f} us "
                      f"gc2 {g2.get('count', '?')}x {g2.get('total_ms', 0):.0f} ms", flush=True)
            burst_n = cfg.burst_for(n)
            burst = await phase.run(f"{cfg.tag}-{kind}-{n}-burst", burst_n, 0, n_open, cfg.project)
            lat = burst["latency"]
            print(f"   [{kind} N={n}] burst {burst_n}: {burst['deliveries_per_s'] or 0:,.0f} del/s "
                  f"p50 {lat.get('p50_ms', float('nan')):.1f} ms p99 {lat.get('p99_ms', float('nan')):.1f} ms "
                  f"lost {burst['lost']} cpu/del {burst['server_cpu_us_per_delivery'] or 0:.1f} us", flush=True)
            result.update({"steps": steps, "burst": burst, "rss_after_mb": proc.memory_info().rss / 2**20})
            if cfg.profile:
                result["pyinstrument"] = await _control(
                    control, cmd="profile", action="stop", path=str((RESULTS / cfg.out).parent / f"profile-cpu-{kind}-{n}.txt"))
            print(f"   [{kind} N={n}] RSS base {result['rss_base_mb']:.1f} MB, half {result['rss_half_mb']:.1f} MB, "
                  f"all {result['rss_idle_mb']:.1f} MB -> {result['rss_per_conn_kb']:.1f} KB/conn marginal "
                  f"({result['rss_avg_per_conn_kb']:.1f} average)", flush=True)
    finally:
        await asyncio.gather(*(g.stop() for g in gens), return_exceptions=True)
        child.stop()
        if redis:
            redis.stop()
    return result


async def run_fanout_async(cfg: FanoutConfig) -> dict[str, Any]:
    info = machine_info()
    settings = {k: v for k, v in asdict(cfg).items()}
    settings["steps"] = {n: cfg.steps_for(n) for n in cfg.sizes}
    settings["burst"] = {n: cfg.burst_for(n) for n in cfg.sizes}
    settings["client"] = "picows"  # bench/loadgen.py's WebSocket client
    print_header("fan-out + memory", info, settings)
    RAW.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
    runs = []
    try:
        for n in cfg.sizes:
            for rep in range(cfg.repeat):
                for kind in cfg.kinds:  # interleaved, so slow drifts of the shared machine hit both servers
                    run = await run_one(cfg, n, kind, tmp, rep)
                    run["rep"] = rep
                    runs.append(run)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = {"benchmark": "fanout", "machine": info, "settings": settings, "runs": runs,
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    data["verdict"] = verdict(data)
    write_json(RESULTS / cfg.out, data)
    return data


def _median(values: list[float]) -> float:
    vals = sorted(v for v in values if v is not None and v == v)
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def _agg(runs: list[dict[str, Any]], n: int, kind: str, target_step: int) -> dict[str, Any] | None:
    mine = [r for r in runs if r["n"] == n and r["kind"] == kind and "burst" in r]
    if not mine:
        return None
    steps = len(mine[0]["steps"])
    step = min(target_step, steps - 1)
    phases = [s for r in mine for s in (*r["steps"], r["burst"])]
    return {
        "runs": len(mine),
        "step": step,
        "burst_dps": _median([r["burst"]["deliveries_per_s"] for r in mine]),
        "burst_cpu_us": _median([r["burst"]["server_cpu_us_per_delivery"] for r in mine]),
        "burst_p99": _median([r["burst"]["latency"].get("p99_ms") for r in mine]),
        "burst_events_per_frame": _median([r["burst"]["received"] / r["burst"]["frames"] for r in mine
                                           if r["burst"].get("frames")]),
        "step_cpu_us": _median([r["steps"][step]["server_cpu_us_per_delivery"] for r in mine]),
        "step_p99": [_median([r["steps"][i]["latency"].get("p99_ms") for r in mine]) for i in range(steps)],
        "step_cpu": [_median([r["steps"][i]["server_cpu_us_per_delivery"] for r in mine]) for i in range(steps)],
        "p50": _median([r["steps"][step]["latency"].get("p50_ms") for r in mine]),
        "p99": _median([r["steps"][step]["latency"].get("p99_ms") for r in mine]),
        "mem_kb": _median([r["rss_per_conn_kb"] for r in mine]),
        "lost": sum(s["lost"] for s in phases),
        "dups": sum(s["dups"] for s in phases),
        "gaps": sum(s["gaps"] for s in phases),
    }


# Targets against the bare loop in the same run (medians over repeats).
BURST_THROUGHPUT_MIN = 1.5  # events delivered per second in the burst
STEP_P99_MAX = 1.0  # p99 at every fixed-rate step
BURST_P99_MAX = 1.2
MEMORY_MAX = 1.1  # KB per idle connection


def verdict(data: dict[str, Any]) -> dict[str, Any]:
    """Every target, per N and server kind: burst events/s >= 1.5x bare, p99 at each fixed-rate step <= 1.0x bare,
    burst p99 <= 1.2x bare, memory per idle connection <= 1.1x bare, no loss, duplicate or reordering; server CPU
    per delivered event is reported (burst and steps), not judged."""
    out: dict[str, Any] = {}
    target_step = data["settings"]["target_step"]
    kinds = [k for k in data["settings"]["kinds"] if k != "bare"]
    for n, kind in ((n, kind) for n in sorted({r["n"] for r in data["runs"]}) for kind in kinds):
        app, bare = _agg(data["runs"], n, kind, target_step), _agg(data["runs"], n, "bare", target_step)
        if not app or not bare:
            continue
        step_ratios = [a / b if a == a and b == b and b else float("nan")
                       for a, b in zip(app["step_p99"], bare["step_p99"], strict=True)]
        out[str(n) if kind == "app" else f"{n} {kind}"] = {
            "app": app,
            "bare": bare,
            "capacity_app_per_core": 1e6 / app["burst_cpu_us"],
            "capacity_bare_per_core": 1e6 / bare["burst_cpu_us"],
            "capacity_ratio": bare["burst_cpu_us"] / app["burst_cpu_us"],
            "step_cpu_ratio": app["step_cpu_us"] / bare["step_cpu_us"],
            "throughput_ratio": app["burst_dps"] / bare["burst_dps"],
            "throughput_ok": app["burst_dps"] / bare["burst_dps"] >= BURST_THROUGHPUT_MIN,
            "step_p99_ratios": step_ratios,
            "step_p99_ok": all(r <= STEP_P99_MAX for r in step_ratios),
            "burst_p99_ratio": app["burst_p99"] / bare["burst_p99"],
            "burst_p99_ok": app["burst_p99"] / bare["burst_p99"] <= BURST_P99_MAX,
            "p99_step": app["step"],
            "p99_ratio": app["p99"] / bare["p99"],
            "mem_ratio": app["mem_kb"] / bare["mem_kb"],
            "mem_kb": app["mem_kb"],
            "mem_ok": app["mem_kb"] <= MEMORY_MAX * bare["mem_kb"],
            "lost_app": app["lost"],
            "lost_bare": bare["lost"],
            "exact_ok": app["lost"] == app["dups"] == app["gaps"] == 0,
        }
    return out


def run_fanout(cfg: FanoutConfig) -> dict[str, Any]:
    from bench.env import raise_nofile

    raise_nofile()
    return asyncio.run(run_fanout_async(cfg))
