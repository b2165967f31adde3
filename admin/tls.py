"""The admin panel's own TLS certificate: self-signed, made once, kept in the state directory.

A doorway on a home LAN has no public name a CA could vouch for, so it signs its own certificate and the
owner checks its fingerprint once (``doorway admin fingerprint`` prints it; the browser shows the same
colon-separated SHA-256 in its certificate viewer) and accepts it.

Theory of operation
-------------------
:func:`ensure_certificate` makes the key and certificate on first start (or at provisioning) and reuses
them forever after, so the fingerprint the owner accepted stays valid: ECDSA P-256 (fast on a small CPU,
every browser accepts it), valid from a day ago (clock skew) for ten years, subject and SAN naming the
host name, ``<hostname>.local`` (mDNS), ``doorway.local``, ``localhost`` and the addresses found cheaply at
that moment (:func:`local_addresses`: the host name's addresses and the source address of the default
route, no network traffic). Addresses a DHCP server hands out later are not in it; browsers warn about a
self-signed certificate anyway, and the fingerprint is what identifies the doorway.

Files: ``admin-key.pem`` (PKCS#8, unencrypted, mode 0600) and ``admin-cert.pem`` (0644; the directory
itself is 0700). Each is written to a temporary file, fsynced and renamed into place, key first, so a
crash leaves either nothing, a key without a certificate (both are made again), or both. A certificate or
key that exists but cannot be read, or that do not belong together, is an error rather than silently
replaced: a new certificate means a new fingerprint, which the owner must be told about. Run as root, the
files are handed to the state directory's owner (the ``doorway`` service user), as :mod:`admin.store` does.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CERT_NAME: Final = "admin-cert.pem"
"""File name of the certificate in the state directory."""
KEY_NAME: Final = "admin-key.pem"
"""File name of the private key in the state directory."""
VALIDITY_DAYS: Final = 3650
"""How long a new certificate is valid, in days (ten years)."""
DEFAULT_NAMES: Final = ("doorway.local", "localhost")
"""DNS names every certificate carries besides the host's own."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TlsError(Exception):
    """The certificate or key cannot be made, read or used. The message names the file, ready to print."""


@dataclass(frozen=True)
class CertificateFiles:
    """Where the admin panel's certificate and key are."""

    cert: Path
    key: Path


def certificate_files(state_dir: Path) -> CertificateFiles:
    """The certificate and key paths in ``state_dir`` (they may not exist yet)."""
    return CertificateFiles(cert=Path(state_dir) / CERT_NAME, key=Path(state_dir) / KEY_NAME)


def local_addresses() -> list[IPAddress]:
    """This machine's addresses that are cheap to find: loopback, the host name's, the default route's."""
    found: list[IPAddress] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    with contextlib.suppress(OSError, UnicodeError):
        for info in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM):
            found.append(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
    # Connecting a UDP socket sends nothing; it asks the kernel which source address it would use.
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            found.append(ipaddress.ip_address(str(s.getsockname()[0]).split("%")[0]))
    unique: list[IPAddress] = []
    for addr in found:
        if addr not in unique and not addr.is_unspecified:
            unique.append(addr)
    return unique


def host_names(hostname: str | None = None) -> list[str]:
    """DNS names for the certificate: the host name, ``<host>.local``, ``doorway.local``, ``localhost``."""
    host = (hostname if hostname is not None else socket.gethostname()).strip().rstrip(".").lower()
    names: list[str] = []
    if host and all(part and len(part) <= 63 for part in host.split(".")) and len(host) <= 253:
        names.append(host)
        if "." not in host:
            names.append(f"{host}.local")
    for name in DEFAULT_NAMES:
        if name not in names:
            names.append(name)
    return names


def make_certificate(
    names: Iterable[str], addresses: Iterable[IPAddress], now: datetime.datetime | None = None
) -> tuple[bytes, bytes]:
    """A new self-signed certificate for ``names`` and ``addresses``: (certificate PEM, key PEM)."""
    names = list(names)
    if not names:
        raise ValueError("a certificate needs at least one name")
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Doorway"),
        ]
    )
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(a) for a in addresses]
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # os.open's mode is masked by the umask.
    os.replace(tmp, path)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hand_over(state_dir: Path, files: CertificateFiles) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    st = state_dir.stat()
    if st.st_uid != 0:
        for p in (files.cert, files.key):
            os.chown(p, st.st_uid, st.st_gid)


def load_certificate(path: Path) -> x509.Certificate:
    """The certificate in the PEM file ``path``; raises :class:`TlsError`."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"{path}: cannot read the admin certificate: {exc}") from None


def ensure_certificate(
    state_dir: Path, *, hostname: str | None = None, addresses: Iterable[IPAddress] | None = None
) -> CertificateFiles:
    """The admin panel's certificate and key in ``state_dir``, made now if there are none.

    ``hostname`` and ``addresses`` default to this machine's (:func:`host_names`,
    :func:`local_addresses`); they only matter when a certificate is made. Raises :class:`TlsError`.
    """
    state_dir = Path(state_dir)
    files = certificate_files(state_dir)
    if files.cert.exists() and files.key.exists():
        _check_pair(files)
        return files
    try:
        if not state_dir.exists():
            state_dir.mkdir(mode=0o700, parents=True)
            os.chmod(state_dir, 0o700)
        names = host_names(hostname)
        addrs = list(addresses) if addresses is not None else local_addresses()
        cert_pem, key_pem = make_certificate(names, addrs)
        _write(files.key, key_pem, 0o600)
        _write(files.cert, cert_pem, 0o644)
        _sync_dir(state_dir)
        _hand_over(state_dir, files)
    except OSError as exc:
        raise TlsError(f"{files.cert}: cannot make the admin certificate: {exc.strerror or exc}") from None
    log.info(
        "made the admin panel's certificate for %s (SHA-256 %s)",
        ", ".join(names + [str(a) for a in addrs]),
        fingerprint(files.cert),
    )
    return files


def _check_pair(files: CertificateFiles) -> None:
    cert = load_certificate(files.cert)
    try:
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise TlsError(f"{files.key}: cannot read the admin certificate's key: {exc}") from None
    der = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, der) != cert.public_key().public_bytes(
        serialization.Encoding.DER, der
    ):
        raise TlsError(
            f"{files.key} does not belong to {files.cert}; delete both to make a new certificate "
            "(its fingerprint will change)"
        )


def fingerprint_of(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as browsers show it: 32 upper-case hex pairs joined by colons."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def fingerprint(cert_path: Path) -> str:
    """The fingerprint (:func:`fingerprint_of`) of the certificate in ``cert_path``; raises TlsError."""
    return fingerprint_of(load_certificate(cert_path))
