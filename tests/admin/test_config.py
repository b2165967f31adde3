"""The ``[admin]`` settings section: defaults, bounds, the CIDR list, and the example file."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import AdminSettings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults() -> None:
    a = AdminSettings()
    assert (a.listen_host, a.https_port, a.http_port) == ("0.0.0.0", 443, 80)
    assert (a.session_idle_minutes, a.session_max_hours) == (60, 12)
    assert (a.login_max_failures, a.lockout_minutes, a.max_body_kb, a.history_days) == (5, 15, 64, 7)
    assert a.history_max_mb == 64
    assert a.metrics_allow == ()


def test_example_file_states_the_defaults() -> None:
    assert load_settings(ROOT / "provisioning/doorway.toml.example").admin == AdminSettings()


def test_bounds_are_reported_per_key(tmp_path: Path) -> None:
    p = tmp_path / "d.toml"
    p.write_text("[admin]\nhttps_port = 0\nmax_body_kb = 0\n")
    with pytest.raises(SettingsError) as exc:
        load_settings(p)
    lines = str(exc.value).splitlines()
    assert f"{p}: admin.https_port = 0 is out of range (allowed: 1 to 65535)" in lines
    assert f"{p}: admin.max_body_kb = 0 is out of range (allowed: 1 to 16384)" in lines


def test_metrics_allow_takes_networks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "d.toml"
    p.write_text('[admin]\nmetrics_allow = ["192.168.1.0/24", "::1/128", "10.0.0.7"]\n')
    assert load_settings(p).admin.metrics_allow == ("192.168.1.0/24", "::1/128", "10.0.0.7")
    p.write_text('[admin]\nmetrics_allow = ["192.168.1.5/24"]\n')
    with pytest.raises(SettingsError, match=r"has host bits set; did you mean 192\.168\.1\.0/24\?"):
        load_settings(p)
    p.write_text('[admin]\nmetrics_allow = ["lan"]\n')
    with pytest.raises(SettingsError, match=r"'lan' is not a network in CIDR notation"):
        load_settings(p)
    p.write_text("")
    monkeypatch.setenv("DOORWAY_ADMIN__METRICS_ALLOW", '["10.0.0.0/8"]')
    assert load_settings(p).admin.metrics_allow == ("10.0.0.0/8",)
