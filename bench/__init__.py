"""Benchmarks of what the dashboard server and client exist for, each next to a baseline in the same run.

Run `python -m bench` (all, full scale) or `python -m bench --quick`; see `bench.__main__` for the
subcommands. Results land in `bench/results/` and are summarised in `docs/performance.md`.
Nothing here runs under `make test`.
"""
