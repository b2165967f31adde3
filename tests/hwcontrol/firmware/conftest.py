"""Fixtures for the firmware tests: the fake MicroPython modules, and main.py imported against them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from .fake_machine import FakeMCU

MAIN = "hwcontrol.firmware.main"


@pytest.fixture
def fake_mcu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeMCU]:
    """Fake ``machine``/``neopixel``/``micropython``/``utime`` in ``sys.modules``, the working directory
    a fresh tmp dir (the board's filesystem: key and boot-marker files)."""
    mcu = FakeMCU(start_ms=1000)
    mcu.install(monkeypatch)
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(MAIN, None)
    yield mcu
    # main.py bound itself to the fakes: never leave that module behind for other tests.
    sys.modules.pop(MAIN, None)


@pytest.fixture
def firmware_main(fake_mcu: FakeMCU) -> ModuleType:
    """``hwcontrol.firmware.main`` imported fresh against the fake modules."""
    return importlib.import_module(MAIN)
