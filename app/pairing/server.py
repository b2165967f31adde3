"""The showing side's TCP server: serves one pairing code to one doorway, and survives everyone else.

``doorway pair show`` makes a :class:`PairingServer` and calls :meth:`PairingServer.serve`, which returns
the other doorway's record when a pairing completes, or raises :class:`PairingError` when the one attempt
failed, the code expired or it was withdrawn.

Theory of operation
-------------------
One thread, one :mod:`selectors` loop, non-blocking sockets, one :class:`PairingMachine` per connection:
a slow or silent client holds no thread and blocks nobody, and a legitimate doorway can pair while a
slow-loris client sits on another connection.

The code is good for one attempt. The first connection whose key exchange message is well formed takes
it (its machine's ``code_used``): from then on that connection has had its one guess, and whatever
happens on it (success, a wrong code, a timeout, a reset) ends :meth:`~PairingServer.serve`. Other
connections are then told "busy" and closed. A connection that fails *before* that (garbage, an oversized
or truncated message, a wrong protocol version, silence past the per-connection timeout, too many
connections at once) learns nothing about the code, so it does not use the code up: it is told why
(an ERROR message), dropped and counted, and after ``max_drops`` of them the code is withdrawn, since
something on the network is probing the port.

Timeouts: each connection must finish within ``conn_timeout_s`` of being accepted (10 s by default; the
exchange itself takes three round trips and a few tens of ms of CPU). The code expires ``ttl_s`` after
the server was made, unless an attempt is under way, which then runs to its own timeout. Times are in
seconds of ``clock`` (``time.monotonic`` unless a test passes another).

Closing: before closing a connection the server sends what it owes, drains unread input and shuts down
its sending side, so the client reads the ERROR message instead of a reset.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from app.pairing.protocol import PairingError, PairingMachine, PeerRecord

log = logging.getLogger(__name__)

CONN_TIMEOUT_S: Final = 10.0
"""Default time a connection has to complete the exchange, in seconds."""
MAX_DROPS: Final = 10
"""Default number of bad connections after which the code is withdrawn."""
MAX_CONNECTIONS: Final = 8
"""Default number of connections served at once; more are dropped (and counted)."""
POLL_S: Final = 0.2
"""Longest wait in the loop, in seconds, so that a ``stop`` event is seen promptly."""
RECV_BYTES: Final = 4096
"""Bytes read per ``recv``."""


@dataclass(frozen=True)
class PairingResult:
    """A completed pairing, as one side sees it.

    ``media_host`` is where to send media: the record's host, or when that is empty the address the other
    doorway was seen at (show side: the connection's peer address; join side: the host it connected to).
    """

    peer: PeerRecord
    media_host: str
    address: str
    """The other doorway's address on the pairing connection (for messages)."""


def observed_host(record: PeerRecord, seen: str) -> str:
    """The media host to use for ``record``: its own, or ``seen`` (IPv4-mapped IPv6 turned back to IPv4)."""
    if record.media_host:
        return record.media_host
    if seen.startswith("::ffff:") and "." in seen:
        return seen[len("::ffff:") :]
    return seen


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    address: str
    machine: PairingMachine
    deadline: float
    out: bytearray = field(default_factory=bytearray)


class PairingServer:
    """Listens on ``host``:``port`` (0 = any free port) for one pairing with ``code``; binds on creation.

    ``own`` is what this doorway tells the other. ``on_notice`` receives one line for each dropped
    connection (the command prints it). Runs on the thread that calls :meth:`serve`; :meth:`close` may be
    called from any thread after :meth:`serve` returned. Raises :class:`PairingError` if it cannot listen.
    """

    def __init__(
        self,
        code: str,
        own: PeerRecord,
        *,
        host: str = "0.0.0.0",
        port: int = 47001,
        ttl_s: float = 600.0,
        conn_timeout_s: float = CONN_TIMEOUT_S,
        max_drops: int = MAX_DROPS,
        max_connections: int = MAX_CONNECTIONS,
        clock: Callable[[], float] = time.monotonic,
        on_notice: Callable[[str], object] | None = None,
    ) -> None:
        self._code = code
        self._own = own
        self._ttl_s = ttl_s
        self._conn_timeout_s = conn_timeout_s
        self._max_drops = max_drops
        self._max_connections = max_connections
        self._clock = clock
        self._on_notice = on_notice
        self.drops = 0
        """Connections dropped so far without using the code."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._listener = socket.create_server((host, port), family=family, backlog=16)
        except OSError as exc:
            raise PairingError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._listener.setblocking(False)
        self._expires_at = clock() + ttl_s
        self._conns: dict[socket.socket, _Conn] = {}
        self._owner: _Conn | None = None
        self._sel = selectors.DefaultSelector()
        self._closed = False

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the server listens on; the port is the real one when 0 was asked for."""
        host, port = self._listener.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Close the listener and every connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for conn in list(self._conns.values()):
            self._close(conn)
        self._sel.close()
        self._listener.close()

    def serve(self, stop: threading.Event | None = None) -> PairingResult:
        """Serve until one pairing attempt ends; return its result or raise :class:`PairingError`.

        ``stop``, when set from another thread, ends serving within :data:`POLL_S` with "cancelled".
        Closes the server when it returns: one server, one code, one attempt.
        """
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        try:
            while True:
                if stop is not None and stop.is_set():
                    raise PairingError("cancelled; the code is withdrawn")
                now = self._clock()
                if self._owner is None and now >= self._expires_at:
                    raise PairingError(
                        f"the code expired after {duration_text(self._ttl_s)}; show a new code"
                    )
                for late in [c for c in self._conns.values() if now >= c.deadline]:
                    self._timed_out(late)
                deadlines = [c.deadline for c in self._conns.values()]
                if self._owner is None:
                    deadlines.append(self._expires_at)
                wake = min([now + POLL_S, *deadlines])
                for key, events in self._sel.select(max(0.0, wake - now)):
                    if key.data is None:
                        self._accept()
                        continue
                    conn: _Conn = key.data
                    if events & selectors.EVENT_WRITE and conn.sock in self._conns:
                        self._flush(conn)
                    # An earlier event in this batch may have closed the connection ("busy", a drop).
                    if events & selectors.EVENT_READ and conn.sock in self._conns:
                        result = self._readable(conn)
                        if result is not None:
                            return result
        finally:
            self.close()

    # -- connections --------------------------------------------------------------------------------------

    def _accept(self) -> None:
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. EMFILE: the listener itself is fine, try again on the next wake-up
            log.warning("pairing: accept failed: %s", exc)
            return
        sock.setblocking(False)
        machine = PairingMachine("show", self._code, self._own)
        conn = _Conn(sock, str(addr[0]), machine, self._clock() + self._conn_timeout_s)
        self._conns[sock] = conn
        self._sel.register(sock, selectors.EVENT_READ, conn)
        log.debug("pairing: connection from %s", conn.address)
        if self._owner is not None:
            self._busy(conn)
        elif len(self._conns) > self._max_connections:
            self._drop(conn, f"more than {self._max_connections} connections at once")

    def _readable(self, conn: _Conn) -> PairingResult | None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self._lost(conn, f"connection error ({exc.strerror or exc})")
            return None
        if not data:
            self._lost(conn, "closed the connection")
            return None
        if self._owner is not None and conn is not self._owner:
            self._busy(conn)
            return None
        try:
            conn.machine.receive_data(data)
        except PairingError as exc:
            conn.out += conn.machine.data_to_send()
            if conn.machine.code_used:
                self._close(conn)
                raise
            self._drop(conn, str(exc))
            return None
        conn.out += conn.machine.data_to_send()
        if conn.machine.code_used and self._owner is None:
            self._owner = conn
            log.info("pairing: %s is pairing; the code is now used", conn.address)
            for other in [c for c in self._conns.values() if c is not conn]:
                self._busy(other)
        self._flush(conn)
        if conn.machine.done:
            peer = conn.machine.peer
            assert peer is not None
            self._close(conn)
            return PairingResult(
                peer=peer, media_host=observed_host(peer, conn.address), address=conn.address
            )
        return None

    def _flush(self, conn: _Conn) -> None:
        try:
            while conn.out:
                sent = conn.sock.send(conn.out)
                del conn.out[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._lost(conn, f"connection error ({exc.strerror or exc})")
            return
        # Wait for writability only while something is pending: a client that never reads cannot make us
        # spin, and its deadline still applies.
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        if self._sel.get_key(conn.sock).events != want:
            self._sel.modify(conn.sock, want, conn)

    def _close(self, conn: _Conn) -> None:
        """Send what is owed (best effort, never blocking), drain unread input, half-close, close."""
        if self._conns.pop(conn.sock, None) is None:
            return
        self._sel.unregister(conn.sock)
        out = bytes(conn.out) + conn.machine.data_to_send()
        try:
            if out:
                conn.sock.send(out)
            # Unread input would make close() send a reset, which can destroy the ERROR message in flight.
            for _ in range(16):
                if not conn.sock.recv(RECV_BYTES):
                    break
        except OSError:
            pass
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        conn.sock.close()

    def _busy(self, conn: _Conn) -> None:
        conn.machine.abort("another doorway is already pairing with this code")
        self._close(conn)

    def _drop(self, conn: _Conn, reason: str) -> None:
        self.drops += 1
        line = f"ignored a connection from {conn.address}: {reason} ({self.drops} of {self._max_drops})"
        log.warning("pairing: %s", line)
        if self._on_notice is not None:
            self._on_notice(line)
        conn.machine.abort(reason)
        self._close(conn)
        if self.drops >= self._max_drops:
            raise PairingError(
                f"the code was withdrawn after {self.drops} bad connections to the pairing port; "
                "show a new code"
            )

    def _lost(self, conn: _Conn, what: str) -> None:
        waiting = conn.machine.waiting_for or "nothing"
        if conn is self._owner:
            self._close(conn)
            raise PairingError(f"the other doorway {what} while this one waited for {waiting}")
        if self._owner is not None:
            self._close(conn)  # told "busy" already; not a bad client
            return
        self._drop(conn, f"{what} before the key exchange")

    def _timed_out(self, conn: _Conn) -> None:
        waiting = conn.machine.waiting_for or "nothing"
        if conn is self._owner:
            conn.machine.abort("timed out")
            self._close(conn)
            raise PairingError(
                f"the other doorway stopped answering while this one waited for {waiting} "
                f"(an exchange has {duration_text(self._conn_timeout_s)} to complete)"
            )
        self._drop(conn, f"no key exchange within {duration_text(self._conn_timeout_s)}")


def duration_text(seconds: float) -> str:
    """Seconds as people say them: "10 minutes", "1 minute", "0.3 s"."""
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} s"
