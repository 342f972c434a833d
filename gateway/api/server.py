"""The local HTTP API: health, metrics and operator views (Starlette, served by uvicorn in-process).

Errors are JSON ``{"error": "..."}`` with the right status, never a stack trace. When ``api.token``
is set, ``/api/*`` needs ``Authorization: Bearer <token>`` or the dashboard's session cookie (set by
``POST /api/login``); ``/health`` and ``/metrics`` stay open. After 10 wrong tokens (or sign-ins, or
charger passwords) from one address within 60 s, ``/api/*`` answers that address 429 with
``Retry-After`` for 60 s, before any token check (the hub's throttle, shared with the chargers).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway import __version__
from gateway.config import Settings
from gateway.net.hub import Hub
from gateway.store.engine import Store

__all__ = [
    "SESSION_COOKIE",
    "ApiContext",
    "ApiServer",
    "build_api",
    "client_address",
    "error",
    "session_value",
    "too_many_failures",
]

log = logging.getLogger(__name__)

SESSION_COOKIE = "flipturn_gateway_session"
LOGIN_PATH = "/api/login"  # open: it is where the token is given


def session_value(token: str) -> str:
    """The dashboard's cookie for ``token``: derived from it, so the cookie is not the token
    itself, and a changed token ends every session."""
    return hmac.new(
        token.encode(), b"flipturn-gateway dashboard session", hashlib.sha256
    ).hexdigest()


@dataclass
class ApiContext:
    """What the API handlers read; built once by the app."""

    settings: Settings
    hub: Hub
    store: Store
    registry: CollectorRegistry
    started_at: float = field(default_factory=time.monotonic)
    # Returns the /health "sync" block; the sync service provides it.
    sync_status: Callable[[], Awaitable[dict[str, Any]]] | None = None
    # charger id → its ``localList`` block; the local list push provides it.
    local_list: Callable[[str], dict[str, Any]] | None = None


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def client_address(request: Request) -> str:
    """The source address of the request's connection (proxy headers are not trusted)."""
    return request.client.host if request.client is not None else ""


def too_many_failures(wait_s: float) -> JSONResponse:
    """429 for an address refused after too many failed authentications (RFC 6585 §4)."""
    response = error(429, "too many failed authentications from this address; try again later")
    response.headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
    return response


async def _outbox_health(ctx: ApiContext) -> dict[str, Any]:
    backlog = ctx.hub.outbox()
    pending = sum(n for n, _ in backlog.values())
    oldest = min((t for _, t in backlog.values()), default=None)
    return {
        "pending": pending,
        "oldestAgeS": round(max(0.0, time.time() - oldest), 3) if oldest is not None else None,
        "deadLetters": await ctx.store.dead_letter_count(),
    }


async def _sync_health(ctx: ApiContext, store_ok: bool) -> dict[str, Any]:
    empty: dict[str, Any] = {"lastSuccessAt": None, "lastError": None, "accessIds": 0}
    if ctx.sync_status is None:
        return empty
    try:
        return await ctx.sync_status()
    except Exception:
        if store_ok:
            raise
        return empty  # a corrupt store may not answer the query: /health still says why


def build_api(ctx: ApiContext, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The Starlette application; ``extra_routes`` come from the cache and reservation modules."""

    async def health(request: Request) -> Response:
        # The store's own account of its last commits and looks at the file (gateway.store), and
        # one statvfs for freeBytes: no query here, so a wedged database cannot wedge /health.
        store = ctx.store.status()
        store_ok = bool(store["ok"])
        hub = ctx.hub
        configured = not ctx.settings.standalone
        wanting = [s for s in hub.sessions.values() if s.connected or s.backlog]
        linked = [s for s in wanting if s.upstream_connected]
        body: dict[str, Any] = {
            "status": "ok",
            "version": __version__,
            "uptimeS": round(time.monotonic() - ctx.started_at, 3),
            "upstream": {
                "configured": configured,
                "connected": configured and len(linked) == len(wanting) and bool(wanting),
                "chargers": hub.upstreams_connected(),
            },
            "chargers": {"connected": hub.chargers_connected()},
            "store": store,
            "sync": await _sync_health(ctx, store_ok),
            "outbox": await _outbox_health(ctx) if store_ok else {"pending": None},
        }
        if not store_ok:
            body["status"] = "down"
            return JSONResponse(body, status_code=503)
        if (
            (configured and len(linked) < len(wanting))
            or body["outbox"]["deadLetters"]
            or body["sync"].get("lastError")  # the cache is going stale
        ):
            body["status"] = "degraded"
        return JSONResponse(body)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(ctx.registry), media_type=CONTENT_TYPE_LATEST)

    async def chargers(request: Request) -> Response:
        rows = ctx.hub.describe()
        if ctx.local_list is not None:
            for row in rows:
                row["localList"] = ctx.local_list(row["id"])
        return JSONResponse({"data": rows})

    async def token_guard(request: Request, call_next: RequestResponseEndpoint) -> Response:
        token = ctx.settings.api.token.get_secret_value()
        path = request.url.path
        if token and path.startswith("/api/"):
            address = client_address(request)
            # Before any token check, the sign-in's included: a throttled address learns nothing.
            wait = ctx.hub.auth_refused_for(address, "login" if path == LOGIN_PATH else "api")
            if wait:
                return too_many_failures(wait)
            if path == LOGIN_PATH:
                return await call_next(request)
            given = request.headers.get("authorization", "")
            cookie = request.cookies.get(SESSION_COOKIE, "")
            if not hmac.compare_digest(
                given.encode(), f"Bearer {token}".encode()
            ) and not hmac.compare_digest(cookie.encode(), session_value(token).encode()):
                if given or cookie:  # wrong credentials; none at all is no guess
                    ctx.hub.auth_failed(address, "api")
                return error(401, "missing or invalid bearer token")
        return await call_next(request)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return error(status, str(detail))

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.exception("API error on %s %s", request.method, request.url.path, exc_info=exc)
        return error(500, "internal error")

    routes: list[BaseRoute] = [
        Route("/health", health),
        Route("/metrics", metrics),
        Route("/api/chargers", chargers),
        *extra_routes,
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=token_guard)],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the gateway owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ApiServer:
    """Runs the API on an already-bound socket inside the gateway's event loop."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.port: int = self.socket.getsockname()[1]
        # ws="none": the API serves no WebSockets, so uvicorn loads no WebSocket implementation.
        # proxy_headers off: the address throttled after failed authentications is the socket's
        # peer, never one a client names in X-Forwarded-For.
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ws="none",
            http="h11",
            proxy_headers=False,
        )
        self._server = _Server(config)

    async def serve(self) -> None:
        await self._server.serve(sockets=[self.socket])

    def stop(self) -> None:
        self._server.should_exit = True
