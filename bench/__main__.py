"""`python -m bench [--quick] [all|fanout|storm|browser|cluster|profile|report]` (`make bench` runs `all`).

- `fanout`:  fan-out throughput/latency and memory per connection, our server vs the bare Starlette loop
             (N = 1000 and 5000; `--quick`: N = 200).
- `storm`:   reconnect storm of N = 5000 real client cores (`--quick`: 100): SIGKILL with the no-jitter and the
             jitter schedule, and (under `all`, or `--kill term`) SIGTERM with the default client.
- `browser`: time to live data in headless Chromium, MicroPython / Pyodide / plain-JS floor, cold and warm.
- `cluster`: fan-out through HAProxy to two nodes next to one node (PostgreSQL + Redis; N = 2000, `--quick`: 200).
- `profile`: the fan-out once more with allocation tracing and pyinstrument (writes bench/results/profile-*).
- `report`:  tables and plots from the JSON results (also run at the end of every other command).

Full results go to `bench/results/`, quick ones to `bench/results/quick/`; `report` rewrites the generated
part of `docs/performance.md` from the full results only. Loopback only; every child process is killed.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.env import install_cleanup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="all",
                        choices=["all", "fanout", "storm", "browser", "cluster", "profile", "report"])
    parser.add_argument("--quick", action="store_true", help="small N and few runs (a minute or two)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="fan-out N list, e.g. 1000,5000")
    parser.add_argument("--workers", type=int, help="fan-out load-generator processes")
    parser.add_argument("--repeat", type=int, help="fan-out runs per (N, server); medians are compared")
    parser.add_argument("--kinds", type=lambda s: s.split(","), help="fan-out servers: bare,app[,app-redis]; browser: pages, e.g. js-floor,micropython")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server to CPU 0 and clients to CPU 1")
    parser.add_argument("--clients", type=int, help="storm: number of headless clients")
    parser.add_argument("--kill", choices=["kill", "term"], help="storm: SIGKILL (default) or SIGTERM")
    parser.add_argument("--variant", help="storm: bench.variants experiments for the server, e.g. redispool")
    parser.add_argument("--modes", type=lambda s: s.split(","), help="storm: client schedules, e.g. jitter or seed,jitter")
    parser.add_argument("--down", type=float, help="storm: seconds between the server's end and its restart (default 2)")
    parser.add_argument("--storm-workers", type=int, help="storm: headless client processes")
    parser.add_argument("--runs", type=int, help="browser: runs per cell")
    parser.add_argument("--out", help="result file name (default: fanout.json, storm.json or storm-term.json, "
                                      "browser.json, profile.json)")
    args = parser.parse_args(argv)
    install_cleanup()

    from bench import report
    from bench.env import RESULTS

    out_dir = RESULTS / "quick" if args.quick else RESULTS
    prefix = "quick/" if args.quick else ""
    tag = "quick" if args.quick else "full"
    started = time.monotonic()
    cmd = args.command

    if cmd in ("all", "fanout"):
        from bench.fanout import FanoutConfig, run_fanout

        cfg = FanoutConfig(out=prefix + "fanout.json", tag=tag, pin=not args.no_pin)
        if args.quick:
            cfg.sizes, cfg.workers, cfg.step_s, cfg.idle_s, cfg.repeat = [200], 2, 2.0, 2.0, 1
        if args.sizes:
            cfg.sizes = args.sizes
        if args.workers:
            cfg.workers = args.workers
        if args.kinds:
            cfg.kinds = args.kinds
        if args.repeat:
            cfg.repeat = args.repeat
        if args.out:
            cfg.out = prefix + args.out
        run_fanout(cfg)
    if cmd in ("all", "storm"):
        from bench.storm import StormConfig, run_storm

        # `all`: the SIGKILL storm (seed and jitter schedules) and the SIGTERM storm (the default jitter client)
        kills = [args.kill] if args.kill or cmd == "storm" else ["kill", "term"]
        for kill in kills:
            scfg = StormConfig(out=prefix + "storm.json", tag=tag)
            if args.quick:
                scfg.clients, scfg.during_s = 100, 4.0
            if args.clients:
                scfg.clients = args.clients
            scfg.kill = kill or "kill"
            if scfg.kill == "term":
                scfg.modes, scfg.down_s = ["jitter"], 0.5  # a restart as a service manager does it, right after exit
            if args.variant:
                scfg.variant = args.variant
            if args.modes:
                scfg.modes = args.modes
            if args.down is not None:
                scfg.down_s = args.down
            if args.storm_workers:
                scfg.workers = args.storm_workers
            scfg.rate = max(2.0, scfg.rate * 1000 / max(scfg.clients, 1000))  # events/s x clients stays ≈ 20 000/s
            if scfg.kill == "term" or scfg.variant:
                scfg.out = prefix + "storm" + ("-term" if scfg.kill == "term" else "") + \
                    ("-" + scfg.variant.replace(",", "-") if scfg.variant else "") + ".json"
            if args.out:
                scfg.out = prefix + args.out
            run_storm(scfg)
    if cmd in ("all", "browser"):
        from bench.browser import BrowserConfig, run_browser

        bcfg = BrowserConfig(out=prefix + "browser.json", tag=tag)
        if args.quick:
            bcfg.runs = 2
        if args.runs:
            bcfg.runs = args.runs
        if args.kinds:
            bcfg.pages = args.kinds
        if args.out:
            bcfg.out = prefix + args.out
        run_browser(bcfg)
    if cmd in ("all", "cluster"):
        from bench.cluster_fanout import ClusterFanoutConfig, run_cluster_fanout

        ccfg = ClusterFanoutConfig(out=prefix + "cluster.json", tag=tag)
        if args.quick:
            ccfg.sizes, ccfg.workers, ccfg.step_s = [200], 2, 2.0
        if args.sizes:
            ccfg.sizes = args.sizes
        if args.workers:
            ccfg.workers = args.workers
        if args.out:
            ccfg.out = prefix + args.out
        run_cluster_fanout(ccfg)
    if cmd == "profile":
        from bench.fanout import FanoutConfig, run_fanout

        pcfg = FanoutConfig(out=prefix + "profile.json", tag=tag + "-profile", profile=True, pin=not args.no_pin, repeat=1,
                            sizes=[200] if args.quick else [1000], workers=2 if args.quick else 4)
        if args.sizes:
            pcfg.sizes = args.sizes
        if args.kinds:
            pcfg.kinds = args.kinds
        run_fanout(pcfg)

    report.write(out_dir, docs=not args.quick)
    print(f"== done in {time.monotonic() - started:.0f}s; results in {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
