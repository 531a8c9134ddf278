"""Every metric the Grafana dashboard and the Prometheus rules read is exported by `/metrics` after real
traffic, and the exposition passes `promtool check metrics`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import traffic
from promql import metric_names
from realtime_harness import LiveServer, make_settings

ROOT = Path(__file__).resolve().parents[2]


def dashboard_metrics() -> set[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())
    names = set().union(*(metric_names(t["expr"]) for p in dashboard["panels"] for t in p["targets"]))
    for variable in dashboard["templating"]["list"]:  # `label_values(<metric>, <label>)` queries
        query = variable.get("query")
        if isinstance(query, dict):
            names |= set(re.findall(r"label_values\((\w+)", query["query"]))
    return names


def rule_metrics() -> set[str]:
    groups = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())["groups"]
    return set().union(*(metric_names(rule["expr"]) for group in groups for rule in group["rules"]))


def exported(text: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture(scope="module")
def exposition() -> Iterator[str]:
    import anyio

    with LiveServer(make_settings()) as live:
        anyio.run(traffic.all_kinds, live)
        yield traffic.render(live)


def test_the_files_name_the_metrics_they_draw() -> None:
    assert "websocket_event_broadcast_duration_seconds_bucket" in dashboard_metrics() & rule_metrics()
    assert "websocket_active_connections" in dashboard_metrics()  # also the node variable's query
    assert len(dashboard_metrics()) >= 15


def test_every_metric_the_dashboard_draws_is_exported(exposition: str) -> None:
    assert dashboard_metrics() - exported(exposition) == set()


def test_every_metric_the_rules_read_is_exported(exposition: str) -> None:
    assert rule_metrics() - exported(exposition) == set()


def test_the_check_can_see_a_missing_metric(exposition: str) -> None:
    assert {"websocket_no_such_metric_total"} - exported(exposition) == {"websocket_no_such_metric_total"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing: `make test` installs Debian's prometheus")
def test_the_exposition_passes_promtool_check_metrics(exposition: str) -> None:
    done = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
