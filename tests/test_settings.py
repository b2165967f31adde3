"""The settings schema: defaults, TOML, environment overrides, and one-line errors naming file and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings, SettingsError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "doorway.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, ""))
    assert s.video.width == 1920 and s.video.fps == 60
    assert s.network.mtu_payload == 1200
    assert s.capture.backend == "synthetic"


def test_file_values_are_read(tmp_path: Path) -> None:
    s = load_settings(
        write(tmp_path, '[video]\nfps = 30\n[capture]\nbackend = "v4l2"\ndevice = "/dev/video2"\n')
    )
    assert s.video.fps == 30
    assert s.capture.device == "/dev/video2"


def test_unknown_key_names_the_key(tmp_path: Path) -> None:
    p = write(tmp_path, "[video]\nbitrat_kbps = 3\n")
    with pytest.raises(SettingsError) as exc:
        load_settings(p)
    assert str(exc.value) == f"{p}: unknown key 'video.bitrat_kbps'"


def test_unknown_section_is_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, "[vidio]\nfps = 3\n")
    with pytest.raises(SettingsError, match=r"unknown key 'vidio'"):
        load_settings(p)


def test_out_of_range_names_file_key_and_range(tmp_path: Path) -> None:
    p = write(tmp_path, "[video]\nfps = 500\n")
    with pytest.raises(SettingsError) as exc:
        load_settings(p)
    assert str(exc.value) == f"{p}: video.fps = 500 is out of range (allowed: 1 to 240)"


def test_every_problem_is_one_line(tmp_path: Path) -> None:
    p = write(tmp_path, '[video]\nfps = 0\nwidth = 100000\n[capture]\nbackend = "webcam"\n')
    with pytest.raises(SettingsError) as exc:
        load_settings(p)
    lines = str(exc.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(str(p)) for line in lines)
    assert any("capture.backend = 'webcam' is not allowed" in line for line in lines)


def test_bad_toml(tmp_path: Path) -> None:
    p = write(tmp_path, "[video\n")
    with pytest.raises(SettingsError, match=r"not valid TOML"):
        load_settings(p)


def test_explicit_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"no such settings file"):
        load_settings(tmp_path / "nope.toml")


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, "[video]\nfps = 30\n")
    monkeypatch.setenv("DOORWAY_VIDEO__FPS", "25")
    assert load_settings(p).video.fps == 25


def test_environment_error_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOORWAY_NETWORK__MTU_PAYLOAD", "5")
    with pytest.raises(SettingsError, match=r"environment overrides.*network.mtu_payload = '5'.*256 to 8900"):
        load_settings(write(tmp_path, ""))


def test_odd_width_rejected(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"video\.width"):
        load_settings(write(tmp_path, "[video]\nwidth = 641\n"))


def test_every_field_is_documented() -> None:
    import ast
    import inspect

    import app.settings as mod

    tree = ast.parse(inspect.getsource(mod))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name.endswith("Settings") and node.name != "Settings":
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), (
                        f"{node.name}.{ast.unparse(stmt.target)} has no docstring"
                    )


def test_settings_import_is_light() -> None:
    code = "import sys, app.settings; print(any(m in sys.modules for m in ('av', 'numpy', 'sounddevice')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_exits_2_before_starting(tmp_path: Path) -> None:
    p = write(tmp_path, "[video]\nfps = 999\n")
    out = subprocess.run(
        [sys.executable, "-m", "app", "engine", "--config", str(p)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert f"{p}: video.fps = 999 is out of range (allowed: 1 to 240)" in out.stderr


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError for frozen models
        s.video = s.video  # type: ignore[misc]


def test_audio_period_is_one_of_three(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(write(tmp_path, "[audio]\nperiod_ms = 10\n")).audio.period_ms == 10.0
    assert load_settings(write(tmp_path, "")).audio.period_ms == 2.5  # the default
    monkeypatch.setenv("DOORWAY_AUDIO__PERIOD_MS", "5")
    assert load_settings(write(tmp_path, "")).audio.period_ms == 5.0
    monkeypatch.delenv("DOORWAY_AUDIO__PERIOD_MS")
    with pytest.raises(SettingsError, match=r"audio\.period_ms = 3.*must be 2\.5, 5 or 10"):
        load_settings(write(tmp_path, "[audio]\nperiod_ms = 3\n"))
    with pytest.raises(
        SettingsError, match=r"audio\.bitrate_kbps = 600 is out of range \(allowed: 6 to 510\)"
    ):
        load_settings(write(tmp_path, "[audio]\nbitrate_kbps = 600\n"))
