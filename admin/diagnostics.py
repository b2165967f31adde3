"""The diagnostics bundle: one zip a person can download from the admin panel and send to whoever helps.

:func:`build_bundle` packs, in memory:

- ``settings.toml``: the effective settings (file, environment overrides and defaults merged, as the
  processes see them), written as TOML, with secrets removed;
- ``stats.json``: the engine's ``stats`` answer and the collector's latest sample;
- ``hwcontrol.json``: the room-controller bridge's ``status`` answer;
- ``logs.txt``: the log lines given, one a line, oldest first;
- ``versions.json``: Python, Doorway, PyAV/FFmpeg, libopus, cryptography, OS and kernel
  (:func:`collect_versions`);
- ``README.txt``: what is inside, and the names of what was removed.

What counts as a secret (:func:`is_secret_name`)
------------------------------------------------
A value is removed — replaced with ``"<removed>"`` — when the name it is stored under, split into words at
``_``, ``-`` and ``.``, has a word in :data:`SECRET_WORDS` (``key``, ``code``, ``secret``, ``password``,
``token``, …), or contains one of :data:`SECRET_FRAGMENTS` anywhere (``password``, ``secret``, ``token``,
``credential``, ``apikey``, ``privatekey``). Words, not substrings, for the short ones: ``keyframes``,
``codec`` and ``decode_ms`` are not secrets. :data:`NOT_SECRET` names the few keys the rule would catch
that are plainly harmless (``pairing.code_ttl_s``, a number of seconds). The rule applies to every key at
every depth of every JSON part, and to the settings. Files named by settings (such as
``hwcontrol.bootloader_key_file``) are never opened: the bundle only holds values already in memory, and
that path itself is removed by the rule. As a second line of defence, any run of 32 or more hexadecimal
digits and any PEM block in any string (log lines included) is replaced too: that is what key material
looks like when it leaks into a message. Device ids (16 hex digits) and fingerprints stay: they are
public and they are what support needs to match two doorways.

Size: each part is capped (:data:`MAX_PART_BYTES`, logs :data:`MAX_LOG_BYTES`, keeping the newest lines),
so a bundle is at most a few MiB however large the inputs; a JSON part that would not fit is replaced by
a note saying so.

No I/O beyond :func:`collect_versions`, which reads ``/etc/os-release`` and asks libavutil and libopus
for their versions through ctypes (without importing PyAV).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import io
import json
import math
import platform
import re
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from admin.logs import LogLine
from app.settings import Settings

REMOVED: Final = "<removed>"
"""What a removed value is replaced with."""

SECRET_WORDS: Final = frozenset(
    {
        "key",
        "keys",
        "code",
        "codes",
        "secret",
        "secrets",
        "password",
        "passwords",
        "passwd",
        "passphrase",
        "token",
        "tokens",
        "credential",
        "credentials",
        "private",
        "psk",
        "salt",
        "cookie",
    }
)
"""A name with one of these among its words is a secret's name."""
SECRET_FRAGMENTS: Final = ("password", "passwd", "secret", "token", "credential", "apikey", "privatekey")
"""A name containing one of these anywhere (case-insensitive) is a secret's name."""
NOT_SECRET: Final = frozenset({"pairing.code_ttl_s"})
"""Dotted settings keys the rule would catch that are harmless (numbers, not codes)."""

MAX_PART_BYTES: Final = 1 << 20
"""Most bytes of one JSON or TOML part; a larger one is replaced by a note."""
MAX_LOG_BYTES: Final = 4 << 20
"""Most bytes of ``logs.txt``; the oldest lines are left out to fit."""

_HEX_RUN: Final = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32,}(?![0-9A-Fa-f])")
_PEM: Final = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|\Z)", re.DOTALL)
_WORD_SPLIT: Final = re.compile(r"[_.\-\s]+")


def is_secret_name(name: str) -> bool:
    """Whether a value stored under ``name`` must be removed (see the module docstring)."""
    lowered = name.lower()
    if any(fragment in lowered for fragment in SECRET_FRAGMENTS):
        return True
    return any(word in SECRET_WORDS for word in _WORD_SPLIT.split(lowered))


def scrub_text(text: str) -> str:
    """``text`` with key-like hex runs (32+ digits) and PEM blocks replaced by :data:`REMOVED`."""
    if "-----BEGIN" in text:
        text = _PEM.sub(REMOVED, text)
    return _HEX_RUN.sub(REMOVED, text)


def redact(value: Any, path: str = "", removed: list[str] | None = None) -> Any:
    """A copy of ``value`` (JSON-like: dicts, lists, scalars) with secrets removed: values under secret
    names replaced by :data:`REMOVED`, strings scrubbed (:func:`scrub_text`). The dotted path of every
    removed value is appended to ``removed``."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = str(k)
            here = f"{path}.{key}" if path else key
            if here not in NOT_SECRET and is_secret_name(key):
                out[key] = REMOVED
                if removed is not None:
                    removed.append(here)
            else:
                out[key] = redact(v, here, removed)
        return out
    if isinstance(value, list | tuple):
        return [redact(v, f"{path}[{i}]", removed) for i, v in enumerate(value)]
    if isinstance(value, str):
        cleaned = scrub_text(value)
        if cleaned != value and removed is not None:
            removed.append(f"{path} (key-like text)")
        return cleaned
    if isinstance(value, bool | int | float) or value is None:
        return value
    return redact(str(value), path, removed)


# -- TOML ----------------------------------------------------------------------------------------------

_BARE_KEY: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_TOML_ESCAPES: Final = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    """``v`` as a TOML value (string, number, boolean, array or inline table); the settings page writes
    single values with it too."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v if x is not None) + "]"
    if isinstance(v, Mapping):
        return (
            "{ "
            + ", ".join(f"{_toml_key(str(k))} = {toml_value(x)}" for k, x in v.items() if x is not None)
            + " }"
        )
    return _toml_string(str(v))


def to_toml(data: Mapping[str, Any]) -> str:
    """TOML text for ``data``: top-level scalars first, then one ``[table]`` per mapping (nested ones as
    ``[a.b]``). None, which TOML cannot say, becomes a comment ``# key: none``."""
    lines: list[str] = []

    def table(prefix: str, values: Mapping[str, Any]) -> None:
        subtables = []
        for k, v in values.items():
            key = _toml_key(str(k))
            if isinstance(v, Mapping):
                subtables.append((f"{prefix}.{key}" if prefix else key, v))
            elif v is None:
                lines.append(f"# {key}: none")
            else:
                lines.append(f"{key} = {toml_value(v)}")
        for name, sub in subtables:
            lines.append("")
            lines.append(f"[{name}]")
            table(name, sub)

    table("", data)
    return "\n".join(lines).lstrip("\n") + "\n"


# -- versions ------------------------------------------------------------------------------------------


def _dist(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _av_libs() -> Path | None:
    """PyAV's bundled libraries (``av.libs`` beside the package), found without importing PyAV."""
    spec = importlib.util.find_spec("av")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = Path(next(iter(spec.submodule_search_locations))).resolve().parent / "av.libs"
    return libs if libs.is_dir() else None


def _library_version(system_name: str, bundled_glob: str, function: str) -> str:
    """The version string ``function()`` of a C library: the system's first (as the engine loads it),
    else the one in PyAV's wheel."""
    candidates: list[str] = []
    found = ctypes.util.find_library(system_name)
    if found:
        candidates.append(found)
    libs = _av_libs()
    if libs is not None:
        candidates.extend(str(p) for p in sorted(libs.glob(bundled_glob)))
    for path in candidates:
        try:
            fn = getattr(ctypes.CDLL(path), function)
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_char_p
        fn.argtypes = []
        value = fn()
        return f"{value.decode('ascii', 'replace') if value else '?'} ({Path(path).name})"
    return "not found"


@functools.cache
def collect_versions() -> dict[str, str]:
    """Versions of what the doorway runs on (cached: they do not change while a process runs). Never
    raises: anything that cannot be found says so."""
    try:
        os_release = platform.freedesktop_os_release().get("PRETTY_NAME", "unknown")
    except OSError:
        os_release = "unknown (no /etc/os-release)"
    return {
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        "doorway": _dist("doorway"),
        "av": _dist("av"),
        "ffmpeg": _library_version("avutil", "libavutil-*.so*", "av_version_info"),
        "libopus": _library_version("opus", "libopus-*.so*", "opus_get_version_string"),
        "cryptography": _dist("cryptography"),
        "fastapi": _dist("fastapi"),
        "pydantic": _dist("pydantic"),
        "os": os_release,
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
    }


# -- the bundle ----------------------------------------------------------------------------------------


def _json_part(name: str, value: Any) -> bytes:
    text = json.dumps(value, indent=2, sort_keys=True, default=str, allow_nan=True) + "\n"
    data = text.encode("utf-8")
    if len(data) > MAX_PART_BYTES:
        note = {"left_out": f"{name} was {len(data)} bytes, more than the {MAX_PART_BYTES} a bundle holds"}
        data = (json.dumps(note, indent=2) + "\n").encode("utf-8")
    return data


def _log_part(logs: Sequence[LogLine]) -> tuple[bytes, int]:
    """logs.txt, newest lines kept to fit :data:`MAX_LOG_BYTES`; and how many lines were left out."""
    rendered: list[bytes] = []
    total = 0
    for line in reversed(logs):
        when = (
            datetime.fromtimestamp(line.t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            if line.t is not None
            else "-"
        )
        text = f"{when} {line.service} {line.level} {scrub_text(line.message)}".replace("\n", "\n    ")
        data = (text + "\n").encode("utf-8", "replace")
        if total + len(data) > MAX_LOG_BYTES:
            break
        rendered.append(data)
        total += len(data)
    rendered.reverse()
    return b"".join(rendered), len(logs) - len(rendered)


def build_bundle(
    settings_path: Path | None,
    settings: Settings,
    collector_latest: Mapping[str, Any],
    engine_stats: Mapping[str, Any] | None,
    hwcontrol_status: Mapping[str, Any] | None,
    logs: Sequence[LogLine],
    versions: Mapping[str, Any],
    *,
    now: float | None = None,
) -> bytes:
    """The diagnostics zip (see the module docstring), as bytes. ``settings_path`` is only named, never
    read; ``engine_stats``/``hwcontrol_status`` are None when those sockets did not answer; ``now`` (Unix
    seconds, default the wall clock) stamps the README and the zip entries."""
    when = time.time() if now is None else now
    stamp = datetime.fromtimestamp(when, UTC)
    removed: list[str] = []

    settings_dict = redact(settings.model_dump(mode="json"), "", removed)
    settings_removed = list(removed)
    source = f"{settings_path}" if settings_path is not None else "the default location"
    settings_text = (
        "# The effective settings of this doorway: the settings file at "
        f"{source}, DOORWAY_* environment overrides and defaults, merged.\n"
        f'# Secrets are replaced with "{REMOVED}" (see README.txt).\n\n' + to_toml(settings_dict)
    ).encode("utf-8")
    if len(settings_text) > MAX_PART_BYTES:
        settings_text = b"# left out: too large\n"

    stats = {
        "engine": redact(dict(engine_stats), "engine", removed) if engine_stats is not None else None,
        "collector": redact(dict(collector_latest), "collector", removed),
    }
    hwcontrol = redact(dict(hwcontrol_status), "hwcontrol", removed) if hwcontrol_status is not None else None
    versions_clean = redact(dict(versions), "versions", removed)
    logs_data, logs_left_out = _log_part(logs)

    parts: dict[str, bytes] = {
        "settings.toml": settings_text,
        "stats.json": _json_part("stats.json", stats),
        "hwcontrol.json": _json_part("hwcontrol.json", hwcontrol),
        "logs.txt": logs_data,
        "versions.json": _json_part("versions.json", versions_clean),
    }
    parts["README.txt"] = _readme(
        stamp, settings_removed, [r for r in removed if r not in settings_removed], len(logs), logs_left_out
    ).encode("utf-8")

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in (
            "README.txt",
            "settings.toml",
            "stats.json",
            "hwcontrol.json",
            "logs.txt",
            "versions.json",
        ):
            info = zipfile.ZipInfo(name, date_time=stamp.timetuple()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, parts[name])
    return buf.getvalue()


def _readme(
    stamp: datetime, settings_removed: list[str], other_removed: list[str], n_logs: int, logs_left_out: int
) -> str:
    lines = [
        "Doorway diagnostics bundle",
        f"Made {stamp.isoformat(timespec='seconds').replace('+00:00', 'Z')} (UTC).",
        "",
        "Inside:",
        "  settings.toml   the effective settings (file, DOORWAY_* environment overrides and defaults)",
        "  stats.json      the engine's statistics (null: it did not answer) and the panel's latest sample",
        "  hwcontrol.json  the room-controller bridge's status (null: it did not answer)",
        f"  logs.txt        {n_logs - logs_left_out} log lines, oldest first (UTC times)"
        + (f"; {logs_left_out} older lines left out to keep the bundle small" if logs_left_out else ""),
        "  versions.json   Python, Doorway, PyAV/FFmpeg, libopus, cryptography, OS and kernel",
        "",
        "Removed:",
        f'  Values whose names say they are secret are replaced with "{REMOVED}": a name with the word',
        "  key, code, secret, password, token, credential, private, salt or cookie in it (words split at",
        "  _ - and .), or containing password, secret, token, credential, apikey or privatekey anywhere.",
        "  Files that settings point to (such as the bootloader key file) were never read.",
        "  Runs of 32 or more hex digits and PEM blocks in any text, log lines included, are removed too.",
        "  Device ids and fingerprints are public and stay.",
    ]
    if settings_removed:
        lines += ["", "  Removed from settings.toml:", *(f"    {r}" for r in settings_removed)]
    if other_removed:
        lines += ["", "  Removed elsewhere:", *(f"    {r}" for r in other_removed[:200])]
        if len(other_removed) > 200:
            lines.append(f"    ... and {len(other_removed) - 200} more")
    if not settings_removed and not other_removed:
        lines += ["", "  (nothing matched)"]
    return "\n".join(lines) + "\n"
