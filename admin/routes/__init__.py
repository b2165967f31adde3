"""The admin panel's routers, one module per area (FastAPI's own layout).

:func:`admin.app.create_app` includes the routers listed here, and nothing else:

- :data:`PUBLIC`: reachable without a session (login, set-up, health probe, and ``/metrics``, which
  checks by itself: a session or an allowed scraper address); CSRF-checked.
- :data:`PROTECTED`: everything else, included behind ``require_session`` and ``csrf_protect``
  (:mod:`admin.deps`). A new area adds its module and lists its routers in ``PROTECTED``.

Each area has a ``pages`` router of HTML pages (``include_in_schema=False``) and an ``api`` router under
``/api/...``, so the OpenAPI document describes exactly the JSON API:

========================  ==============================================================================
module                    pages / API
========================  ==============================================================================
:mod:`.overview`          ``/`` · ``/api/live``, ``/api/live/stream`` (server-sent events), ``/api/history``
:mod:`.pairing`           ``/pairing`` · ``/api/pairing`` (show, cancel, join, unpair, status)
:mod:`.lighting`          ``/lighting`` · ``/api/lighting`` (light, scene)
:mod:`.calibration`       ``/calibration`` · ``/api/calibration`` (results, run, cancel)
:mod:`.settings`          ``/settings`` · ``/api/settings`` (GET, PUT)
:mod:`.logs`              ``/logs`` · ``/api/logs``
:mod:`.diagnostics`       ``/diagnostics`` · ``/api/diagnostics`` (the zip)
:mod:`.metrics`           ``/metrics`` (public router, checks by itself)
:mod:`.auth`              ``/login``, ``/setup``, ``/logout``, ``/password`` · ``/api/auth/...``
:mod:`.system`            ``/healthz`` · ``/api/status``, ``/api/openapi.json``
========================  ==============================================================================
"""

from __future__ import annotations

from fastapi import APIRouter

from admin.routes import (
    auth,
    calibration,
    diagnostics,
    lighting,
    logs,
    metrics,
    overview,
    pairing,
    settings,
    system,
)

PUBLIC: tuple[APIRouter, ...] = (auth.public_pages, auth.public_api, system.public, metrics.public)
"""Routers that need no session. Keep this list short; the tests name every route allowed here."""

PROTECTED: tuple[APIRouter, ...] = (
    auth.pages,
    auth.api,
    system.api,
    overview.pages,
    overview.api,
    pairing.pages,
    pairing.api,
    lighting.pages,
    lighting.api,
    calibration.pages,
    calibration.api,
    settings.pages,
    settings.api,
    logs.pages,
    logs.api,
    diagnostics.pages,
    diagnostics.api,
)
"""Routers behind a session and CSRF check."""
