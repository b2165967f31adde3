"""The joining side's TCP client: connect to a showing doorway, run the exchange, return its record.

``doorway pair join CODE HOST[:PORT]`` calls :func:`join`. It runs on the caller's thread with one
blocking socket and one deadline for the whole exchange (connecting included), so a silent or slow server
cannot keep it waiting longer than ``timeout_s``. On any failure it sends what the state machine owes the
other side (its key confirmation, which lets the showing doorway report a wrong code too, or an ERROR
message) before closing, and raises :class:`PairingError` with one printable line.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Final

from app.pairing.protocol import PairingError, PairingMachine, PeerRecord
from app.pairing.server import RECV_BYTES, PairingResult, observed_host

TIMEOUT_S: Final = 10.0
"""Default time the whole exchange may take, connecting included, in seconds."""


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[IPv6]``, ``[IPv6]:PORT`` or a bare IPv6 address, as (host, port).

    Raises ValueError with a printable message. ``default_port`` 0 means "there is no default".
    """
    host, port_text = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            raise ValueError(f"{text!r} is not HOST[:PORT] (an IPv6 address goes in brackets: [::1]:47001)")
        host = text[1:end]
        port_text = text[end + 2 :] if end + 1 < len(text) else None
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host or any(ch.isspace() for ch in host):
        raise ValueError(f"{text!r} is not HOST[:PORT]")
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
        return host, int(port_text)
    if default_port == 0:
        raise ValueError(f"{text!r} has no port, and pairing.port is 0: give HOST:PORT")
    return host, default_port


def join(
    code: str,
    own: PeerRecord,
    host: str,
    port: int,
    *,
    timeout_s: float = TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
) -> PairingResult:
    """Pair with the doorway showing ``code`` at ``host``:``port``; raises :class:`PairingError`.

    ``code`` is the 8-digit code as :func:`app.pairing.code.parse_code` returns it. Blocks the calling
    thread for at most about ``timeout_s`` seconds.
    """
    deadline = clock() + timeout_s
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except socket.gaierror as exc:
        raise PairingError(f"cannot find {host}: {exc.strerror or exc}") from None
    except ConnectionRefusedError:
        raise PairingError(
            f"cannot connect to {where}: connection refused (is `doorway pair show` running there, "
            "and is its code still valid?)"
        ) from None
    except TimeoutError:
        raise PairingError(f"cannot connect to {where}: no answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise PairingError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    machine = PairingMachine("join", code, own)
    with sock:
        try:
            while True:
                out = machine.data_to_send()
                if out:
                    sock.settimeout(max(0.01, deadline - clock()))
                    sock.sendall(out)
                if machine.done:
                    break
                left = deadline - clock()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                data = sock.recv(RECV_BYTES)
                if not data:
                    raise PairingError(
                        f"the other doorway closed the connection while this one waited for "
                        f"{machine.waiting_for}"
                    )
                machine.receive_data(data)
        except PairingError:
            _send_owed(sock, machine)
            raise
        except TimeoutError:
            waiting = machine.waiting_for
            machine.abort("timed out")
            _send_owed(sock, machine)
            raise PairingError(
                f"the other doorway stopped answering while this one waited for {waiting} "
                f"(an exchange has {timeout_s:g} s to complete)"
            ) from None
        except OSError as exc:
            raise PairingError(
                f"lost the connection to {where} while waiting for {machine.waiting_for}: "
                f"{exc.strerror or exc}"
            ) from None
        # Half-close so the final ACK is delivered before the FIN, never dropped by a reset.
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
    peer = machine.peer
    assert peer is not None
    return PairingResult(peer=peer, media_host=observed_host(peer, host), address=where)


def _send_owed(sock: socket.socket, machine: PairingMachine) -> None:
    """Best effort, briefly: the other side learns of a wrong code from our confirmation."""
    out = machine.data_to_send()
    if not out:
        return
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(out)
        sock.shutdown(socket.SHUT_WR)
