"""`Settings.from_env`: every type of field, the defaults, and clear errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.settings import Settings


def test_defaults_without_environment() -> None:
    assert Settings.from_env({}) == Settings()


def test_unrelated_variables_are_ignored() -> None:
    assert Settings.from_env({"PATH": "/bin", "DASHBOARD": "x", "OTHER_DEMO": "1"}) == Settings()


@pytest.mark.parametrize(
    ("raw", "value"),
    [("1", True), ("true", True), ("YES", True), (" on ", True), ("0", False), ("false", False), ("Off", False), ("", False)],
)
def test_bool(raw: str, value: bool) -> None:
    assert Settings.from_env({"DASHBOARD_DEMO": raw}).demo is value


def test_bad_bool_names_the_variable() -> None:
    with pytest.raises(ValueError, match="DASHBOARD_DEMO_ACTIVITY: not a boolean"):
        Settings.from_env({"DASHBOARD_DEMO_ACTIVITY": "maybe"})


def test_int_float_str_and_list() -> None:
    s = Settings.from_env(
        {
            "DASHBOARD_HEARTBEAT_INTERVAL_MS": "500",
            "DASHBOARD_RATE_LIMIT_PER_S": "2.5",
            "DASHBOARD_HISTORY_TTL_S": "3",
            "DASHBOARD_BUS_URL": "redis://127.0.0.1:6390/0",
            "DASHBOARD_ALLOWED_ORIGINS": " https://a.example , https://b.example,, ",
            "DASHBOARD_JWT_SECRET": "y" * 40,
            "DASHBOARD_DB": ":memory:",
        }
    )
    assert s.heartbeat_interval_ms == 500
    assert s.rate_limit_per_s == 2.5
    assert s.history_ttl_s == 3.0
    assert s.bus_url == "redis://127.0.0.1:6390/0"
    assert s.allowed_origins == ("https://a.example", "https://b.example")
    assert s.jwt_secret == "y" * 40
    assert s.db_path == ":memory:"


@pytest.mark.parametrize(
    ("name", "raw"),
    [("DASHBOARD_HEARTBEAT_INTERVAL_MS", "fast"), ("DASHBOARD_TOKEN_TTL_S", "1.5"), ("DASHBOARD_RATE_LIMIT_PER_S", "lots")],
)
def test_malformed_numbers_name_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: raw})


def test_extra_is_not_read_from_the_environment() -> None:
    assert Settings.from_env({"DASHBOARD_EXTRA": "x"}).extra == {}


def test_db_path_defaults_under_var_dir(tmp_path: Path) -> None:
    assert Settings(var_dir=str(tmp_path)).db_path == str(tmp_path / "dashboard.db")
    assert Settings(var_dir=str(tmp_path), db="/x/y.db").db_path == "/x/y.db"


def test_with_overrides_returns_a_new_frozen_copy() -> None:
    base = Settings()
    changed = base.with_overrides(heartbeat_interval_ms=100)
    assert changed.heartbeat_interval_ms == 100 and base.heartbeat_interval_ms == 30000
    with pytest.raises(AttributeError):
        base.demo = True  # type: ignore[misc]


def test_client_config_carries_the_client_timings() -> None:
    config = Settings(heartbeat_interval_ms=1234, reconnect_base_ms=50).client_config()
    assert config["heartbeatIntervalMs"] == 1234
    assert config["reconnectBaseMs"] == 50
    assert config["wsPath"] == "/ws/status-updates"
    assert "jwtSecret" not in config and all("secret" not in key.lower() for key in config)


@pytest.mark.parametrize(("raw", "mode"), [("full", "jitter"), ("none", "seed")])
def test_reconnect_jitter_reaches_the_client_as_its_backoff_mode(raw: str, mode: str) -> None:
    config = Settings.from_env({"DASHBOARD_RECONNECT_JITTER": raw}).client_config()
    assert config["backoff"] == mode


def test_reconnect_jitter_defaults_to_full_and_refuses_other_values() -> None:
    assert Settings().client_config()["backoff"] == "jitter"
    with pytest.raises(ValueError, match="DASHBOARD_RECONNECT_JITTER must be one of full, none"):
        Settings.from_env({"DASHBOARD_RECONNECT_JITTER": "some"})


@pytest.mark.parametrize(("raw", "value"), [("on", True), ("off", False)])
def test_reconnect_on_off_reaches_the_client(raw: str, value: bool) -> None:
    assert Settings.from_env({"DASHBOARD_RECONNECT": raw}).client_config()["reconnect"] is value
    assert Settings().client_config()["reconnect"] is True


def test_the_client_core_reads_both_options_from_api_config(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from backend.app import create_app
    from client.backoff import Backoff
    from client.config import ClientConfig

    settings = Settings(db=":memory:", jwt_secret="s" * 40, var_dir=str(tmp_path), reconnect=False, reconnect_jitter="none")
    with TestClient(create_app(settings)) as client:
        config = ClientConfig(client.get("/api/config").json())
    assert config.reconnect is False and config.backoff_mode == "seed"
    table = Backoff(config.reconnect_base_ms, config.reconnect_max_ms, config.reconnect_floor_ms, config.backoff_mode)
    assert table.schedule(6) == [1000, 2000, 4000, 8000, 16000, 16000]
