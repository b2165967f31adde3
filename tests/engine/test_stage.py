"""Inboxes never block and count drops; a failing stage reports to its supervisor."""

from __future__ import annotations

import threading

from app.engine.stage import Inbox, Stage


def test_inbox_drops_new_when_full() -> None:
    box: Inbox[int] = Inbox(2)
    assert box.put(1) and box.put(2)
    assert not box.put(3)
    assert box.dropped == 1
    assert box.get(0.01) == 1 and box.get(0.01) == 2 and box.get(0.01) is None


def test_inbox_latest_wins_keeps_newest() -> None:
    box: Inbox[int] = Inbox(1, latest_wins=True)
    for i in range(5):
        box.put(i)
    assert box.dropped == 4
    assert box.get_nowait() == 4
    assert box.get_nowait() is None


class Boom(Stage):
    def run_once(self) -> None:
        raise RuntimeError("bug")


def test_stage_error_reaches_supervisor() -> None:
    seen: list[str] = []
    done = threading.Event()

    def on_error(name: str, exc: BaseException) -> None:
        seen.append(f"{name}:{exc}")
        done.set()

    stage = Boom("boom", on_error)
    stage.start()
    assert done.wait(10)
    assert stage.join(10)
    assert seen == ["boom:bug"]


class Counter(Stage):
    def __init__(self) -> None:
        super().__init__("counter", lambda n, e: None)
        self.n = 0
        self.torn_down = False

    def run_once(self) -> None:
        self.n += 1
        threading.Event().wait(0.001)

    def teardown(self) -> None:
        self.torn_down = True


def test_stage_stops_and_tears_down() -> None:
    s = Counter()
    s.start()
    assert s.started.wait(10)
    s.stop()
    assert s.join(10)
    assert s.torn_down
