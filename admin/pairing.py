"""Pairing from the admin panel: show a code (and its QR) and wait for the other doorway, or join one.

The same exchange as ``doorway pair show|join`` (:mod:`app.pairing`), run inside the admin process:

- :meth:`PairingManager.show` makes a code and a :class:`~app.pairing.server.PairingServer` on the
  pairing port, and serves it on a thread of its own ("pairing-show") until the one attempt ends, the code
  expires or it is cancelled. The page polls :meth:`PairingManager.status`.
- :meth:`PairingManager.join` runs the join client on the caller's thread (a request handler's worker
  thread; it blocks for at most the client's timeout, 10 s).

Either stores the twin in the state database (:meth:`app.state.StateStore.set_twin`, one transaction); the
engine notices the new pairing by itself within a second (it polls the store's version). One attempt at a
time: a second show while one waits returns the same code; a join while a code is shown or another join
runs is refused with :class:`PairingBusyError`.

The outcome of the last attempt (paired, failed, expired, cancelled) stays in :meth:`status` until the next
one, so a page loaded afterwards can still say what happened; "paired" only until the twin is unpaired.
Every attempt's outcome is also reported to ``on_event`` (the history's event list).

The code is the pairing's password: it is shown to the logged-in owner only (the routes are behind a
session) and never logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal

from app.identity import Identity, fingerprint_of
from app.pairing.client import join as join_client
from app.pairing.client import parse_address
from app.pairing.code import format_code, new_code, parse_code, qr_payload
from app.pairing.commands import own_record, shown_host, twin_of, where
from app.pairing.protocol import PairingError
from app.pairing.server import PairingServer, duration_text
from app.settings import Settings
from app.state import StateError, StateStore, Twin

log = logging.getLogger(__name__)

State = Literal["idle", "waiting", "paired", "failed", "expired", "cancelled"]
"""Where the last pairing attempt stands."""

QR_SCALE: Final = 4
"""Pixels per QR module in the SVG's own size (CSS scales it to the screen)."""


class PairingBusyError(Exception):
    """Another pairing attempt is under way on this doorway."""


@dataclass(frozen=True)
class PairingStatus:
    """The current or last pairing attempt, as the page and ``/api/pairing/status`` show it.

    While ``waiting``: the code (``1234-5678``), its QR code as an SVG element, the address to join
    (``host``:``port``) and when the code expires (Unix seconds). After: ``message`` says what happened and,
    when paired, who with."""

    state: State = "idle"
    message: str = ""
    role: Literal["show", "join"] | None = None
    code: str | None = None
    qr_svg: str | None = None
    host: str | None = None
    port: int | None = None
    expires_at: float | None = None
    peer_name: str | None = None
    peer_fingerprint: str | None = None

    @property
    def address(self) -> str | None:
        """``host:port`` to type on the other doorway (IPv6 in brackets), while waiting."""
        return where(self.host, self.port) if self.host is not None and self.port is not None else None


def qr_svg(payload: str) -> str:
    """``payload`` as a QR code: an ``<svg>`` element to put in a page as it is (no XML declaration, no
    namespace, no ``style``: the Content-Security-Policy allows it inline). Always black on white, which
    every scanner reads, whatever the page's colours."""
    import segno  # only the pairing page needs it

    qr = segno.make(payload, error="m")
    svg: str = qr.svg_inline(
        scale=QR_SCALE,
        border=4,
        dark="#000",
        light="#fff",
        svgclass="qr",
        title="Pairing QR code",
        omitsize=True,  # a viewBox instead of a fixed size: CSS scales it to the screen
    )
    return svg


class PairingManager:
    """Pairing for one doorway: its state database in ``state_dir``, its settings from ``settings()`` (called
    at each attempt, so a name saved on the settings page is what the other doorway is told).

    ``clock`` is Unix seconds (pairing times, expiry shown); ``on_event(level, message)`` hears each
    outcome. Thread-safe. :meth:`close` cancels a shown code and closes the database.
    """

    def __init__(
        self,
        settings: Callable[[], Settings],
        state_dir: Path,
        *,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[str, str], object] | None = None,
        join_timeout_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._state_dir = Path(state_dir)
        self._clock = clock
        self._on_event = on_event
        self._join_timeout_s = join_timeout_s
        self._lock = threading.Lock()
        self._store: StateStore | None = None
        self._status = PairingStatus()
        self._joining = False
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    # -- the state database ---------------------------------------------------------------------------------

    def store(self) -> StateStore:
        """The state database, opened on first use (and again after a failed open). Raises StateError."""
        with self._lock:
            if self._store is None:
                self._store = StateStore(self._state_dir)
            return self._store

    def identity(self) -> Identity:
        """This doorway's identity, made first if it has none (as ``doorway pair`` does). Raises
        StateError."""
        return Identity.load_or_create(self.store())

    def twin(self) -> Twin | None:
        """The paired doorway, or None. Raises StateError."""
        return self.store().twin()

    def unpair(self) -> Twin | None:
        """Forget the twin; return it (None when there was none). Raises StateError."""
        twin = self.store().remove_twin()
        if twin is not None:
            with self._lock:
                # "paired with ..." no longer holds: the page would show it under "Not paired".
                if self._status.state == "paired":
                    self._status = PairingStatus()
            self._event("info", f"unpaired from {twin.name} ({fingerprint_of(twin.public_key)})")
        return twin

    # -- showing a code -------------------------------------------------------------------------------------

    def status(self) -> PairingStatus:
        """The current or last attempt (see :class:`PairingStatus`)."""
        with self._lock:
            return self._status

    def show(self) -> PairingStatus:
        """Show a code: start serving one pairing attempt on the pairing port, or, when a code is shown
        already, return that one. Raises :class:`PairingBusyError` (a join is under way),
        :class:`PairingError` (cannot listen, unusable settings) or StateError."""
        settings = self._settings()
        identity = self.identity()
        with self._lock:
            if self._joining:
                raise PairingBusyError("this doorway is joining another one right now; wait for it to end")
            if self._stop is not None:
                return self._status  # a code is shown already: the same one
            try:
                own = own_record(settings, identity)
            except ValueError as exc:
                raise PairingError(f"cannot pair with these settings: {exc}") from None
            code = new_code()
            cfg = settings.pairing
            server = PairingServer(
                code, own, host=cfg.listen_host, port=cfg.port, ttl_s=cfg.code_ttl_s, on_notice=self._notice
            )
            host, port = shown_host(settings, server.address[0]), server.address[1]
            expires_mono = time.monotonic() + cfg.code_ttl_s
            self._status = PairingStatus(
                state="waiting",
                message=(
                    f"waiting for the other doorway; the code works once, for {duration_text(cfg.code_ttl_s)}"
                ),
                role="show",
                code=format_code(code),
                qr_svg=qr_svg(qr_payload(code, host, port, identity.fingerprint)),
                host=host,
                port=port,
                expires_at=self._clock() + cfg.code_ttl_s,
            )
            stop = self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._serve,
                args=(server, stop, identity, expires_mono),
                name="pairing-show",
                daemon=True,
            )
            self._thread.start()
            shown = self._status
        log.info("pairing: showing a code on port %d", port)
        return shown

    def cancel(self) -> PairingStatus:
        """Withdraw a shown code (the serving thread ends within a fraction of a second)."""
        with self._lock:
            stop, thread = self._stop, self._thread
        if stop is not None:
            stop.set()
        if thread is not None:
            thread.join(2.0)
        return self.status()

    def _serve(
        self, server: PairingServer, stop: threading.Event, identity: Identity, expires: float
    ) -> None:
        """The "pairing-show" thread: serve the one attempt, store the twin, record the outcome."""
        try:
            result = server.serve(stop)
            twin = twin_of(identity, result, self._clock())
            self.store().set_twin(twin)
        except PairingError as exc:
            if stop.is_set():
                self._finish("cancelled", "pairing cancelled; the code is withdrawn", "info")
            elif time.monotonic() >= expires:
                self._finish("expired", str(exc), "info")
            else:
                self._finish("failed", f"pairing failed: {exc}", "warning")
        except StateError as exc:
            self._finish("failed", f"pairing failed: cannot store the pairing: {exc}", "error")
        except Exception:
            log.exception("pairing: the show thread failed")
            self._finish("failed", "pairing failed: an error inside the admin panel (see its log)", "error")
        else:
            self._finish("paired", _paired_text(twin, result.address), "info", twin)
        finally:
            server.close()

    def _finish(self, state: State, message: str, level: str, twin: Twin | None = None) -> None:
        with self._lock:
            self._status = replace(
                self._status,
                state=state,
                message=message,
                code=None,
                qr_svg=None,
                host=None,
                port=None,
                expires_at=None,
                peer_name=twin.name if twin is not None else None,
                peer_fingerprint=fingerprint_of(twin.public_key) if twin is not None else None,
            )
            self._stop = None
        self._event(level, message)

    def _notice(self, line: str) -> None:
        self._event("warning", f"pairing: {line}")

    # -- joining --------------------------------------------------------------------------------------------

    def join(self, code_text: str, address: str) -> Twin:
        """Pair with the doorway showing ``code_text`` at ``address`` (HOST[:PORT], the pairing port by
        default) and store it; blocks the calling thread for at most the client's timeout.

        Raises ValueError (a code with a typo, a bad address: nothing was sent), :class:`PairingBusyError`,
        :class:`PairingError` (the attempt failed; the message is one line) or StateError."""
        code = parse_code(code_text)  # CodeError is a ValueError
        settings = self._settings()
        host, port = parse_address(address.strip(), settings.pairing.port)
        identity = self.identity()
        with self._lock:
            if self._stop is not None:
                raise PairingBusyError("this doorway is showing a pairing code; cancel it first")
            if self._joining:
                raise PairingBusyError("this doorway is already joining another one; wait for it to end")
            self._joining = True
            self._status = PairingStatus(
                state="waiting", message=f"pairing with {where(host, port)}", role="join"
            )
        try:
            try:
                own = own_record(settings, identity)
            except ValueError as exc:
                raise PairingError(f"cannot pair with these settings: {exc}") from None
            result = join_client(code, own, host, port, timeout_s=self._join_timeout_s)
            twin = twin_of(identity, result, self._clock())
            try:
                self.store().set_twin(twin)
            except StateError as exc:
                raise PairingError(f"cannot store the pairing: {exc}") from None
        except PairingError as exc:
            self._finish("failed", f"pairing failed: {exc}", "warning")
            raise
        except BaseException:
            self._finish("failed", "pairing failed: an error inside the admin panel (see its log)", "error")
            raise
        finally:
            with self._lock:
                self._joining = False
        self._finish("paired", _paired_text(twin, result.address), "info", twin)
        return twin

    # -- the end --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel a shown code and close the database (the app's shutdown)."""
        self.cancel()
        with self._lock:
            store, self._store = self._store, None
        if store is not None:
            store.close()

    def _event(self, level: str, message: str) -> None:
        if self._on_event is not None:
            self._on_event(level, message)


def _paired_text(twin: Twin, address: str) -> str:
    return (
        f"paired with {twin.name} ({fingerprint_of(twin.public_key)}) at {address}; "
        f"media goes to {where(twin.media_host, twin.media_port)}"
    )
