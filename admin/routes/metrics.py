"""``GET /metrics``: the latest sample as Prometheus text, for a logged-in owner or an allowed scraper.

A Prometheus server cannot log in, so this route sits in a public router and decides by itself: it answers
a request with a session, or from a client whose address lies in ``admin.metrics_allow`` (CIDR networks;
empty by default: nobody); anyone else gets 403 saying how to be allowed. The client's address is the
connection's own (no proxy sits in front of the panel; ``X-Forwarded-For`` is never believed). The text is
:func:`admin.prometheus.render` of the collector's latest sample: nothing is asked of the engine or the
bridge per scrape.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Response

from admin import prometheus
from admin.deps import ClientAddress, Ctx, MaybeSession
from admin.security import Session
from app.settings import Settings

public = APIRouter(tags=["metrics"])


def may_scrape(session: Session | None, client: str, settings: Settings) -> bool:
    """Whether a request may read the metrics: it has a session, or ``client`` (an IP address as the
    server saw it) is in ``admin.metrics_allow``."""
    return session is not None or prometheus.allowed(client, settings.admin.metrics_allow)


@public.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format 0.0.4", "content": {"text/plain": {}}},
        403: {"description": "no session, and the client is not in admin.metrics_allow"},
    },
)
def metrics(ctx: Ctx, session: MaybeSession, client: ClientAddress) -> Response:
    """The doorway's measurements in the Prometheus text format. Needs a session, or a client address in
    ``admin.metrics_allow``."""
    if not may_scrape(session, client, ctx.settings):
        raise HTTPException(
            403,
            f"not allowed: log in, or add this client's network ({client[:64]}) to admin.metrics_allow "
            "in the settings file",
        )
    return Response(prometheus.render(ctx.feed.latest()), media_type=prometheus.CONTENT_TYPE)
