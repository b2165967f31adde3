"""The ``doorway pair show|join|list|remove`` and ``doorway identity`` commands, behind app/cli.py.

Each function takes the loaded settings and the two output streams and returns the exit status: 0 done,
1 pairing failed (or the state database could not be used), 2 bad arguments. They write text for people
to the streams given (stdout for results, stderr for failures and notices); nothing else here prints.

Storing: a completed pairing replaces the stored twin in one transaction (:meth:`StateStore.set_twin`), so
the engine sees either the old twin or the new one; it notices the change through
:meth:`StateStore.version`. ``pair show`` and ``pair join`` make this doorway's key first if it has none.
"""

from __future__ import annotations

import datetime
import socket
import time
from typing import TextIO

from app.identity import Identity, device_id_of, fingerprint_of
from app.pairing.client import join, parse_address
from app.pairing.code import CodeError, format_code, new_code, parse_code, qr_payload, qr_terminal
from app.pairing.protocol import PairingError, PeerRecord
from app.pairing.server import PairingResult, PairingServer, duration_text
from app.settings import Settings
from app.state import StateError, StateStore, Twin

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _open(settings: Settings, err: TextIO) -> StateStore | None:
    try:
        return StateStore(settings.engine.state_dir)
    except StateError as exc:
        err.write(f"doorway: {exc}\n")
        return None


def own_record(settings: Settings, identity: Identity) -> PeerRecord:
    """What this doorway tells the other when pairing (the admin panel uses it too). Raises ValueError
    when the settings cannot be sent (a name too long for the record)."""
    return PeerRecord(
        public_key=identity.public_bytes,
        name=settings.engine.name,
        media_host=settings.pairing.advertise_host or "",
        media_port=settings.network.listen_port,
    )


def where(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def shown_host(settings: Settings, bound: str) -> str:
    """The address to tell people to type: the advertised host, the bound one, or our primary address
    (the admin panel's pairing page uses it too)."""
    if settings.pairing.advertise_host:
        return settings.pairing.advertise_host
    if bound not in ("0.0.0.0", "::", ""):
        return bound
    # Connecting a UDP socket sends nothing; it only asks the kernel which source address it would use.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            return str(probe.getsockname()[0])
        except OSError:
            return socket.gethostname()


SELF_PAIRING = "the other doorway has this doorway's own key (paired with itself?)"
"""Why a pairing whose other side has our own key is refused."""


def twin_of(identity: Identity, result: PairingResult, now: float) -> Twin:
    """The twin to store for a completed pairing (paired ``now``, Unix seconds); raises
    :class:`PairingError` (:data:`SELF_PAIRING`) when the other side has this doorway's own key."""
    peer = result.peer
    if peer.public_key == identity.public_bytes:
        raise PairingError(SELF_PAIRING)
    return Twin(
        device_id=device_id_of(peer.public_key),
        name=peer.name,
        public_key=peer.public_key,
        media_host=result.media_host,
        media_port=peer.media_port,
        paired_at=now,
    )


def _store_twin(store: StateStore, identity: Identity, result: PairingResult, err: TextIO) -> int:
    try:
        twin = twin_of(identity, result, time.time())
    except PairingError as exc:
        err.write(f"pairing failed: {exc}\n")
        return EXIT_FAILED
    try:
        store.set_twin(twin)
    except StateError as exc:
        err.write(f"pairing failed: cannot store the pairing: {exc}\n")
        return EXIT_FAILED
    return EXIT_OK


def _paired_line(result: PairingResult) -> str:
    peer = result.peer
    return (
        f"paired with {peer.name} ({fingerprint_of(peer.public_key)})\n"
        f"media goes to {where(result.media_host, peer.media_port)}\n"
    )


def pair_show(settings: Settings, out: TextIO, err: TextIO, *, qr: bool = True) -> int:
    """Show a code, serve one pairing attempt, store the twin. Blocks until done, failed or expired."""
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        try:
            identity = Identity.load_or_create(store)
            old = store.twin()
        except StateError as exc:
            err.write(f"doorway: {exc}\n")
            return EXIT_FAILED
        try:
            own = own_record(settings, identity)
        except ValueError as exc:
            err.write(f"doorway: cannot pair with these settings: {exc}\n")
            return EXIT_USAGE
        code = new_code()
        cfg = settings.pairing
        try:
            server = PairingServer(
                code,
                own,
                host=cfg.listen_host,
                port=cfg.port,
                ttl_s=cfg.code_ttl_s,
                on_notice=lambda line: err.write(f"doorway: {line}\n"),
            )
        except PairingError as exc:
            err.write(f"pairing failed: {exc}\n")
            return EXIT_FAILED
        host = shown_host(settings, server.address[0])
        port = server.address[1]
        shown = format_code(code)
        out.write(f"This doorway: {settings.engine.name} ({identity.fingerprint})\n")
        if old is not None:
            out.write(
                f"It is paired with {old.name} ({fingerprint_of(old.public_key)}); pairing replaces that.\n"
            )
        out.write(f"\nPairing code: {shown}   (one attempt; valid for {duration_text(cfg.code_ttl_s)})\n\n")
        if qr:
            out.write(qr_terminal(qr_payload(code, host, port, identity.fingerprint)))
            out.write("\n")
        out.write(f"On the other doorway, run:\n    doorway pair join {shown} {where(host, port)}\n\n")
        out.write("Waiting for the other doorway (Ctrl-C to cancel)...\n")
        out.flush()
        try:
            result = server.serve()
        except PairingError as exc:
            err.write(f"pairing failed: {exc}\n")
            return EXIT_FAILED
        except KeyboardInterrupt:
            server.close()  # serve() closes on the way out too; this is for an interrupt before its try
            err.write("pairing cancelled; the code is withdrawn\n")
            return EXIT_FAILED
        status = _store_twin(store, identity, result, err)
        if status == EXIT_OK:
            out.write(_paired_line(result))
        return status


def pair_join(settings: Settings, code_text: str, address: str, out: TextIO, err: TextIO) -> int:
    """Pair with the doorway showing ``code_text`` at ``address`` (HOST[:PORT]) and store it."""
    try:
        code = parse_code(code_text)
        host, port = parse_address(address, settings.pairing.port)
    except (CodeError, ValueError) as exc:
        err.write(f"doorway: {exc}\n")
        return EXIT_USAGE
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        try:
            identity = Identity.load_or_create(store)
        except StateError as exc:
            err.write(f"doorway: {exc}\n")
            return EXIT_FAILED
        try:
            own = own_record(settings, identity)
        except ValueError as exc:
            err.write(f"doorway: cannot pair with these settings: {exc}\n")
            return EXIT_USAGE
        out.write(f"Pairing with {where(host, port)}...\n")
        out.flush()
        try:
            result = join(code, own, host, port)
        except PairingError as exc:
            err.write(f"pairing failed: {exc}\n")
            return EXIT_FAILED
        except KeyboardInterrupt:
            err.write("pairing cancelled\n")
            return EXIT_FAILED
        status = _store_twin(store, identity, result, err)
        if status == EXIT_OK:
            out.write(_paired_line(result))
        return status


def _describe_twin(twin: Twin) -> str:
    paired = datetime.datetime.fromtimestamp(twin.paired_at, tz=datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"twin:        {twin.name}\n"
        f"device id:   {twin.device_id}\n"
        f"fingerprint: {fingerprint_of(twin.public_key)}\n"
        f"media:       {where(twin.media_host, twin.media_port)}\n"
        f"paired:      {paired}\n"
    )


def pair_list(settings: Settings, out: TextIO, err: TextIO) -> int:
    """Print the twin, or "not paired"."""
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        try:
            twin = store.twin()
        except StateError as exc:
            err.write(f"doorway: {exc}\n")
            return EXIT_FAILED
    out.write(_describe_twin(twin) if twin is not None else "not paired\n")
    return EXIT_OK


def pair_remove(settings: Settings, out: TextIO, err: TextIO) -> int:
    """Forget the twin and say which one it was."""
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        try:
            twin = store.remove_twin()
        except StateError as exc:
            err.write(f"doorway: {exc}\n")
            return EXIT_FAILED
    if twin is None:
        out.write("not paired; nothing to remove\n")
    else:
        out.write(f"removed the pairing with {twin.name} ({fingerprint_of(twin.public_key)})\n")
    return EXIT_OK


def show_identity(settings: Settings, out: TextIO, err: TextIO) -> int:
    """Print this doorway's name, device id and fingerprint (making its key first if it has none)."""
    store = _open(settings, err)
    if store is None:
        return EXIT_FAILED
    with store:
        try:
            identity = Identity.load_or_create(store)
        except StateError as exc:
            err.write(f"doorway: {exc}\n")
            return EXIT_FAILED
    out.write(
        f"name:        {settings.engine.name}\n"
        f"device id:   {identity.device_id}\n"
        f"fingerprint: {identity.fingerprint}\n"
    )
    return EXIT_OK
