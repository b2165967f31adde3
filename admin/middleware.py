"""Pure-ASGI middleware that guards every request before routing: odd paths, big bodies, response headers.

They are plain ASGI callables (not Starlette's ``BaseHTTPMiddleware``) because they must see the raw
request: the undecoded path, and the body as the bytes actually arrive. ``create_app`` stacks them,
outermost first: :class:`SecurityHeaders` (so even its neighbours' refusals carry the headers),
:class:`PathGuard`, :class:`BodyLimit`, then FastAPI's own exception handling and router. Their refusals
are JSON ``{"error": "..."}`` with a 4xx status, decided before any route or file is touched.
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""Everything from the doorway itself and nothing inline (no ``<script>`` bodies, no ``style=``); no page
may be framed. ``data:`` images allow QR codes drawn as data URIs."""

SECURITY_HEADERS: Final = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
)
"""Headers every response gets unless the route set its own value."""

HSTS: Final = "max-age=31536000"
"""Strict-Transport-Security for HTTPS responses: one year, this host only (no subdomains)."""


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response, HSTS on HTTPS, and ``Cache-Control: no-store``
    on everything but static files served (pages and API answers hold the doorway's private state)."""

    def __init__(self, app: ASGIApp, static_prefix: str = "/static/") -> None:
        self.app = app
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"
        static = str(scope.get("path", "")).startswith(self.static_prefix)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    if name not in headers:
                        headers[name] = value
                if https and "strict-transport-security" not in headers:
                    headers["strict-transport-security"] = HSTS
                if not (static and message["status"] < 400) and "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class PathGuard:
    """Refuses request paths that are only ever an attack or a mistake, with 400 and a clear message.

    Checked on the raw path (as sent) and the decoded one: encoded slashes or backslashes (``%2F``,
    ``%5C``, which would let a "single segment" name another directory), NUL and other control characters,
    backslashes, ``.`` and ``..`` segments (in any encoding; uvicorn decodes ``%2e%2e`` to ``..``) and
    empty segments (``//``). Starlette's StaticFiles would refuse most of these itself, but refusing them
    here, once, keeps every route and mount (present and future) out of the argument.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        problem = path_problem(str(scope.get("path", "")), scope.get("raw_path"))
        if problem is not None:
            await _refuse(scope, receive, send, 400, f"bad request path: {problem}")
            return
        await self.app(scope, receive, send)


def path_problem(path: str, raw_path: bytes | None = None) -> str | None:
    """Why ``path`` (decoded) / ``raw_path`` (as sent) must be refused, or None when it is acceptable."""
    raw = (raw_path if raw_path is not None else path.encode("utf-8", "surrogateescape")).lower()
    if b"%2f" in raw or b"%5c" in raw:
        return "encoded slashes (%2F, %5C) are not allowed"
    if b"%00" in raw or "\x00" in path:
        return "NUL bytes are not allowed"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return "control characters are not allowed"
    if "\\" in path:
        return "backslashes are not allowed"
    if not path.startswith("/"):
        return "a path must start with /"
    segments = path.split("/")[1:]
    if any(seg in (".", "..") for seg in segments):
        return "'.' and '..' segments are not allowed"
    if "" in segments[:-1]:
        return "empty segments (//) are not allowed"
    return None


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, counting the bytes that actually arrive.

    A ``Content-Length`` over the limit is refused at once without reading; otherwise the body is read
    into memory (it is small by definition) and counted, so a lying ``Content-Length`` or a chunked body
    cannot get past, and then handed to the app unchanged. Reading it before routing costs at most
    ``max_bytes`` of memory per request, and means no route can ever see a partial body.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        size = f"{self.max_bytes // 1024} KiB" if self.max_bytes % 1024 == 0 else f"{self.max_bytes} bytes"
        return f"request body too large: at most {size} is accepted"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared < 0:
                    await _refuse(scope, receive, send, 400, "bad Content-Length header")
                    return
        if declared is not None and declared > self.max_bytes:
            await _refuse(scope, receive, send, 413, self._too_large())
            return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # The client went away; nobody to answer.
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _refuse(scope, receive, send, 413, self._too_large())
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            # Afterwards the real channel, so streaming responses still see the client disconnect.
            return await receive()

        await self.app(scope, replay, send)
