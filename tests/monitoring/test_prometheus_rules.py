"""deploy/prometheus/alerts.yml: valid for promtool, unit-tested (alerts.test.yml), and able to fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from promql import metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make test` installs Debian's prometheus")
ALERTS = {
    "WebSocketDisconnectRateHigh",
    "WebSocketHeartbeatFailureSpike",
    "WebSocketAuthFailureSpike",
    "WebSocketBroadcastSlow",
    "WebSocketRecoveriesMostlyFailing",
}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


@needs_promtool
def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


@needs_promtool
def test_promtool_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_a_rule_that_never_fires_fails_its_unit_test(alert: str, tmp_path: Path) -> None:
    broken = yaml.safe_load(RULES.read_text())
    for group in broken["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = "vector(0) > 1"
    (tmp_path / RULES.name).write_text(yaml.safe_dump(broken))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    done = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0 and alert in done.stdout + done.stderr


def test_the_five_alerts_of_the_issue_exist_with_severity_and_text() -> None:
    found = {rule["alert"]: rule for rule in rules()}
    assert set(found) == ALERTS
    for rule in found.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert rule.get("for")


def test_every_alert_is_unit_tested_both_ways() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == ALERTS and quiet == ALERTS


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x="y", z=~"a|b"}[5m])) > 0.1', {"a_bucket"}),
        ("sum(rate(a_total[$__rate_interval])) / clamp_min(sum(b), 1) > 1e-2", {"a_total", "b"}),
        ('x and on (instance) y or ignoring(code) group_left(z) w offset 5m', {"x", "y", "w"}),
        ('histogram_quantile(0.99, sum by (le) (rate(h_bucket{instance=~"$instance"}[5m])))', {"h_bucket"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
