"""The image's unit for the admin panel agrees with the code (like tests/test_image.py for the others)."""

from __future__ import annotations

import configparser
from pathlib import Path

from app.cli import build_parser
from app.settings import DEFAULT_CONFIG_PATH, AdminSettings, EngineSettings, HwcontrolSettings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "image/rootfs-overlay/usr/lib/systemd/system/doorway-admin.service"


def read_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    return unit


def test_admin_unit_runs_the_admin_command() -> None:
    service = read_unit()["Service"]
    exec_start = service["ExecStart"].split()
    assert exec_start[1:4] == ["admin", "serve", "--config"]
    assert exec_start[4] == str(DEFAULT_CONFIG_PATH)
    args = build_parser().parse_args(exec_start[1:])
    assert args.admin == "serve" and args.config == DEFAULT_CONFIG_PATH
    assert service["Restart"] == "always"


def test_admin_unit_runs_unprivileged_with_only_the_port_capability() -> None:
    service = read_unit()["Service"]
    assert service["User"] == "doorway" and service["Group"] == "doorway"
    assert service["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert service["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert AdminSettings().https_port < 1024 and AdminSettings().http_port < 1024
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelTunables",
        "RestrictNamespaces",
    ):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    assert "AF_INET" in service["RestrictAddressFamilies"] and "AF_UNIX" in service["RestrictAddressFamilies"]


def test_admin_unit_shares_state_and_sockets_with_the_other_units() -> None:
    service = read_unit()["Service"]
    assert EngineSettings().state_dir == Path("/var/lib") / service["StateDirectory"]
    assert service["StateDirectoryMode"] == "0700"
    run = Path("/run") / service["RuntimeDirectory"]
    assert EngineSettings().control_socket.parent == run
    assert HwcontrolSettings().control_socket.parent == run
    engine = configparser.ConfigParser(strict=False, interpolation=None)
    engine.read_string((UNIT.parent / "doorway-engine.service").read_text())
    assert engine["Service"]["User"] == service["User"]


def test_admin_unit_may_rewrite_the_settings_file_and_read_the_journal() -> None:
    service = read_unit()["Service"]
    # The settings page replaces the file by a rename in its directory, under ProtectSystem=strict.
    assert service["ReadWritePaths"] == f"-{DEFAULT_CONFIG_PATH.parent}"
    tmpfiles = (ROOT / "image/rootfs-overlay/usr/lib/tmpfiles.d/doorway.conf").read_text()
    assert f"d {DEFAULT_CONFIG_PATH.parent} 0750 doorway doorway -" in tmpfiles.splitlines()
    assert service["SupplementaryGroups"] == "systemd-journal"  # The logs page runs journalctl.
