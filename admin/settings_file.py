"""The settings file as the admin panel edits it: merge a partial update, validate it, write it atomically.

The services read one TOML file (``--config``, ``/etc/doorway/doorway.toml`` on the appliance) once, at
start (:mod:`app.settings`). The settings page changes a few keys of it; :meth:`SettingsFile.update` does
the whole round: merge, validate, write, and say what the change means for the running services.

Theory of operation
-------------------
Merge: a change is ``(section, key) → value``, or ``→ None`` for "remove the key, so the default applies"
(TOML has no null). The changes are applied to the file's *text*, line by line (:func:`edit_toml`), so the
comments, order and layout a technician wrote stay: a key's value is replaced in place, its trailing
comment kept at the same column; a new key goes after the last key of its table; a new table at the end.
The edited text must parse to exactly the merged data; where this simple editor met something it does not
understand (a dotted or quoted key, an inline table, a value over several lines) it does not, and the file
is written afresh from the data instead (comments lost; logged).

Validate: the would-be text goes through :func:`app.settings.parse_settings`, the very path
:func:`~app.settings.load_settings` takes at every service's start, environment overrides included. So the
panel never writes a file a service would refuse to start with, and its refusals are the schema's own
one-line-per-problem messages. Before that, a value no UTF-8 file can hold is refused the same way
(:func:`unstorable`): a lone surrogate, which JSON can carry (``"\\ud800"``) and a Python string keeps.

Write (:func:`write_atomic`): a temporary file in the same directory, written, given the old file's mode
(and owner, where the process may), fsynced, renamed over the file, and the directory fsynced. After a power
cut the file is the old one or the new one, whole, never a mix or empty. One update at a time (a lock).

Apply: :func:`services_to_restart` says which processes read a changed key at start only (they must
restart for it to take effect); keys in :data:`LIVE_KEYS` are applied to the running engine by the caller
(``video.bitrate_kbps`` through the engine's ``set_bitrate``), so the call is not dropped for them.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import stat
import tempfile
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from admin.diagnostics import to_toml, toml_value
from app.settings import Settings, SettingsError, parse_settings

log = logging.getLogger(__name__)

Change = tuple[str, str]
"""A settings key as (section, key), e.g. ("video", "fps")."""

NEW_FILE_MODE: Final = 0o640
"""Mode of a settings file the panel creates (an existing file keeps its own)."""
NEW_FILE_HEADER: Final = (
    "# Doorway settings, written by the admin panel. Every key is optional; see\n"
    "# provisioning/doorway.toml.example for all of them and their defaults.\n"
)

LIVE_KEYS: Final = frozenset({"video.bitrate_kbps", "lighting.match_far_side"})
"""Keys the running engine takes without a restart (through its control socket's ``set_bitrate`` and
``lighting_match``)."""

SERVICES_OF_SECTION: Final[Mapping[str, tuple[str, ...]]] = {
    "engine": ("engine",),
    "capture": ("engine",),
    "video": ("engine",),
    "network": ("engine",),
    "display": ("engine",),
    "audio": ("engine",),
    "camera": ("engine",),
    # The bridge starts the lights as calibrated (or at the startup scene); the engine matches the far side.
    "lighting": ("engine", "hwcontrol"),
    # ``doorway pair`` reads it each time it runs, and the admin panel whenever it shows a code.
    "pairing": (),
    "hwcontrol": ("hwcontrol",),
    "admin": ("admin",),
    "logging": ("engine", "hwcontrol", "admin"),
}
"""Which services read a section's keys once, at start."""

SERVICES_OF_KEY: Final[Mapping[str, tuple[str, ...]]] = {
    # Paths other processes use to reach or share with the engine and the bridge.
    "engine.control_socket": ("engine", "admin"),
    "engine.state_dir": ("engine", "admin"),
    "hwcontrol.control_socket": ("hwcontrol", "engine", "admin"),
}
"""Keys read by more services than their section says."""

SERVICE_ORDER: Final = ("engine", "hwcontrol", "admin")

_SIMPLE_HEADER: Final = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(?:#.*)?$")
_ANY_HEADER: Final = re.compile(r"^\s*\[")
_KEY_LINE: Final = re.compile(r"^(\s*)([A-Za-z0-9_-]+)(\s*=\s*)(.*)$")


class SettingsWriteError(Exception):
    """The settings file cannot be read or written (permissions, a read-only file system, a full disk).
    The message names the file, for people."""


@dataclass(frozen=True)
class SaveResult:
    """What an update did: the settings the file now holds, the dotted keys whose effective value changed
    (in schema order), the services that must restart for them, and whether the file was written at all
    (an update that changes nothing leaves it alone)."""

    settings: Settings
    previous: Settings
    changed: tuple[str, ...]
    restart: tuple[str, ...]
    written: bool


def services_to_restart(keys: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The services (engine, hwcontrol, admin, in that order) that must restart for ``keys`` (dotted) to
    take effect; keys in :data:`LIVE_KEYS` need none."""
    needed: set[str] = set()
    for key in keys:
        if key in LIVE_KEYS:
            continue
        section = key.split(".", 1)[0]
        needed.update(SERVICES_OF_KEY.get(key, SERVICES_OF_SECTION.get(section, SERVICE_ORDER)))
    return tuple(s for s in SERVICE_ORDER if s in needed)


def changed_keys(old: Settings, new: Settings) -> tuple[str, ...]:
    """Dotted keys whose effective value differs between ``old`` and ``new``, in schema order."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    out: list[str] = []
    for section, values in b.items():
        for key, value in values.items():
            if a.get(section, {}).get(key) != value:
                out.append(f"{section}.{key}")
    return tuple(out)


# -- editing TOML text --------------------------------------------------------------------------------------


class _CannotEditError(Exception):
    """The line editor met a construct it does not handle; the caller rewrites the file from the data."""


def _split_value(rest: str) -> tuple[str, str]:
    """``rest`` (what follows ``key =``) as (value, trailing part with its comment). The value ends at the
    first ``#`` before which the text is a whole TOML value (a ``#`` inside a string is not a comment)."""
    cuts = [i for i, ch in enumerate(rest) if ch == "#"] + [len(rest)]
    for cut in cuts:
        candidate = rest[:cut].rstrip()
        if not candidate:
            continue
        try:
            tomllib.loads(f"v = {candidate}\n")
        except tomllib.TOMLDecodeError:
            continue
        return candidate, rest[len(candidate) :]
    raise _CannotEditError("a value over several lines")


def _key_line(indent: str, key: str, eq: str, old_value: str, value: Any, trailing: str) -> str:
    """``key = value`` keeping the trailing comment at its old column where the new value fits."""
    head = f"{indent}{key}{eq}{toml_value(value)}"
    comment = trailing.lstrip()
    if not comment:
        return head
    old_column = len(indent) + len(key) + len(eq) + len(old_value) + len(trailing) - len(comment)
    return head + " " * max(1, old_column - len(head)) + comment


def edit_toml(text: str, changes: Mapping[Change, Any]) -> str:
    """``text`` with ``changes`` applied in place (see the module docstring); raises :class:`_CannotEditError`
    for a file it cannot edit line by line."""
    lines = text.splitlines()
    pending = dict(changes)
    out: list[str] = []
    section: str | None = None
    last_line_of: dict[str, int] = {}  # a simple table → index in ``out`` after which to add its new keys
    for line in lines:
        header = _SIMPLE_HEADER.match(line)
        if header is not None:
            section = header.group(1)
            if section in last_line_of:
                raise _CannotEditError(f"table [{section}] appears twice")
            out.append(line)
            last_line_of[section] = len(out) - 1
            continue
        if _ANY_HEADER.match(line):
            section = None  # [a.b] or [[a]]: not ours to edit
            out.append(line)
            continue
        m = _KEY_LINE.match(line)
        if m is None or section is None:
            out.append(line)
            continue
        indent, key, eq, rest = m.groups()
        if (section, key) not in pending:
            out.append(line)
            last_line_of[section] = len(out) - 1
            continue
        value = pending.pop((section, key))
        if value is None:
            continue  # removed: the default applies
        old_value, trailing = _split_value(rest)
        out.append(_key_line(indent, key, eq, old_value, value, trailing))
        last_line_of[section] = len(out) - 1
    # Keys not in the file yet: after the last key of their table, or in a new table at the end.
    inserts: dict[int, list[str]] = {}
    new_tables: dict[str, list[str]] = {}
    for (sec, key), value in pending.items():
        if value is None:
            continue
        line = f"{key} = {toml_value(value)}"
        if sec in last_line_of:
            inserts.setdefault(last_line_of[sec], []).append(line)
        else:
            new_tables.setdefault(sec, []).append(line)
    for index in sorted(inserts, reverse=True):
        out[index + 1 : index + 1] = inserts[index]
    for sec, added in new_tables.items():
        while out and not out[-1].strip():
            out.pop()
        if out:
            out.append("")
        out.append(f"[{sec}]")
        out.extend(added)
    return "\n".join(out) + "\n" if out else ""


def merge(data: Mapping[str, Any], changes: Mapping[Change, Any]) -> dict[str, Any]:
    """A copy of the parsed file ``data`` with ``changes`` applied (None removes a key, and a table left
    empty)."""
    merged = copy.deepcopy(dict(data))
    for (section, key), value in changes.items():
        table = merged.get(section)
        if value is None:
            if isinstance(table, dict):
                table.pop(key, None)
                if not table:
                    merged.pop(section)
            continue
        if not isinstance(table, dict):
            table = merged[section] = {}
        table[key] = list(value) if isinstance(value, tuple) else value
    return merged


def render(old_text: str, changes: Mapping[Change, Any], source: str) -> str:
    """The would-be file text: ``old_text`` edited in place when that gives exactly the merged data, else
    the merged data written afresh. Raises :class:`SettingsError` when ``old_text`` is not TOML."""
    try:
        data = tomllib.loads(old_text)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{source}: not valid TOML: {exc}") from exc
    merged = merge(data, changes)
    try:
        edited = edit_toml(old_text, changes)
        if tomllib.loads(edited) == merged:
            return edited if old_text.strip() else NEW_FILE_HEADER + "\n" + edited
        reason = "the edited text did not say what was meant"
    except (_CannotEditError, tomllib.TOMLDecodeError) as exc:
        reason = str(exc)
    log.warning("settings: rewriting %s from its data (comments are lost): %s", source, reason)
    return NEW_FILE_HEADER + "\n" + to_toml(merged)


# -- writing -------------------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that it is the old file or the new one after any crash (see the
    module docstring). Keeps an existing file's mode (and owner, where allowed). Raises
    :class:`SettingsWriteError`."""
    directory = path.parent
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise SettingsWriteError(f"cannot read {path}: {exc.strerror or exc}") from None
    mode = stat.S_IMODE(st.st_mode) if st is not None else NEW_FILE_MODE
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise SettingsWriteError(f"cannot write in {directory}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if st is not None:
                # Only root may give a file away; anyone else keeps their own ownership (and then it is
                # already the same user that owned the file, or the rename below is refused anyway).
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SettingsWriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename is durable only once the directory entry is on disk too.
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        log.warning("settings: cannot fsync %s: %s", directory, exc)


# -- the file ------------------------------------------------------------------------------------------------


def unstorable(changes: Mapping[Change, Any], source: str) -> list[str]:
    """One line per change whose value the file cannot hold: its TOML text does not encode as UTF-8.

    Only a lone surrogate (U+D800 to U+DFFF on its own) does that: ``PUT /api/settings`` gets one from a
    JSON escape such as ``"\\ud800"``, and the schema lets it through in a plain text key
    (``audio.input_device``). Refused here it is a 422 naming the key, not a crash while writing."""
    lines = []
    for (section, key), value in changes.items():
        try:
            toml_value(value).encode("utf-8")
        except UnicodeEncodeError:
            # repr() escapes the surrogate, so the message itself can be encoded.
            lines.append(f"{source}: {section}.{key} = {value!r}: not text a settings file can hold")
    return lines


class SettingsFile:
    """The settings file at ``path`` (it may not exist yet: all defaults). Thread-safe; methods block on
    file I/O (call them from the thread pool)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsWriteError(f"cannot read {self.path}: {exc}") from None

    def load(self) -> Settings:
        """The settings the file holds now, with environment overrides and defaults (what a service started
        now would run with). Raises :class:`SettingsError` or :class:`SettingsWriteError`."""
        return parse_settings(self._text(), str(self.path))

    def update(self, changes: Mapping[Change, Any], running: Settings) -> SaveResult:
        """Merge ``changes`` into the file, validate the whole, write it atomically. ``running`` stands in
        for the old settings when the file on disk does not validate as it is (someone broke it by hand;
        the update may repair it). Raises :class:`SettingsError` (nothing written; one line per problem)
        or :class:`SettingsWriteError`."""
        source = str(self.path)
        problems = unstorable(changes, source)
        if problems:
            raise SettingsError("\n".join(problems))
        with self._lock:
            old_text = self._text()
            try:
                previous = parse_settings(old_text, source)
            except SettingsError:
                previous = running
            new_text = render(old_text, changes, source)
            new = parse_settings(new_text, source)
            written = new_text != old_text
            if written:
                write_atomic(self.path, new_text)
        changed = changed_keys(previous, new)
        return SaveResult(new, previous, changed, services_to_restart(changed), written)
