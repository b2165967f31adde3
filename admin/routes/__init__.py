"""The admin panel's routers, one module per area (FastAPI's own layout).

:func:`admin.app.create_app` includes the routers listed here, and nothing else:

- :data:`PUBLIC`: reachable without a session (login, set-up, health probe); CSRF-checked.
- :data:`PROTECTED`: everything else, included behind ``require_session`` and ``csrf_protect``
  (:mod:`admin.deps`). A new area adds its module and lists its routers in ``PROTECTED``.

HTML pages are routers with ``include_in_schema=False``; JSON routers use ``prefix="/api/..."``, so the
OpenAPI document describes exactly the JSON API.
"""

from __future__ import annotations

from fastapi import APIRouter

from admin.routes import auth, pages, system

PUBLIC: tuple[APIRouter, ...] = (auth.public_pages, auth.public_api, system.public)
"""Routers that need no session. Keep this list short; the tests name every route allowed here."""

PROTECTED: tuple[APIRouter, ...] = (auth.pages, auth.api, system.api, pages.router)
"""Routers behind a session and CSRF check."""
