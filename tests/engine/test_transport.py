"""Tests for app.engine.transport: the share of the target left to FEC follows the frame size."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.engine.link import UdpLink
from app.engine.transport import Transport


@pytest.fixture
def link() -> Iterator[UdpLink]:
    udp = UdpLink("127.0.0.1", 0, "127.0.0.1", 9, 65536)
    yield udp
    udp.sock.close()


def fec_share_at(link: UdpLink, target_bps: int, loss: float) -> float:
    shares: list[float] = []
    transport = Transport(
        link,
        start_bps=target_bps,
        min_bps=100_000,
        max_bps=target_bps,
        on_target=lambda bps, share: shares.append(share),
        fps=60,
        fragment_bytes=1200,
    )
    transport.loss.loss = loss
    transport._apply(0)
    assert shares, "a new loss level must be handed on"
    return shares[-1]


def test_small_frames_leave_a_larger_share_to_fec(link: UdpLink) -> None:
    # 12 Mb/s at 60 fps is ~21 fragments a frame, 2 Mb/s only ~4: one parity packet is a larger share.
    high = fec_share_at(link, 12_000_000, 0.02)
    low = fec_share_at(link, 2_000_000, 0.02)
    assert 0 < high < low <= 0.5
