"""The engine's local control socket: newline-delimited JSON over a Unix stream socket.

Other processes (the demo, the benchmark, later the admin panel and the hardware bridge) ask the engine for
status and statistics and change a few things at run time through it. The API is documented in
``app/CONTROL.md``. One request per line, one response line per request; a response is always an object
with ``"ok"``. The server is defensive: lines longer than 64 KiB, bad JSON, unknown commands and bad
arguments get an error response, never a crash, and the number of simultaneous clients is capped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
MAX_CLIENTS = 8


class Stream:
    """What a handler returns to answer with a stream: the first response's fields, then one line per item
    ``events`` yields (a subscription), until it ends or the client goes away; :meth:`close` runs then.
    The connection serves nothing else afterwards."""

    def __init__(
        self, first: dict[str, Any], events: Iterator[dict[str, Any]], close: Callable[[], None] | None = None
    ) -> None:
        self.first = first
        self.events = events
        self._close = close

    def close(self) -> None:
        if self._close is not None:
            self._close()


Handler = Callable[[dict[str, Any]], "dict[str, Any] | Stream"]
"""Takes the request's arguments, returns the response fields (or a :class:`Stream`). Raises CommandError for
bad arguments."""


class CommandError(Exception):
    """A request the engine understood but refuses; its message goes back to the client."""


class ControlClientError(Exception):
    """The control socket could not be reached or answered badly."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, path: str, commands: Mapping[str, Handler]) -> None:
        self.commands = commands
        self.clients = threading.BoundedSemaphore(MAX_CLIENTS)
        super().__init__(path, _RequestHandler)


class _RequestHandler(socketserver.StreamRequestHandler):
    server: _Server
    timeout = 300.0

    def handle(self) -> None:
        if not self.server.clients.acquire(blocking=False):
            self._send({"ok": False, "error": "too many clients"})
            return
        try:
            while True:
                line = self.rfile.readline(MAX_LINE + 1)
                if not line:
                    return
                if len(line) > MAX_LINE:
                    self._send({"ok": False, "error": f"request longer than {MAX_LINE} bytes"})
                    return
                if line.strip():
                    response = dispatch(self.server.commands, line)
                    if isinstance(response, Stream):
                        self._stream(response)
                        return
                    self._send(response)
        except (OSError, TimeoutError):
            return
        finally:
            self.server.clients.release()

    def _stream(self, stream: Stream) -> None:
        try:
            self._send({"ok": True, **stream.first})
            for item in stream.events:
                self._send(item)
        finally:
            stream.close()

    def _send(self, obj: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")
        self.wfile.flush()


def dispatch(commands: Mapping[str, Handler], line: bytes) -> dict[str, Any] | Stream:
    """Run one request line against ``commands``; always returns a response object (or a stream)."""
    try:
        req = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return {"ok": False, "error": f"bad JSON: {exc}"}
    if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
        return {"ok": False, "error": 'request must be an object with a string "cmd"'}
    cmd = req.pop("cmd")
    handler = commands.get(cmd)
    if handler is None:
        return {"ok": False, "error": f"unknown command {cmd!r}; known: {', '.join(sorted(commands))}"}
    try:
        result = handler(req)
        return result if isinstance(result, Stream) else {"ok": True, **result}
    except CommandError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception:
        log.exception("control: command %r failed", cmd)
        return {"ok": False, "error": f"command {cmd!r} failed inside the engine (see its log)"}


class ControlServer:
    """Serves ``commands`` on a Unix socket at ``path`` on its own threads until ``close``."""

    def __init__(self, path: Path, commands: Mapping[str, Handler]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # A socket file left by a crashed engine would make bind fail; only remove it if nobody answers.
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()
            else:
                raise OSError(f"control socket {path} is in use by another engine")
            finally:
                probe.close()
        self._server = _Server(str(path), commands)
        os.chmod(path, 0o660)
        self._thread = threading.Thread(target=self._server.serve_forever, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("control socket listening on %s", self.path)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def request(path: Path, cmd: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
    """Send one command and return the response object (client side, any thread)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > 16 * MAX_LINE:
                raise ControlClientError(f"{path}: response too long")
    except OSError as exc:
        raise ControlClientError(f"cannot talk to the engine at {path}: {exc}") from exc
    finally:
        sock.close()
    try:
        resp = json.loads(buf)
    except json.JSONDecodeError as exc:
        raise ControlClientError(f"{path}: bad response: {exc}") from exc
    if not isinstance(resp, dict):
        raise ControlClientError(f"{path}: bad response: not an object")
    return resp
