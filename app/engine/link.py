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
        self,
        listen_host: str,
        listen_port: int,
        peer_host: str | None,
        peer_port: int | None,
        buffer_bytes: int,
    ) -> None:
        """``peer_host``/``peer_port`` None: no twin yet (not paired); datagrams are then dropped and counted
        until :meth:`set_peer`."""
        self.peer: tuple[str, int] | None = None
        if peer_host is not None and peer_port is not None:
            self.peer = self._resolve(peer_host, peer_port)
        try:
            family = socket.getaddrinfo(listen_host, listen_port, type=socket.SOCK_DGRAM)[0][0]
        except OSError as exc:
            raise LinkError(f"listen address {listen_host}:{listen_port} cannot be resolved: {exc}") from exc
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
        self.unaddressed = 0
        """Datagrams dropped because there is no twin to send to (not paired)."""

    @staticmethod
    def _resolve(host: str, port: int) -> tuple[str, int]:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise LinkError(f"peer address {host}:{port} cannot be resolved: {exc}") from exc
        return (str(infos[0][4][0]), int(infos[0][4][1]))

    def set_peer(self, host: str, port: int) -> None:
        """Talk to ``host:port`` from now on (a new pairing). :class:`LinkError` if it does not resolve."""
        self.peer = self._resolve(host, port)

    def send(self, data: bytes) -> None:
        """Send one datagram to the peer. Errors (no route, peer not up yet) are counted, not raised."""
        peer = self.peer
        if peer is None:
            self.unaddressed += 1
            return
        try:
            self.sock.sendto(data, peer)
        except OSError as exc:
            # ECONNREFUSED from an ICMP port-unreachable just means the twin is not up yet.
            self.send_errors += 1
            if self.send_errors == 1 or log.isEnabledFor(logging.DEBUG):
                log.warning("link: send to %s:%d failed: %s", peer[0], peer[1], exc)
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
        """True if ``addr`` is the twin's (address and port)."""
        peer = self.peer
        return peer is not None and addr[0] == peer[0] and addr[1] == peer[1]

    def close(self) -> None:
        self.sock.close()
