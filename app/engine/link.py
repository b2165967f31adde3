"""The engine's one UDP socket to its twin: bind, buffer sizes, and the peer address check.

One socket carries everything in both directions (media, reports, keyframe requests, keepalives), so a
doorway needs one port opened, and a NAT or firewall sees one flow. ``send`` is safe from any thread (the
kernel serialises ``sendto``); ``recv`` is called only on the network receive thread.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)

RECV_BUFFER = 65536


class LinkError(Exception):
    """The socket could not be set up (port in use, bad address); the message names them."""


class UdpLink:
    """A bound UDP socket that talks to exactly one peer address."""

    def __init__(
        self, listen_host: str, listen_port: int, peer_host: str, peer_port: int, buffer_bytes: int
    ) -> None:
        try:
            infos = socket.getaddrinfo(peer_host, peer_port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise LinkError(f"peer address {peer_host}:{peer_port} cannot be resolved: {exc}") from exc
        family = infos[0][0]
        self.peer: tuple[str, int] = infos[0][4][:2]  # type: ignore[assignment]
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, opt, buffer_bytes)
            except OSError as exc:
                log.warning("link: cannot set socket buffer to %d bytes: %s", buffer_bytes, exc)
        try:
            self.sock.bind((listen_host, listen_port))
        except OSError as exc:
            self.sock.close()
            raise LinkError(f"cannot bind UDP {listen_host}:{listen_port}: {exc.strerror or exc}") from exc
        self.local = self.sock.getsockname()[:2]
        self.sent_bytes = 0
        self.sent_packets = 0
        self.send_errors = 0

    def send(self, data: bytes) -> None:
        """Send one datagram to the peer. Errors (no route, peer not up yet) are counted, not raised."""
        try:
            self.sock.sendto(data, self.peer)
        except OSError as exc:
            # ECONNREFUSED from an ICMP port-unreachable just means the twin is not up yet.
            self.send_errors += 1
            if self.send_errors == 1 or log.isEnabledFor(logging.DEBUG):
                log.warning("link: send to %s:%d failed: %s", self.peer[0], self.peer[1], exc)
            return
        self.sent_bytes += len(data)
        self.sent_packets += 1

    def recv(self, timeout_s: float) -> tuple[bytes, tuple[str, int]] | None:
        """One datagram and its source, or None after ``timeout_s`` seconds (network thread only)."""
        self.sock.settimeout(timeout_s)
        try:
            data, addr = self.sock.recvfrom(RECV_BUFFER)
        except (TimeoutError, BlockingIOError):
            return None
        except OSError:
            # Linux reports an earlier send's ICMP error on the next recv; it is not about this datagram.
            return None
        return data, (addr[0], addr[1])

    def is_peer(self, addr: tuple[str, int]) -> bool:
        """True if ``addr`` is the configured twin (address and port)."""
        return addr[0] == self.peer[0] and addr[1] == self.peer[1]

    def close(self) -> None:
        self.sock.close()
