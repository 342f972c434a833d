"""The charger-facing WebSocket server: handshake checks, subprotocol choice, hand-off to the hub."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway.admission import Refused, admit
from gateway.config import ChargersSettings
from gateway.frames import OcppVersion
from gateway.hub import Hub

__all__ = ["SUBPROTOCOLS", "start_charger_server"]

log = logging.getLogger(__name__)

SUBPROTOCOLS: dict[Subprotocol, OcppVersion] = {
    Subprotocol("ocpp2.0.1"): "2.0.1",
    Subprotocol("ocpp1.6"): "1.6",
}


def _select_subprotocol(
    connection: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    # The charger's order of preference among what we speak; None completes the handshake
    # without a subprotocol and the handler then closes (OCPP-J §3.2).
    for proto in offered:
        if proto in SUBPROTOCOLS:
            return proto
    return None


def _ssl_context(settings: ChargersSettings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # OCPP security profile 2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def start_charger_server(hub: Hub, settings: ChargersSettings) -> Server:
    """Listen on ``settings.host:port`` and serve chargers until the returned server is closed."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        decision = admit(request.path, request.headers.get("Authorization"), settings)
        if isinstance(decision, Refused):
            hub.stats.errors[f"refused_{decision.status.value}"] += 1
            log.warning("refused %s: %s", request.path[:80], decision.reason)
            response = connection.respond(decision.status, decision.reason + "\n")
            if decision.status == 401:
                response.headers = Headers(response.headers)
                response.headers["WWW-Authenticate"] = (
                    'Basic realm="flipturn-gateway", charset="UTF-8"'
                )
            return response
        return None

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        decision = admit(ws.request.path, ws.request.headers.get("Authorization"), settings)
        if isinstance(decision, Refused):  # cannot happen: process_request refused it already
            await ws.close(1008, decision.reason)
            return
        if ws.subprotocol is None:
            hub.stats.errors["no_subprotocol"] += 1
            log.warning("%s: no supported OCPP subprotocol offered; closing", decision.charger_id)
            await ws.close(1002, "no supported OCPP subprotocol (ocpp1.6, ocpp2.0.1)")
            return
        version = SUBPROTOCOLS[ws.subprotocol]
        log.info("%s connected (OCPP %s) from %s", decision.charger_id, version, ws.remote_address)
        try:
            await hub.serve(decision.charger_id, version, ws)
        finally:
            log.info("%s disconnected", decision.charger_id)

    return await serve(
        handler,
        settings.host,
        settings.port,
        subprotocols=list(SUBPROTOCOLS),
        select_subprotocol=_select_subprotocol,
        process_request=process_request,
        max_size=settings.max_message_bytes,
        ssl=_ssl_context(settings),
        close_timeout=2,
    )
