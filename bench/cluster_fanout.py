"""Fan-out through HAProxy to two nodes, next to one node, in the same run: `python -m bench cluster`.

Call `run_cluster_fanout(cfg)`. The measurement is bench/fanout.py's (load-generator processes, fixed-rate steps then
a burst of back-to-back events, publish-to-receipt latency, server CPU per delivery, RSS per idle connection), for each
set-up of `cfg.setups`, each on its own PostgreSQL + Redis (append-only) + nodes (+ HAProxy) from `bench.cluster`:

- `one-node`: clients straight to one node;
- `one-node-proxy`: the same node behind HAProxy (what the proxy costs);
- `two-nodes-proxy`: two nodes behind HAProxy (leastconn gives each half the clients).

Events are published by node 1 (`/bench/control`) into Redis; every node's reader fans them out to its own clients.
Results: `bench/results/cluster.json`; `markdown(data)` renders them for docs/performance.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import connect

from bench.cluster import Cluster
from bench.env import HOST, PYTHON, RAW, RESULTS, JsonLineChild, machine_info, print_header, write_json
from bench.fanout import FanoutConfig, Phase, login, warm_up

SETUPS = ("one-node", "one-node-proxy", "two-nodes-proxy")
NODE_ENV = {
    "DASHBOARD_MAX_CONNECTIONS_PER_USER": "0",  # every bench client signs in as alice
    "DASHBOARD_MAX_CONNECTIONS_PER_IP": "0",
    "DASHBOARD_DEMO_ACTIVITY": "0",
    "DASHBOARD_LOG_LEVEL": "warning",
}


@dataclass
class ClusterFanoutConfig:
    sizes: list[int] = field(default_factory=lambda: [2000])
    setups: list[str] = field(default_factory=lambda: list(SETUPS))
    workers: int = 4
    step_s: float = 5.0
    target_step: int = 1
    project: str = "apollo"
    out: str = "cluster.json"
    tag: str = "full"

    def steps_for(self, n: int) -> list[float]:
        return FanoutConfig().steps_for(n)[:3]  # 5k, 10k, 20k offered deliveries/s

    def burst_for(self, n: int) -> int:
        return FanoutConfig().burst_for(n)


def bench_server_argv(port: int) -> list[str]:
    return [PYTHON, "-m", "bench.server", "--kind", "app", "--port", str(port)]


class Processes:
    """Several processes read as one: `cpu_times()` sums user and system time (what `fanout.Phase` reads)."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]

    def cpu_times(self) -> tuple[float, float]:
        times = [p.cpu_times() for p in self.procs]
        return sum(t.user for t in times), sum(t.system for t in times)

    def cpu_s(self) -> float:
        return sum(self.cpu_times())

    def rss(self) -> list[int]:
        return [p.memory_info().rss for p in self.procs]


def _sessions(cluster: Cluster) -> dict[str, int]:
    if cluster.proxy is None:
        return {}
    return {r["svname"]: int(r["scur"]) for r in cluster.proxy.stats()
            if r["pxname"] == "nodes" and r["svname"].startswith("node")}


async def run_setup(cfg: ClusterFanoutConfig, n: int, setup: str, tmp: Path) -> dict[str, Any]:
    nodes = 2 if setup.startswith("two") else 1
    through_proxy = setup.endswith("proxy")
    cluster = Cluster(nodes=nodes, node_env=NODE_ENV, workdir=tmp / f"{setup}-{n}", node_argv=bench_server_argv)
    await asyncio.to_thread(cluster.start)
    gens: list[JsonLineChild] = []
    result: dict[str, Any] = {"n": n, "setup": setup, "nodes": nodes, "through_proxy": through_proxy}
    try:
        base = cluster.url if through_proxy else cluster.node(0).url
        url = base.replace("http://", "ws://") + "/ws/status-updates"
        token = await asyncio.to_thread(login, cluster.node(0).url)
        protocols = ["dashboard.v1", f"bearer.{token}"]
        servers = Processes([node.pid for node in cluster.nodes])  # type: ignore[misc]
        proxy = Processes([cluster.proxy.proc.pid]) if cluster.proxy and cluster.proxy.proc else None
        async with connect(f"ws://{HOST}:{cluster.node(0).port}/bench/control", proxy=None, ping_interval=None,
                           compression=None, max_size=None) as control:
            await warm_up(url, protocols, base, cfg.project, control)
            await asyncio.sleep(0.5)
            rss_base = servers.rss()
            gens = list(await asyncio.gather(*(JsonLineChild.start("bench.loadgen", stop_cmd="close")
                                               for _ in range(cfg.workers))))
            shares = [n // cfg.workers + (1 if i < n % cfg.workers else 0) for i in range(cfg.workers)]
            points = []
            connect_s = 0.0
            opened: list[dict[str, Any]] = []
            for half in (0, 1):
                counts = [k // 2 if half == 0 else k - k // 2 for k in shares]
                t0 = time.monotonic()
                opened = await asyncio.gather(*(g.call(timeout=300, cmd="connect", url=url, count=k,
                                                       subprotocols=protocols, origin=base, project=cfg.project,
                                                       concurrency=max(1, 200 // cfg.workers))
                                                for g, k in zip(gens, counts, strict=True)))
                connect_s += time.monotonic() - t0
                await asyncio.sleep(1.0 if half == 0 else 2.0)
                points.append((sum(o["open"] for o in opened), servers.rss()))
            n_open = points[-1][0]
            (n_half, rss_half), (_, rss_full) = points
            result.update({
                "connected": n_open, "connect_s": connect_s,
                "sessions_per_node": _sessions(cluster) if through_proxy else {"node1": n_open},
                "rss_base_mb": [r / 2**20 for r in rss_base], "rss_idle_mb": [r / 2**20 for r in rss_full],
                "rss_per_conn_kb": (sum(rss_full) - sum(rss_half)) / max(1, n_open - n_half) / 1024,
                "rss_avg_per_conn_kb": (sum(rss_full) - sum(rss_base)) / max(1, n_open) / 1024,
            })
            print(f"   [{setup} N={n}] {n_open}/{n} connected in {connect_s:.1f}s; per node "
                  f"{result['sessions_per_node'] or '-'}; RSS {result['rss_per_conn_kb']:.1f} KB/conn", flush=True)
            phase = Phase(control, gens, servers, RAW)  # type: ignore[arg-type]
            steps = []
            for i, rate in enumerate(cfg.steps_for(n)):
                count = max(3, int(round(rate * cfg.step_s)))
                proxy_cpu0 = proxy.cpu_s() if proxy else 0.0
                r = await phase.run(f"{cfg.tag}-cluster-{setup}-{n}-step{i}", count, rate, n_open, cfg.project)
                r["proxy_cpu_us_per_delivery"] = ((proxy.cpu_s() - proxy_cpu0) * 1e6 / r["received"]
                                                  if proxy and r["received"] else None)
                steps.append(r)
                lat = r["latency"]
                print(f"   [{setup} N={n}] step {i}: {rate:g} ev/s -> {r['deliveries_per_s'] or 0:,.0f} del/s "
                      f"p50 {lat.get('p50_ms', float('nan')):.1f} ms p99 {lat.get('p99_ms', float('nan')):.1f} ms "
                      f"lost {r['lost']} node cpu/del {r['server_cpu_us_per_delivery'] or 0:.1f} us", flush=True)
            proxy_cpu0 = proxy.cpu_s() if proxy else 0.0
            burst = await phase.run(f"{cfg.tag}-cluster-{setup}-{n}-burst", cfg.burst_for(n), 0, n_open, cfg.project)
            burst["proxy_cpu_us_per_delivery"] = ((proxy.cpu_s() - proxy_cpu0) * 1e6 / burst["received"]
                                                  if proxy and burst["received"] else None)
            lat = burst["latency"]
            print(f"   [{setup} N={n}] burst: {burst['deliveries_per_s'] or 0:,.0f} del/s p50 "
                  f"{lat.get('p50_ms', float('nan')):.1f} ms p99 {lat.get('p99_ms', float('nan')):.1f} ms lost "
                  f"{burst['lost']}", flush=True)
            result.update({"steps": steps, "burst": burst, "load_after": [round(x, 2) for x in os.getloadavg()]})
    finally:
        await asyncio.gather(*(g.stop() for g in gens), return_exceptions=True)
        await asyncio.to_thread(cluster.stop)
    return result


async def run_cluster_fanout_async(cfg: ClusterFanoutConfig) -> dict[str, Any]:
    info = machine_info()
    settings = asdict(cfg)
    settings["steps"] = {n: cfg.steps_for(n) for n in cfg.sizes}
    settings["burst"] = {n: cfg.burst_for(n) for n in cfg.sizes}
    print_header("fan-out through HAProxy: two nodes next to one", info, settings)
    RAW.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    runs = []
    try:
        for n in cfg.sizes:
            for setup in cfg.setups:
                runs.append(await run_setup(cfg, n, setup, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = {"benchmark": "cluster", "machine": info, "settings": settings, "runs": runs,
            "load_at_end": [round(x, 2) for x in os.getloadavg()],
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(RESULTS / cfg.out, data)
    return data


def run_cluster_fanout(cfg: ClusterFanoutConfig) -> dict[str, Any]:
    from bench.env import raise_nofile

    raise_nofile()
    return asyncio.run(run_cluster_fanout_async(cfg))


def _f(v: Any, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{digits}f}"


def markdown(data: dict[str, Any]) -> list[str]:
    """The cluster section of docs/performance.md."""
    from bench.report import machine_lines

    s = data["settings"]
    out = ["### Fan-out through HAProxy: two nodes next to one", ""]
    out += machine_lines(data)
    out.append(f"- Load average at start {data['machine']['loadavg_at_start']}, at the end {data.get('load_at_end')} "
               "(the machine is shared with other developers: the absolute numbers move with it; the set-ups ran "
               "one after the other in the same run).")
    out.append(f"- Each set-up on its own PostgreSQL + Redis (append-only) from `bench.cluster`; nodes are "
               f"`bench.server --kind app` (the product app plus the bench routes), Redis bus, PostgreSQL store; "
               f"{s['workers']} load-generator processes, every client subscribed to `{s['project']}`; events "
               "published by node 1 into Redis, fanned out by every node; nothing pinned.")
    out.append("")
    out.append("| N | set-up | sockets per node | step | offered del/s | achieved del/s | p50 ms | p99 ms | lost | node CPU µs/delivery | HAProxy CPU µs/delivery |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in data["runs"]:
        if "steps" not in r:
            continue
        per_node = "/".join(str(v) for v in r["sessions_per_node"].values()) if r.get("sessions_per_node") else str(r["connected"])
        for i, st in enumerate(r["steps"] + [r["burst"]]):
            label = str(i) if i < len(r["steps"]) else f"burst {st['events']}"
            lat = st["latency"]
            out.append(f"| {r['n']} | {r['setup']} | {per_node} | {label} | {_f(st['offered_deliveries_per_s'], 0)} | "
                       f"{_f(st['deliveries_per_s'], 0)} | {_f(lat.get('p50_ms'))} | {_f(lat.get('p99_ms'))} | "
                       f"{st['lost']} | {_f(st['server_cpu_us_per_delivery'])} | "
                       f"{_f(st.get('proxy_cpu_us_per_delivery'))} |")
    out.append("")
    out.append("| N | set-up | connected in s | RSS per idle connection, KB (marginal) | RSS per node after N, MB |")
    out.append("|---|---|---|---|---|")
    for r in data["runs"]:
        if "rss_per_conn_kb" in r:
            out.append(f"| {r['n']} | {r['setup']} | {_f(r['connect_s'])} | {_f(r['rss_per_conn_kb'])} | "
                       + " / ".join(_f(x) for x in r["rss_idle_mb"]) + " |")
    out.append("")
    return out
