"""deploy/grafana/dashboard.json: an importable Grafana dashboard with a panel for each topic of issue 16."""

from __future__ import annotations

import json
from pathlib import Path

from promql import metric_names

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "dashboard.json").read_text())
# topic -> metrics that must be drawn for it
TOPICS = {
    "connections": {"websocket_active_connections"},
    "connect and disconnect rates": {"websocket_connections_total"},
    "reconnects and downtime": {"websocket_reconnections_total", "websocket_reconnect_downtime_seconds_bucket"},
    "heartbeat and auth failures": {"websocket_heartbeat_failures_total", "websocket_auth_failures_total"},
    "fan-out latency": {"websocket_event_broadcast_duration_seconds_bucket"},
    "recoveries by result": {"websocket_recoveries_total"},
    "queue overflows": {"websocket_send_queue_overflows_total"},
}


def panels() -> list[dict]:
    return DASHBOARD["panels"]


def test_dashboard_is_importable() -> None:
    assert DASHBOARD["uid"] and DASHBOARD["title"] and DASHBOARD["schemaVersion"] >= 30
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    for panel in panels():
        assert panel["type"] in ("timeseries", "stat") and panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert 'instance=~"$instance"' in target["expr"], target["expr"]


def test_every_topic_has_a_panel() -> None:
    drawn = set().union(*(metric_names(t["expr"]) for p in panels() for t in p["targets"]))
    for topic, metrics in TOPICS.items():
        assert metrics <= drawn, f"no panel draws {topic}: {sorted(metrics - drawn)}"


def test_connect_and_disconnect_rates_use_the_seeds_statuses() -> None:
    exprs = [t["expr"] for p in panels() for t in p["targets"]]
    assert any('websocket_connections_total{instance=~"$instance", status="connected"}' in e for e in exprs)
    assert any('websocket_connections_total{instance=~"$instance", status="disconnected"}' in e for e in exprs)
