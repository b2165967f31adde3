"""``doorway demo`` starts two doorways, prints live statistics and stops cleanly by itself."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_and_stops() -> None:
    cmd = [sys.executable, "-m", "app", "demo", "--seconds", "5", "--width", "320", "--height", "240",
           "--display", "null"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if "kitchen sees" in line]
    assert lines, done.stdout
    # By the last report both directions are flowing.
    assert lines[-1].count("fps shown") == 2
    assert " 0.0 fps shown" not in lines[-1]
