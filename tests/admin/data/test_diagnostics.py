"""The diagnostics bundle: its parts, valid TOML and JSON, bounded size, and no secret anywhere in it."""

from __future__ import annotations

import io
import json
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

import admin.diagnostics as diagnostics
from admin.collector import Reducer
from admin.diagnostics import (
    REMOVED,
    build_bundle,
    collect_versions,
    is_secret_name,
    redact,
    scrub_text,
    to_toml,
)
from admin.logs import LogLine
from app.settings import Settings
from tests.admin.data.fakes import T0, engine_stats, hw_status

KEY_HEX = "9f" * 32  # what a 32-byte key looks like in hex
PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MC4CAQAwBQYDK2VuBCIEIGhpZGRlbi1rZXktbWF0ZXJpYWwtMTIzNDU2Nzg5MA==\n"
    "-----END PRIVATE KEY-----"
)
SECRETS = [
    "hunter2-admin-password",
    "argon2id$v=19$m=65536$c2FsdHNhbHQ$notarealhash",
    "tok_live_51Habcdefghij",
    "PAIR-CODE-4711",
    "sk-api-key-value-xyz",
    "cookie-secret-value-abc",
    KEY_HEX,
    "hidden-key-material",
    "MC4CAQAwBQYDK2VuBCIEIGhpZGRlbi1rZXktbWF0ZXJpYWwtMTIzNDU2Nzg5MA==",
]


class _Secrets(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    password_hash: str
    session_token: str
    pairing_code: str
    api_key: str
    nested: dict[str, Any]
    user: str = "admin"


class SettingsWithSecrets(Settings):
    """The real schema plus a section of secrets, standing for ones a later version may add."""

    extras: _Secrets


def settings_with_secrets(tmp_path: Path) -> Settings:
    key_file = tmp_path / "bootloader-key-hidden-path.hex"
    key_file.write_text(KEY_HEX + "\n")
    return SettingsWithSecrets(
        engine={"name": 'kitchen "main"\nroom'},
        hwcontrol={"bootloader_key_file": key_file},
        admin={"metrics_allow": ("192.168.1.0/24",)},
        extras={
            "password_hash": SECRETS[1],
            "session_token": SECRETS[2],
            "pairing_code": SECRETS[3],
            "api_key": SECRETS[4],
            "nested": {
                "cookie_secret": SECRETS[5],
                "harmless": "visible-value",
                "list": [{"password": SECRETS[0]}],
            },
        },
    )


def open_bundle(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        return {name: zf.read(name) for name in zf.namelist()}


def make_bundle(tmp_path: Path, **overrides: Any) -> bytes:
    stats = engine_stats()
    stats["session"]["private_key"] = SECRETS[6]
    stats["status"]["note"] = f"leaked {PEM} here"
    status = hw_status()
    status["bootloader_key"] = SECRETS[7]
    latest = Reducer().empty(T0)
    latest["engine_error"] = f"weird error quoting {KEY_HEX}"
    logs = [
        LogLine(T0, "engine", "info", "app.engine: engine started"),
        LogLine(None, "hwcontrol", "warning", f"hwcontrol: loaded key {KEY_HEX}"),
        LogLine(T0 + 1.5, "admin", "error", f"admin: something\n{PEM}"),
    ]
    args: dict[str, Any] = {
        "settings_path": Path("/etc/doorway/doorway.toml"),
        "settings": settings_with_secrets(tmp_path),
        "collector_latest": latest,
        "engine_stats": stats,
        "hwcontrol_status": status,
        "logs": logs,
        "versions": {"python": "3.11.7", "doorway": "0.1.0", "github_token": "tok_live_51Habcdefghij"},
        "now": T0,
    }
    args.update(overrides)
    return build_bundle(**args)


def test_bundle_contents(tmp_path: Path) -> None:
    parts = open_bundle(make_bundle(tmp_path))
    assert sorted(parts) == [
        "README.txt",
        "hwcontrol.json",
        "logs.txt",
        "settings.toml",
        "stats.json",
        "versions.json",
    ]

    settings = tomllib.loads(parts["settings.toml"].decode())
    assert settings["engine"]["name"] == 'kitchen "main"\nroom'
    assert settings["video"]["keyframe_interval_s"] == 0.0  # "keyframe" is not the word "key"
    assert settings["audio"]["codec"] == "opus"  # nor is "codec" the word "code"
    assert settings["pairing"]["code_ttl_s"] == 600  # harmless, allowed by name
    assert settings["hwcontrol"]["bootloader_key_file"] == REMOVED
    assert settings["admin"]["metrics_allow"] == ["192.168.1.0/24"]
    assert settings["extras"]["password_hash"] == REMOVED
    assert settings["extras"]["session_token"] == REMOVED
    assert settings["extras"]["pairing_code"] == REMOVED
    assert settings["extras"]["api_key"] == REMOVED
    assert settings["extras"]["user"] == "admin"
    assert settings["extras"]["nested"]["cookie_secret"] == REMOVED
    assert settings["extras"]["nested"]["harmless"] == "visible-value"
    assert settings["extras"]["nested"]["list"] == [{"password": REMOVED}]
    # None (no value) is a comment: TOML has no null.
    assert "capture" in settings
    assert "file" not in settings["capture"]
    assert b"# file: none" in parts["settings.toml"]
    assert b"/etc/doorway/doorway.toml" in parts["settings.toml"]

    stats = json.loads(parts["stats.json"])
    assert stats["engine"]["status"]["name"] == "kitchen"
    assert stats["engine"]["session"]["private_key"] == REMOVED
    assert stats["engine"]["encode"]["keyframes"] == 3
    assert stats["engine"]["status"]["identity"]["device_id"] == "dw-abc"  # public
    assert stats["collector"]["engine_error"] == f"weird error quoting {REMOVED}"
    hw = json.loads(parts["hwcontrol.json"])
    assert hw["state"] == "ready"
    assert hw["bootloader_key"] == REMOVED
    versions = json.loads(parts["versions.json"])
    assert versions == {"python": "3.11.7", "doorway": "0.1.0", "github_token": REMOVED}

    logs = parts["logs.txt"].decode()
    assert logs.splitlines()[0] == "2023-11-14T22:13:20.000Z engine info app.engine: engine started"
    assert f"- hwcontrol warning hwcontrol: loaded key {REMOVED}" in logs
    assert f"2023-11-14T22:13:21.500Z admin error admin: something\n    {REMOVED}\n" in logs

    readme = parts["README.txt"].decode()
    assert "2023-11-14T22:13:20Z" in readme
    for name in ("settings.toml", "stats.json", "hwcontrol.json", "logs.txt", "versions.json"):
        assert name in readme
    assert "hwcontrol.bootloader_key_file" in readme
    assert "extras.password_hash" in readme
    assert "engine.session.private_key" in readme
    assert "3 log lines" in readme


def test_no_secret_anywhere_in_the_bundle(tmp_path: Path) -> None:
    data = make_bundle(tmp_path)
    parts = open_bundle(data)
    everything = b"".join(parts.values()) + "".join(parts).encode()
    for secret in SECRETS:
        assert secret.encode() not in everything, secret
        assert secret.encode() not in data, secret
    # The key file was never read, and its name (a secret's value) is not there either.
    assert b"bootloader-key-hidden-path" not in everything


def test_absent_sockets_are_null(tmp_path: Path) -> None:
    parts = open_bundle(make_bundle(tmp_path, engine_stats=None, hwcontrol_status=None, logs=[]))
    assert json.loads(parts["stats.json"])["engine"] is None
    assert json.loads(parts["hwcontrol.json"]) is None
    assert parts["logs.txt"] == b""


def test_plain_settings_and_no_path(tmp_path: Path) -> None:
    parts = open_bundle(make_bundle(tmp_path, settings=Settings(), settings_path=None))
    settings = tomllib.loads(parts["settings.toml"].decode())
    assert settings["video"]["fps"] == 60
    assert settings["hwcontrol"]["bootloader_key_file"] == REMOVED
    assert b"the default location" in parts["settings.toml"]


def test_size_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diagnostics, "MAX_LOG_BYTES", 10_000)
    monkeypatch.setattr(diagnostics, "MAX_PART_BYTES", 50_000)
    logs = [LogLine(T0 + i, "engine", "info", f"line {i:06d} " + "x" * 80) for i in range(5000)]
    huge = {"ok": True, "blob": ["y" * 1000] * 200}
    data = make_bundle(tmp_path, logs=logs, engine_stats=huge)
    parts = open_bundle(data)
    assert len(parts["logs.txt"]) <= 10_000
    kept = parts["logs.txt"].decode().splitlines()
    assert kept[-1].split()[3] == "line"
    assert kept[-1].split()[4] == "004999"  # the newest lines are kept
    assert f"{5000 - len(kept)} older lines left out" in parts["README.txt"].decode()
    assert "left_out" in json.loads(parts["stats.json"])
    assert len(data) < 200_000


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("bootloader_key_file", True),
        ("key", True),
        ("api-key", True),
        ("apiKey", True),
        ("private_key", True),
        ("pairing_code", True),
        ("code", True),
        ("password_hash", True),
        ("adminPassword", True),
        ("session_secret", True),
        ("client_secrets", True),
        ("refresh_token", True),
        ("credentials", True),
        ("keyframes", False),
        ("keyframe_interval_s", False),
        ("codec", False),
        ("decode_ms", False),
        ("encoder", False),
        ("device_id", False),
        ("fingerprint", False),
        ("monkey", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_redact_and_scrub() -> None:
    removed: list[str] = []
    out = redact(
        {"a": {"token": "t", "b": [1, {"code": 4}], "c": 1.5, "d": None, "p": Path("/x")}}, "", removed
    )
    assert out == {"a": {"token": REMOVED, "b": [1, {"code": REMOVED}], "c": 1.5, "d": None, "p": "/x"}}
    assert removed == ["a.token", "a.b[1].code"]
    # A whole table under a secret's name goes, whatever is in it.
    assert redact({"secrets": {"x": 1}}) == {"secrets": REMOVED}
    assert scrub_text("id 0123456789abcdef stays") == "id 0123456789abcdef stays"
    assert scrub_text("k=" + "A" * 32 + ".") == f"k={REMOVED}."
    assert scrub_text("-----BEGIN CERTIFICATE-----\nabc") == REMOVED


def test_to_toml_round_trips() -> None:
    data = {
        "top": 1,
        "s": {
            "text": 'quote " backslash \\ tab \t bell \x07',
            "f": 0.1,
            "inf": float("inf"),
            "n": -3,
            "b": False,
            "list": [1, "two", None],
            "none": None,
            "odd key": "x",
            "inline": {"a": 1},
            "sub": {"deep": True},
        },
    }
    parsed = tomllib.loads(to_toml(data))
    assert parsed == {
        "top": 1,
        "s": {
            "text": 'quote " backslash \\ tab \t bell \x07',
            "f": 0.1,
            "inf": float("inf"),
            "n": -3,
            "b": False,
            "list": [1, "two"],
            "odd key": "x",
            "inline": {"a": 1},
            "sub": {"deep": True},
        },
    }


def test_collect_versions() -> None:
    versions = collect_versions()
    assert set(versions) >= {"python", "doorway", "av", "ffmpeg", "libopus", "cryptography", "os", "kernel"}
    assert all(isinstance(v, str) and v for v in versions.values())
    assert collect_versions() is versions  # cached
