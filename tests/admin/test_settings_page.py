"""Settings: validated by the services' own schema, saved atomically with comments and mode kept, the
bitrate cap applied to the running engine at once, everything else said to need a restart."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from admin.settings_file import (
    SERVICES_OF_SECTION,
    SettingsFile,
    SettingsWriteError,
    edit_toml,
    render,
    services_to_restart,
    write_atomic,
)
from app.control import CommandError
from app.settings import Settings, SettingsError, load_settings
from tests.admin.conftest import Browser

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = (ROOT / "provisioning/doorway.toml.example").read_text()


@pytest.fixture
def config(config_path: Path, settings: Settings) -> Path:
    """The example file, with this test's state directory and sockets, mode 0600."""
    text = EXAMPLE.replace('"/var/lib/doorway"', f'"{settings.engine.state_dir}"')
    text = text.replace('"/run/doorway/engine.sock"', f'"{settings.engine.control_socket}"')
    text += f'\n[hwcontrol]\ncontrol_socket = "{settings.hwcontrol.control_socket}"\n'
    config_path.write_text(text)
    os.chmod(config_path, 0o600)
    return config_path


@pytest.fixture
def engine(settings: Settings, serve_socket: Any) -> list[int]:
    """A running engine's socket; the bitrates it was asked for."""
    asked: list[int] = []

    def set_bitrate(args: dict[str, Any]) -> dict[str, Any]:
        kbps = args.get("kbps")
        if not isinstance(kbps, int) or not 100 <= kbps <= 200_000:
            raise CommandError('"kbps" must be an integer from 100 to 200000')
        asked.append(kbps)
        return {"kbps": kbps}

    serve_socket(settings.engine.control_socket, {"set_bitrate": set_bitrate, "status": lambda a: {}})
    return asked


def test_get_settings_is_the_files_effective_settings(owner: Browser, config: Path) -> None:
    r = owner.client.get("/api/settings")
    assert r.status_code == 200
    body = r.json()
    assert body["path"] == str(config) and body["problem"] is None
    assert body["settings"]["video"]["fps"] == 60 and body["settings"]["audio"]["input_device"] == "USB Audio"
    assert body["settings"]["admin"]["history_max_mb"] == 64
    assert body["editable"]["network"] == {
        "listen_port": 47000,
        "peer_host": "192.0.2.10",
        "peer_port": 47000,
    }


def test_secrets_are_removed(owner: Browser, config: Path) -> None:
    config.write_text(config.read_text() + 'bootloader_key_file = "/etc/doorway/mcu.key"\n')
    body = owner.client.get("/api/settings").json()
    assert body["settings"]["hwcontrol"]["bootloader_key_file"] == "<removed>"


def test_a_valid_update_is_saved_atomically_keeping_comments_and_mode(
    owner: Browser, config: Path, engine: list[int]
) -> None:
    inode = config.stat().st_ino
    r = owner.client.put(
        "/api/settings",
        json={"video": {"fps": 30}, "engine": {"name": "hall"}, "network": {"peer_host": None}},
        headers={"X-CSRF-Token": owner.csrf},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["changed"] == ["engine.name", "video.fps", "network.peer_host"]
    assert body["restart_needed"] == ["engine"]
    assert body["applied"] == []
    assert "restart needed: engine" in body["message"]
    assert engine == []  # Nothing for the running engine to take.

    text = config.read_text()
    assert 'name = "hall"                            # shown to the twin' in text
    assert "fps = 30\n" in text and "peer_host" not in text
    assert text.startswith("# /etc/doorway/doorway.toml — one doorway's settings.")
    assert config.stat().st_mode & 0o777 == 0o600
    assert config.stat().st_ino != inode  # Replaced by a rename, not written in place.
    assert [p.name for p in config.parent.iterdir()] == [config.name]  # No temporary file left.
    loaded = load_settings(config)
    assert loaded.engine.name == "hall" and loaded.video.fps == 30 and loaded.network.peer_host is None
    assert loaded.audio.input_device == "USB Audio"  # Untouched keys stay.


def test_a_bitrate_cap_is_applied_at_once_without_a_restart(
    owner: Browser, config: Path, engine: list[int]
) -> None:
    r = owner.client.put(
        "/api/settings", json={"video": {"bitrate_kbps": 8000}}, headers={"X-CSRF-Token": owner.csrf}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert engine == [8000]
    assert body["changed"] == ["video.bitrate_kbps"] and body["restart_needed"] == []
    assert body["applied"] == ["the engine now sends at most 8000 kb/s (no restart)"]
    assert "restart" not in body["message"].replace("(no restart)", "")
    assert "bitrate_kbps = 8000\n" in config.read_text()
    # With another change, only that one needs the restart.
    r = owner.client.put(
        "/api/settings",
        json={"video": {"bitrate_kbps": 9000, "min_bitrate_kbps": 800}},
        headers={"X-CSRF-Token": owner.csrf},
    )
    body = r.json()
    assert engine == [8000, 9000] and body["restart_needed"] == ["engine"]
    assert "restart needed: engine — video.min_bitrate_kbps takes effect when it restarts" in body["message"]


def test_a_bitrate_cap_with_the_engine_down_is_saved_for_its_next_start(owner: Browser, config: Path) -> None:
    r = owner.client.put(
        "/api/settings", json={"video": {"bitrate_kbps": 8000}}, headers={"X-CSRF-Token": owner.csrf}
    )
    assert r.status_code == 200
    assert (
        "the engine is not running" in r.json()["message"] and "uses it when it starts" in r.json()["message"]
    )
    assert load_settings(config).video.bitrate_kbps == 8000


def test_an_invalid_value_is_422_with_the_schemas_message_and_the_file_untouched(
    owner: Browser, config: Path, engine: list[int]
) -> None:
    before = config.read_bytes()
    mtime = config.stat().st_mtime_ns
    r = owner.client.put(
        "/api/settings",
        json={"video": {"fps": 500, "width": 1921}, "engine": {"name": ""}},
        headers={"X-CSRF-Token": owner.csrf},
    )
    assert r.status_code == 422
    body = r.json()
    assert f"{config}: video.fps = 500 is out of range (allowed: 1 to 240)" in body["problems"]
    assert any(
        p.startswith(f"{config}: video.width = 1921: Input should be a multiple of 2")
        for p in body["problems"]
    )
    assert any(
        p.startswith(f"{config}: engine.name = '': String should have at least 1 character")
        for p in body["problems"]
    )
    assert body["error"].startswith("the settings were not saved: ")
    assert config.read_bytes() == before and config.stat().st_mtime_ns == mtime
    assert engine == []
    # The same messages the services would print at start.
    assert (
        owner.client.put(
            "/api/settings", json={"video": {"nope": 1}}, headers={"X-CSRF-Token": owner.csrf}
        ).status_code
        == 422
    )


def test_text_no_file_can_hold_is_422_and_the_file_untouched(owner: Browser, config: Path) -> None:
    # A lone surrogate: a JSON escape carries one, a Python string keeps it, UTF-8 cannot encode it. The
    # schema lets it into a plain text key, and writing the file then crashed (500, UnicodeEncodeError).
    before = config.read_bytes()
    r = owner.client.put(
        "/api/settings",
        content=b'{"audio": {"input_device": "Mic \\ud800"}, "network": {"peer_host": "\\udc80"}}',
        headers={"X-CSRF-Token": owner.csrf, "Content-Type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["problems"] == [
        f"{config}: audio.input_device = 'Mic \\ud800': not text a settings file can hold",
        f"{config}: network.peer_host = '\\udc80': not text a settings file can hold",
    ]
    assert config.read_bytes() == before
    assert [p.name for p in config.parent.iterdir()] == [config.name]  # No temporary file left behind.


def test_the_settings_file_is_created_when_there_is_none(owner: Browser, config_path: Path) -> None:
    assert not config_path.exists()
    r = owner.client.put(
        "/api/settings", json={"audio": {"input_device": "Mic # 2"}}, headers={"X-CSRF-Token": owner.csrf}
    )
    assert r.status_code == 200
    text = config_path.read_text()
    assert text.startswith("# Doorway settings, written by the admin panel.")
    assert tomllib.loads(text) == {"audio": {"input_device": "Mic # 2"}}
    assert config_path.stat().st_mode & 0o777 == 0o640


def test_the_form_saves_and_says_what_needs_a_restart(
    owner: Browser, config: Path, engine: list[int], app: FastAPI
) -> None:
    page = owner.client.get("/settings")
    assert page.status_code == 200
    assert (
        'name="video.fps" value="60"' in page.text
        and 'name="audio.input_device" value="USB Audio"' in page.text
    )
    form = {
        "csrf_token": owner.csrf,
        "engine.name": "attic",
        "video.width": "1920",
        "video.height": "1080",
        "video.fps": "60",
        "video.bitrate_kbps": "6000",
        "video.min_bitrate_kbps": "500",
        "audio.input_device": "",
        "audio.output_device": "USB Audio",
        "audio.bitrate_kbps": "128",
        "network.listen_port": "47000",
        "network.peer_host": "192.0.2.10",
        "network.peer_port": "47000",
    }
    r = owner.client.post("/settings", data=form)
    assert r.status_code == 200, r.text
    assert "Saved engine.name, video.bitrate_kbps, audio.input_device." in r.text
    assert "The engine now sends at most 6000 kb/s (no restart)." in r.text
    assert "restart needed: engine — engine.name, audio.input_device take effect when it restarts" in r.text
    assert engine == [6000]
    saved = load_settings(config)
    assert saved.engine.name == "attic" and saved.audio.input_device is None
    assert 'name="engine.name" value="attic"' in r.text
    # The panel follows the new name at once (pairing tells it to the other doorway).
    assert app.state.admin.current.get().engine.name == "attic"
    events = owner.client.get("/api/history", params={"hours": 1}).json()["events"]
    assert any(
        e["message"] == "settings saved: engine.name 'doorway' → 'attic', video.bitrate_kbps 12000 → 6000, "
        "audio.input_device 'USB Audio' → default"
        for e in events
    )

    # Invalid: the page again with the schema's lines and what was typed; nothing written.
    before = config.read_bytes()
    r = owner.client.post("/settings", data={**form, "video.fps": "fast", "network.listen_port": "0"})
    assert r.status_code == 422
    assert f"{config}: network.listen_port = 0 is out of range (allowed: 1 to 65535)" in r.text
    assert f"{config}: video.fps = &#39;fast&#39;: Input should be a valid integer" in r.text
    assert 'name="video.fps" value="fast"' in r.text
    assert config.read_bytes() == before

    # Nothing changed: nothing written.
    r = owner.client.post("/settings", data={**form, "engine.name": "attic", "audio.input_device": ""})
    assert r.status_code == 200 and "Nothing to save: no value changed." in r.text


def test_a_file_broken_by_hand_is_said_plainly(owner: Browser, config: Path) -> None:
    config.write_text(config.read_text() + "\n[video]\nfps = 1000\n")
    page = owner.client.get("/settings")
    assert page.status_code == 200 and "does not validate as it is" in page.text
    assert owner.client.get("/api/settings").json()["problem"].startswith(f"{config}: not valid TOML")


# -- the file editor and writer, without HTTP ------------------------------------------------------------


def test_edit_toml_keeps_comments_and_layout() -> None:
    text = '[a]\nx = 1   # one\ns = "a # b"  # comment with # inside\n\n[b]\ny = [1, 2]\n'
    out = edit_toml(
        text, {("a", "x"): 22, ("a", "s"): "c", ("b", "z"): True, ("c", "w"): "new", ("b", "y"): None}
    )
    assert (
        out == '[a]\nx = 22  # one\ns = "c"      # comment with # inside\n\n[b]\nz = true\n\n[c]\nw = "new"\n'
    )


def test_render_rewrites_what_it_cannot_edit_in_place() -> None:
    text = 'video.fps = 30\n[engine]\nname = "x"\n'
    out = render(text, {("video", "fps"): 25}, "f.toml")
    assert tomllib.loads(out) == {"video": {"fps": 25}, "engine": {"name": "x"}}
    multi = '[audio]\ninput_device = """\nUSB"""\n'
    out = render(multi, {("audio", "input_device"): "Mic"}, "f.toml")
    assert tomllib.loads(out) == {"audio": {"input_device": "Mic"}}
    with pytest.raises(SettingsError, match=r"f\.toml: not valid TOML"):
        render("[video\n", {}, "f.toml")


def test_services_to_restart() -> None:
    assert services_to_restart(["video.bitrate_kbps"]) == ()
    assert services_to_restart(["video.fps", "audio.bitrate_kbps"]) == ("engine",)
    assert services_to_restart(["hwcontrol.control_socket"]) == ("engine", "hwcontrol", "admin")
    assert services_to_restart(["logging.level"]) == ("engine", "hwcontrol", "admin")
    assert services_to_restart(["pairing.code_ttl_s"]) == ()
    assert services_to_restart(["admin.https_port"]) == ("admin",)
    assert services_to_restart(["camera.zoom"]) == ("engine",)
    assert services_to_restart(["lighting.cct_k"]) == ("engine", "hwcontrol")
    assert services_to_restart(["lighting.match_far_side"]) == ()  # The engine takes it live.
    # Every section of the schema says who reads it (a new one must not fall back to "everything").
    assert set(Settings.model_fields) <= set(SERVICES_OF_SECTION)


def test_write_atomic_failure_leaves_the_file_and_no_temporary(tmp_path: Path) -> None:
    with pytest.raises(SettingsWriteError, match=r"cannot write in .*missing"):
        write_atomic(tmp_path / "missing" / "d.toml", "new\n")
    # The rename fails (a directory is in the way): the temporary file is removed.
    (tmp_path / "d.toml").mkdir()
    (tmp_path / "d.toml" / "x").write_text("")
    with pytest.raises(SettingsWriteError, match=r"cannot write .*d\.toml"):
        write_atomic(tmp_path / "d.toml", "new\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.toml"]


def test_settings_file_update_without_http(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text("[video]\nfps = 60 # rate\n")
    f = SettingsFile(path)
    result = f.update({("video", "fps"): 50}, Settings())
    assert result.changed == ("video.fps",) and result.restart == ("engine",) and result.written
    assert path.read_text() == "[video]\nfps = 50 # rate\n"
    assert f.load().video.fps == 50
