"""The admin certificate (made once, reused, named right), the HTTP→HTTPS redirect, the server, the CLI."""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
from pathlib import Path

import httpx2
import pytest
from cryptography import x509

from admin import tls
from admin.server import AdminServer, RedirectServer, https_url
from app.cli import main
from app.settings import Settings

FINGERPRINT = re.compile(r"^(?:[0-9A-F]{2}:){31}[0-9A-F]{2}$")


def test_certificate_is_made_once_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    files = tls.ensure_certificate(state, hostname="hall", addresses=[ipaddress.ip_address("192.168.1.20")])
    first = files.cert.read_bytes()
    fp = tls.fingerprint(files.cert)
    assert FINGERPRINT.match(fp)
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert state.stat().st_mode & 0o777 == 0o700
    again = tls.ensure_certificate(state, hostname="other")
    assert again == files and files.cert.read_bytes() == first and tls.fingerprint(files.cert) == fp


def test_certificate_names_and_validity(tmp_path: Path) -> None:
    files = tls.ensure_certificate(
        tmp_path,
        hostname="Hall",
        addresses=[ipaddress.ip_address("192.168.1.20"), ipaddress.ip_address("fe80::1")],
    )
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = san.get_values_for_type(x509.DNSName)
    assert names == ["hall", "hall.local", "doorway.local", "localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.168.1.20", "fe80::1"]
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 3650 <= days <= 3652
    assert cert.signature_hash_algorithm is not None and cert.signature_hash_algorithm.name == "sha256"
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]


def test_default_names_include_this_machine(tmp_path: Path) -> None:
    files = tls.ensure_certificate(tmp_path)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "doorway.local" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)


def test_fingerprint_is_sha256_of_the_der_certificate(tmp_path: Path) -> None:
    files = tls.ensure_certificate(tmp_path, hostname="hall", addresses=[])
    der = ssl.PEM_cert_to_DER_cert(files.cert.read_text())
    expected = hashlib.sha256(der).hexdigest().upper()
    assert tls.fingerprint(files.cert).replace(":", "") == expected


def test_a_key_that_does_not_match_is_an_error_not_a_new_certificate(tmp_path: Path) -> None:
    files = tls.ensure_certificate(tmp_path, hostname="a", addresses=[])
    _, other_key = tls.make_certificate(["b"], [])
    files.key.write_bytes(other_key)
    with pytest.raises(tls.TlsError, match="does not belong"):
        tls.ensure_certificate(tmp_path)
    files.cert.write_text("garbage")
    with pytest.raises(tls.TlsError, match="cannot read the admin certificate"):
        tls.ensure_certificate(tmp_path)


def test_a_key_without_certificate_is_made_again(tmp_path: Path) -> None:
    files = tls.ensure_certificate(tmp_path, hostname="a", addresses=[])
    files.cert.unlink()
    again = tls.ensure_certificate(tmp_path, hostname="a", addresses=[])
    assert again.cert.exists() and FINGERPRINT.match(tls.fingerprint(again.cert))


# -- the plain-HTTP redirect ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "target", "port", "expected"),
    [
        ("doorway.local", "/x?y=1", 443, "https://doorway.local/x?y=1"),
        ("doorway.local:80", "/", 8443, "https://doorway.local:8443/"),
        ("192.168.1.20", "/login", 443, "https://192.168.1.20/login"),
        ("[fe80::1]:80", "/", 443, "https://[fe80::1]/"),
        (None, "/a", 443, "https://10.0.0.5/a"),
        ("evil.example\r\nSet-Cookie: x=1", "/", 443, "https://10.0.0.5/"),
        ("doorway.local", "http://elsewhere/p?q", 443, "https://doorway.local/p?q"),
        ("doorway.local", "*", 443, "https://doorway.local/"),
    ],
)
def test_https_url(host: str | None, target: str, port: int, expected: str) -> None:
    assert https_url(host, target, port, "10.0.0.5") == expected


def test_redirect_server_answers_301_to_https() -> None:
    server = RedirectServer("127.0.0.1", 0, https_port=8443)
    server.start()
    try:
        for method in ("GET", "POST", "HEAD", "DELETE"):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            conn.request(method, "/status?x=1", headers={"Host": "doorway.local"}, body=b"ignored")
            r = conn.getresponse()
            assert r.status == 301, method
            assert r.getheader("Location") == "https://doorway.local:8443/status?x=1"
            assert r.read() == b""
            conn.close()
        # Without a usable Host, the address the client reached is used.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /p HTTP/1.0\r\n\r\n")
            reply = s.makefile("rb").read().decode()
        assert reply.startswith("HTTP/1.1 301") and "Location: https://127.0.0.1:8443/p\r\n" in reply
    finally:
        server.close()


# -- the server end to end --------------------------------------------------------------------------------


def test_admin_server_serves_https_with_its_certificate(settings: Settings) -> None:
    server = AdminServer(settings, https_port=0, http_port=0)
    thread = threading.Thread(target=server.run, name="admin-test", daemon=True)
    thread.start()
    try:
        ctx = ssl.create_default_context(cafile=str(server.files.cert))
        ctx.check_hostname = False  # The certificate names doorway.local and this host, not 127.0.0.1 only.
        url = f"https://127.0.0.1:{server.https_port}/healthz"
        for _ in range(100):
            try:
                r = httpx2.get(url, verify=ctx, timeout=5)
                break
            except httpx2.ConnectError:
                threading.Event().wait(0.05)
        else:
            raise AssertionError("the admin server did not start")
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert r.headers["strict-transport-security"].startswith("max-age=")
        assert "server" not in r.headers
        with (
            socket.create_connection(("127.0.0.1", server.https_port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="doorway.local") as tls_sock,
        ):
            der = tls_sock.getpeercert(binary_form=True)
        assert der is not None
        assert hashlib.sha256(der).hexdigest().upper() == server.fingerprint.replace(":", "")
    finally:
        server.stop()
        thread.join(timeout=10)
    assert not thread.is_alive()


# -- the command line -------------------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "doorway.toml"
    config.write_text(f'[engine]\nstate_dir = "{tmp_path / "state"}"\n')
    return config


def test_cli_fingerprint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    assert main(["admin", "fingerprint", "--config", str(config)]) == 0
    first = capsys.readouterr().out.strip()
    assert FINGERPRINT.match(first)
    assert main(["admin", "--config", str(config), "fingerprint"]) == 0
    assert capsys.readouterr().out.strip() == first
    assert first == tls.fingerprint(tmp_path / "state" / tls.CERT_NAME)


def test_cli_setup_code_only_before_setup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from admin.security import Passwords, parse_setup_code
    from admin.store import AdminStore

    config = write_config(tmp_path)
    assert main(["admin", "setup-code", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    m = re.search(r"Setup code: (\d{4}-\d{4}-\d{4}-\d{4})", out)
    assert m and "24 hours" in out
    code = parse_setup_code(m.group(1))
    with AdminStore(tmp_path / "state") as store:
        stored = store.setup_code()
        assert stored is not None and Passwords().verify(stored.code_hash, code)
        store.create_owner("owner", "$argon2id$placeholder", stored.code_hash, 0.0)
    assert main(["admin", "setup-code", "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "set-up is closed" in captured.err


def test_cli_parses_serve_as_the_default() -> None:
    from app.cli import build_parser

    args = build_parser().parse_args(["admin"])
    assert args.admin == "serve" and args.config is None
    args = build_parser().parse_args(["admin", "serve", "--config", "/x.toml", "--log-level", "debug"])
    assert args.admin == "serve" and str(args.config) == "/x.toml" and args.log_level == "debug"
