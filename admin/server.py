"""The ``doorway admin`` process: the app on HTTPS under uvicorn, and a plain-HTTP port that only redirects.

Theory of operation
-------------------
One process, two listeners. The main thread runs uvicorn (asyncio) serving :func:`admin.app.create_app`
over TLS on ``admin.https_port`` with the certificate from :mod:`admin.tls`. A daemon thread runs
:class:`RedirectServer`, a standard-library HTTP server on ``admin.http_port`` (0: none) that answers
every request, whatever its method, with ``301`` to the same host and path on HTTPS; it reads no body
and serves nothing else, so it has nothing to leak.

Both sockets are bound here, before anything else starts, so a busy or privileged port is one clear
error line and exit status 1 (systemd restarts us) rather than a traceback. Ports below 1024 need
``CAP_NET_BIND_SERVICE``, which the unit grants (``AmbientCapabilities=``).

Stopping: SIGTERM or SIGINT asks uvicorn to finish: it stops accepting, lets requests in flight complete,
runs the app's lifespan shutdown (closing the database), and returns; then the redirect server is shut
down and :meth:`AdminServer.run` returns 0. uvicorn captures the signals itself while it runs and then
re-raises them against the handlers installed before it; ours only set the stop flag again, so the
process ends through the normal path.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import logging
import re
import signal
import socket
import threading
from pathlib import Path
from typing import Any, Final

import uvicorn

from admin import tls
from admin.app import create_app
from app.settings import DEFAULT_CONFIG_PATH, Settings

log = logging.getLogger(__name__)

REDIRECT_MAX_CLIENTS: Final = 32
"""Most connections the redirect server serves at once; more are closed at once."""
REDIRECT_TIMEOUT_S: Final = 10.0
"""How long the redirect server waits for a request line and headers, in seconds."""
GRACEFUL_STOP_S: Final = 5
"""How long a stop waits for requests in flight before cancelling them, in seconds. Live views (server-sent
event streams) never finish by themselves; without a limit they would hold the process until systemd
kills it."""

_HOST_RE: Final = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9.-]{1,253}))(?::\d{1,5})?$")


def https_url(host_header: str | None, target: str, https_port: int, fallback_host: str) -> str:
    """The HTTPS URL for a plain-HTTP request: same host (from ``Host``, else ``fallback_host``), the HTTPS
    port (left out when 443) and the same path and query."""
    host = fallback_host
    if host_header:
        m = _HOST_RE.match(host_header.strip())
        if m is not None:
            host = f"[{m['v6']}]" if m["v6"] else str(m["name"])
    elif ":" in fallback_host and not fallback_host.startswith("["):
        host = f"[{fallback_host}]"
    if target.startswith(("http://", "https://")):
        # Absolute-form request target (proxies): keep only its path and query.
        rest = target.split("://", 1)[1]
        target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    if not target.startswith("/") or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in target):
        target = "/"
    port = "" if https_port == 443 else f":{https_port}"
    return f"https://{host}{port}{target[:2048]}"


class _RedirectHandler(http.server.BaseHTTPRequestHandler):
    server: RedirectServer
    timeout = REDIRECT_TIMEOUT_S
    protocol_version = "HTTP/1.1"

    def version_string(self) -> str:
        return "doorway"  # No Python or library versions for strangers.

    def _redirect(self) -> None:
        local = self.connection.getsockname()[0]
        location = https_url(self.headers.get("Host"), self.path, self.server.https_port, str(local))
        self.send_response(301)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    # http.server dispatches on these names; every method gets the same answer.
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _redirect  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("redirect: %s %s", self.address_string(), format % args)


class RedirectServer(http.server.ThreadingHTTPServer):
    """Answers every plain-HTTP request with 301 to HTTPS on ``https_port``; :meth:`start`, :meth:`close`.

    ``port`` 0 picks a free port (tests); :attr:`port` is the one bound.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, https_port: int) -> None:
        self.https_port = https_port
        self.address_family = _family(host)
        self._slots = threading.BoundedSemaphore(REDIRECT_MAX_CLIENTS)
        super().__init__((host, port), _RedirectHandler)
        self._thread = threading.Thread(target=self.serve_forever, name="admin-redirect", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        # A bounded number of handler threads: beyond it, close the connection at once.
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def start(self) -> None:
        self._thread.start()
        log.info("plain HTTP on port %d redirects to HTTPS port %d", self.port, self.https_port)

    def close(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()


def _family(host: str) -> socket.AddressFamily:
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            return socket.AF_INET6
    return socket.AF_INET


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port). Raises OSError."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


class AdminServer:
    """The admin process: HTTPS app plus the redirect port. ``run()`` on the main thread; ``stop()`` from
    anywhere (or SIGTERM/SIGINT).

    ``config_path`` is the settings file the settings page edits. ``https_port``/``http_port`` override
    the settings (tests: ``https_port=0`` for a free port, ``http_port=0`` for no redirect server).
    """

    def __init__(
        self,
        settings: Settings,
        config_path: Path = DEFAULT_CONFIG_PATH,
        *,
        https_port: int | None = None,
        http_port: int | None = None,
    ) -> None:
        self.settings = settings
        a = settings.admin
        self.files = tls.ensure_certificate(settings.engine.state_dir)
        self.fingerprint = tls.fingerprint(self.files.cert)
        self.https_sock = listen(a.listen_host, a.https_port if https_port is None else https_port)
        self.https_port = int(self.https_sock.getsockname()[1])
        self.redirect: RedirectServer | None = None
        port80 = a.http_port if http_port is None else http_port
        try:
            if port80:
                self.redirect = RedirectServer(a.listen_host, port80, self.https_port)
        except BaseException:
            self.https_sock.close()
            raise
        config = uvicorn.Config(
            create_app(settings, config_path=config_path),
            ssl_certfile=str(self.files.cert),
            ssl_keyfile=str(self.files.key),
            log_config=None,  # Our logging (app.logs) is already set up; uvicorn's records propagate to it.
            access_log=False,
            server_header=False,
            proxy_headers=False,  # Nothing sits in front of us: never believe X-Forwarded-For.
            timeout_keep_alive=5,
            limit_concurrency=64,
            h11_max_incomplete_event_size=16 * 1024,
            lifespan="on",
            timeout_graceful_shutdown=GRACEFUL_STOP_S,
        )
        self.server = uvicorn.Server(config)

    def stop(self) -> None:
        """Ask the server to finish (any thread)."""
        self.server.should_exit = True

    def run(self) -> int:
        """Serve until stopped; return the exit status (0 after a clean stop)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):  # Not the main thread (tests): stop() is the way.
                signal.signal(sig, lambda *_: self.stop())
        log.info(
            "admin panel on https://%s:%d/ (certificate SHA-256 %s)",
            self.settings.admin.listen_host,
            self.https_port,
            self.fingerprint,
        )
        if self.redirect is not None:
            self.redirect.start()
        try:
            self.server.run(sockets=[self.https_sock])
        finally:
            if self.redirect is not None:
                self.redirect.close()
            self.https_sock.close()
        return 0 if self.server.started else 1


def serve(settings: Settings, config_path: Path = DEFAULT_CONFIG_PATH) -> int:
    """Run the admin process (``doorway admin serve``) until SIGTERM; return the exit status."""
    try:
        server = AdminServer(settings, config_path)
    except tls.TlsError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except OSError as exc:
        log.error(
            "cannot start: cannot listen on %s (ports %d and %d): %s",
            settings.admin.listen_host,
            settings.admin.https_port,
            settings.admin.http_port,
            exc.strerror or exc,
        )
        return 1
    return server.run()
