"""``doorway demo`` starts two doorways — engine, room controller and admin panel each — prints where the
panels are and live statistics, and stops cleanly by itself (every process exiting without an error)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_and_stops() -> None:
    cmd = [sys.executable, "-m", "app", "demo", "--seconds", "5", "--width", "320", "--height", "240",
           "--display", "null"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("kitchen", "studio"):
        assert re.search(
            rf"{name}'s admin panel: https://127\.0\.0\.1:\d+/ — setup code \d{{4}}(-\d{{4}}){{3}}",
            done.stdout,
        )
    lines = [line for line in done.stdout.splitlines() if "kitchen sees" in line]
    assert lines, done.stdout
    # By the last report both directions are flowing.
    assert lines[-1].count("fps shown") == 2
    assert " 0.0 fps shown" not in lines[-1]
