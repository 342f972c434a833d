"""``GET /api/site``: the site power guard (docs/site-power.md).

``{"maxCurrentA", "mode", "engaged", "allocatedA", "measuredA", "chargers": [{"id", "maxA",
"capA", "drawA", "transactions", "managed"}]}``: numbers in amperes; ``capA`` the cap the
charger last accepted (null if none), ``drawA`` its transactions' draw from their latest
MeterValues (null if none reported), ``managed`` false for a charger that refused its cap or did
not answer. With ``site.max_current_a = 0`` (no guard): ``maxCurrentA`` 0 and no chargers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.config import SiteSettings

__all__ = ["no_guard", "site_routes"]


def no_guard(site: SiteSettings) -> dict[str, Any]:
    """The shape when no guard is configured."""
    return {
        "maxCurrentA": 0,
        "mode": site.mode,
        "engaged": False,
        "allocatedA": 0,
        "measuredA": 0,
        "chargers": [],
    }


def site_routes(describe: Callable[[], dict[str, Any]]) -> list[BaseRoute]:
    """The route, reading the guard's view (``SiteGuard.describe``) on each request."""

    async def site(request: Request) -> Response:
        return JSONResponse(describe())

    return [Route("/api/site", site, methods=["GET"])]
