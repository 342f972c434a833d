"""The depot view in the local API: ``GET /api/chargers/{id}``, the dashboard at ``GET /`` and the
JSON it polls (``GET /api/depot``), and the dashboard's token login.

The dashboard is three files shipped in the package (``gateway/api/static``): no CDN, no build step,
so it works with the cloud unreachable. With ``api.token`` set the page asks for the token once;
``POST /api/login`` answers with an HttpOnly, SameSite=Strict cookie that the API accepts in place
of the bearer header (``gateway.api.server``). The page itself holds no data; it shows nothing until its
first authorised read.

``localList`` (the local authorization list push) and certificate expiry come from providers that
their features plug in; without one ``localList`` says the gateway does not manage the list, and
the dashboard shows no certificate panel.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import __version__
from gateway.api.server import SESSION_COOKIE, ApiContext, client_address, error, session_value
from gateway.core import offline
from gateway.core.depot import DepotView
from gateway.errors import StoreError

__all__ = ["NO_LOCAL_LIST", "CertificateProvider", "LocalListProvider", "depot_routes"]

LocalListProvider = Callable[[str], dict[str, Any]]
"""charger id → the ``localList`` block of its detail."""
CertificateProvider = Callable[[], list[dict[str, Any]]]
"""→ ``[{"name", "notAfter" (ISO 8601), "daysLeft"}]`` for the certificates the gateway serves."""

NO_LOCAL_LIST: dict[str, Any] = {"owner": "none", "version": None, "entries": 0, "truncated": False}

_STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
# The page loads only its own files and talks only to this API.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> bytes:
    return (resources.files("gateway.api") / "static" / name).read_bytes()


def _iso(ts: float | None) -> str | None:
    return offline.iso_utc(datetime.fromtimestamp(ts, UTC)) if ts else None


def charger_detail(
    ctx: ApiContext, view: DepotView, charger_id: str, local_list: LocalListProvider | None
) -> dict[str, Any] | None:
    """The ``GET /api/chargers/{id}`` body, or None for a charger the gateway never saw."""
    folded = view.detail(charger_id)
    session = ctx.hub.get(charger_id)
    if folded is None and session is None:
        return None
    known = view.chargers.get(charger_id)
    last_seen = session.last_seen_at if session is not None else None
    if last_seen is None and known is not None:
        last_seen = known.last_seen_at
    body: dict[str, Any] = {
        "id": charger_id,
        "ocppVersion": session.version if session is not None else known.version if known else None,
        "connected": session.connected if session is not None else False,
        "linkState": session.state.value if session is not None else "offline",
        "lastSeenAt": _iso(last_seen),
        "outboxPending": session.backlog if session is not None else 0,
        **(folded or {"vendor": None, "model": None, "firmware": None}),
        "localList": local_list(charger_id) if local_list is not None else dict(NO_LOCAL_LIST),
        # The version the cloud last selected for this charger (gateway.core.versions), or null.
        "cloudVersion": cloud.version
        if (cloud := ctx.hub.cloud_versions.get(charger_id))
        else None,
    }
    body.setdefault("connectors", [])
    body.setdefault("transactions", [])
    body["upstreamConnected"] = session.upstream_connected if session is not None else False
    return body


def depot_routes(
    ctx: ApiContext,
    view: DepotView,
    *,
    local_list: LocalListProvider | None = None,
    certificates: CertificateProvider | None = None,
) -> list[BaseRoute]:
    """The detail endpoint, the dashboard, its data and its login."""
    assets = {name: _asset(name) for name in _STATIC}
    page = _asset("dashboard.html")

    def token() -> str:
        return ctx.settings.api.token.get_secret_value()

    async def dashboard(request: Request) -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_SECURITY_HEADERS)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets:
            return error(404, "not found")
        return Response(assets[name], media_type=_STATIC[name], headers=_SECURITY_HEADERS)

    async def detail(request: Request) -> Response:
        charger_id = request.path_params["charger_id"]
        body = charger_detail(ctx, view, charger_id, local_list)
        if body is None:
            return error(404, f"unknown charger {charger_id}")
        del body["upstreamConnected"]  # the contract's shape; the dashboard's read has it
        return JSONResponse(body)

    async def depot(request: Request) -> Response:
        ids = sorted(set(ctx.hub.sessions) | set(view.chargers))
        chargers = [charger_detail(ctx, view, cid, local_list) for cid in ids]
        backlog = ctx.hub.outbox()
        oldest = min((t for _, t in backlog.values()), default=None)
        body: dict[str, Any] = {
            "generatedAt": _iso(time.time()),
            "version": __version__,
            "upstreamConfigured": not ctx.settings.standalone,
            "chargers": [c for c in chargers if c is not None],
            "outbox": {
                "pending": sum(n for n, _ in backlog.values()),
                "oldestAgeS": round(max(0.0, time.time() - oldest), 1) if oldest else None,
                "deadLetters": await _dead_letters(ctx),
            },
            "sync": {
                "enabled": bool(ctx.settings.flipturn.api_key.get_secret_value()),
                **await _sync(ctx.sync_status),
            },
            "ports": [
                {"id": p.id, "charger": p.charger, "connector": p.connector}
                for p in ctx.settings.ports
            ],
            "tokenRequired": bool(token()),
        }
        if certificates is not None:
            body["certificates"] = certificates()
        return JSONResponse(body)

    async def login(request: Request) -> Response:
        expected = token()
        try:
            given = json.loads(await request.body()).get("token", "")
        except (ValueError, AttributeError):
            return error(422, 'body must be {"token": "..."}')
        if not isinstance(given, str):
            return error(422, "token must be a string")
        if expected and not hmac.compare_digest(given.encode(), expected.encode()):
            ctx.hub.auth_failed(client_address(request), "login")
            return error(401, "invalid token")
        response = JSONResponse({"status": "LoggedIn"})
        if expected:
            response.set_cookie(
                SESSION_COOKIE,
                session_value(expected),
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
        return response

    async def logout(request: Request) -> Response:
        response = JSONResponse({"status": "LoggedOut"})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    return [
        Route("/", dashboard),
        Route("/static/{name}", static),
        Route("/api/chargers/{charger_id}", detail),
        Route("/api/depot", depot),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/logout", logout, methods=["POST"]),
    ]


async def _dead_letters(ctx: ApiContext) -> int | None:
    """The dead-letter count, or None while the store cannot answer (the page still shows the rest)."""
    try:
        return await ctx.store.dead_letter_count()
    except StoreError:
        return None


async def _sync(status: Callable[[], Awaitable[dict[str, Any]]] | None) -> dict[str, Any]:
    if status is not None:
        try:
            return await status()
        except StoreError:
            pass  # the store cannot answer: say nothing rather than fail the whole page
    return {"lastSuccessAt": None, "lastError": None, "accessIds": 0}
