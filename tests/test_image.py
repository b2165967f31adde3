"""The image's unit and the example settings agree with the code."""

from __future__ import annotations

import configparser
from pathlib import Path

from app.settings import DEFAULT_CONFIG_PATH, EngineSettings, load_settings

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "image/rootfs-overlay/usr/lib/systemd/system/doorway-engine.service"


def test_example_settings_are_valid() -> None:
    s = load_settings(ROOT / "provisioning/doorway.toml.example")
    assert s.capture.backend == "v4l2"
    assert s.display.sdl_driver == "kmsdrm"


def test_engine_unit_matches_code() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(UNIT.read_text())
    exec_start = unit["Service"]["ExecStart"].split()
    assert exec_start[1:3] == ["engine", "--config"]
    assert exec_start[3] == str(DEFAULT_CONFIG_PATH)
    assert unit["Service"]["Restart"] == "always"
    default_sock = EngineSettings().control_socket
    assert default_sock.parent == Path("/run") / unit["Service"]["RuntimeDirectory"]
    assert EngineSettings().state_dir == Path("/var/lib") / unit["Service"]["StateDirectory"]


def test_hwcontrol_unit_matches_code() -> None:
    from app.settings import HwcontrolSettings

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string((UNIT.parent / "doorway-hwcontrol.service").read_text())
    exec_start = unit["Service"]["ExecStart"].split()
    assert exec_start[1:3] == ["hwcontrol", "--config"]
    assert exec_start[3] == str(DEFAULT_CONFIG_PATH)
    assert HwcontrolSettings().control_socket.parent == Path("/run") / unit["Service"]["RuntimeDirectory"]
