"""The charger-facing WebSocket server: handshake checks, subprotocol choice, hand-off to the hub.

The subprotocol (the OCPP version) is the one the cloud last selected for the charger when the
charger offers it, answered at once; otherwise the hub asks the cloud, and the response waits for
its choice at most ``NEGOTIATE_WAIT_S`` (gateway.core.versions, docs/ocpp-versions.md).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Sequence
from http import HTTPStatus

from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway.config import ChargersSettings
from gateway.core import versions
from gateway.core.admission import Refused, admit
from gateway.core.certs import check_client_certificate
from gateway.core.limits import LimitedLog
from gateway.net.hub import Hub
from gateway.net.upstream import DEFLATE_MEM_LEVEL, DEFLATE_WINDOW_BITS, upstream_headers
from gateway.net.wsconn import Keepalive, ServerConnection, Timeouts, WsServer
from gateway.ocpp.frames import OcppVersion

__all__ = ["SUBPROTOCOLS", "start_charger_server"]

log = logging.getLogger(__name__)

# OCPP 2.1 Part 4 §3.1.2: the charger lists the versions it speaks in its order of preference.
SUBPROTOCOLS: dict[Subprotocol, OcppVersion] = {
    Subprotocol(name): version for name, version in versions.SUBPROTOCOLS.items()
}


async def _answer(version: Awaitable[OcppVersion]) -> Subprotocol:
    return Subprotocol(versions.subprotocol(await version))


async def start_charger_server(
    hub: Hub, settings: ChargersSettings, *, ssl_context: ssl.SSLContext | None = None
) -> WsServer:
    """Listen on ``settings.host:port`` and serve chargers until the returned server is closed.

    With ``ssl_context`` (see :mod:`gateway.net.tls`) the server speaks wss://; with
    ``settings.client_certs`` a verified client certificate must name the charger (else 403).
    Each handshake is admitted with ``hub.settings.chargers`` as it is then, so a SIGHUP reload
    of ``[chargers.passwords]`` applies to the next charger that connects.
    """

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        peer = connection.remote_address
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        authorization = request.headers.get("Authorization")
        # Before any password check (no oracle); only where there is a password to guess.
        basic = hub.settings.chargers.auth == "basic"
        throttled = basic and hub.auth_refused_for(address, "charger") > 0
        decision = (
            Refused(HTTPStatus.UNAUTHORIZED, "too many failed authentications")
            if throttled
            else admit(request.path, authorization, hub.settings.chargers)
        )
        if isinstance(decision, Refused):
            hub.stats.errors[f"refused_{decision.status.value}"] += 1
            # Per source address: a scanner trying many paths is one line a minute, not one each.
            lines = LimitedLog(log, hub.log_limit, address)
            kind = f"refused ({decision.status.value})"
            lines.warning(hub.loop_time(), kind, "%s: %s", request.path[:80], decision.reason)
            if decision.status == 401 and authorization and not throttled:
                hub.auth_failed(address, "charger")  # wrong credentials (none given is no guess)
            response = connection.reject(decision.status, decision.reason + "\n")
            if decision.status == 401:
                response.headers["WWW-Authenticate"] = (
                    'Basic realm="flipturn-gateway", charset="UTF-8"'
                )
            return response
        if settings.client_certs != "none":
            transport = connection.transport
            peercert = None if transport is None else transport.get_extra_info("peercert")
            why = check_client_certificate(decision.charger_id, peercert, settings.client_certs)
            if why is not None:
                hub.stats.errors["refused_403"] += 1
                lines = LimitedLog(log, hub.log_limit, decision.charger_id)
                lines.warning(hub.loop_time(), "client certificate refused", "%s", why)
                return connection.reject(HTTPStatus.FORBIDDEN, "client certificate refused\n")
        return None

    def choose_subprotocol(
        connection: ServerConnection, offered: Sequence[Subprotocol]
    ) -> Subprotocol | Awaitable[Subprotocol | None] | None:
        # The charger's order of preference among what we speak (OCPP 2.1 Part 4 §3.1.2), the
        # cloud deciding (gateway.core.versions); None completes the handshake without a
        # subprotocol and the server then closes (OCPP-J §3.2).
        request = connection.request
        assert request is not None
        decision = admit(request.path, request.headers.get("Authorization"), hub.settings.chargers)
        if isinstance(decision, Refused):  # cannot happen: process_request refused it already
            return None
        plan = hub.negotiation.plan_answer(decision.charger_id, versions.offered_versions(offered))
        if isinstance(plan, versions.AnswerNow):
            return None if plan.version is None else Subprotocol(versions.subprotocol(plan.version))
        headers = upstream_headers(request, hub.settings.upstream.pass_authorization)
        return _answer(hub.negotiation.negotiate(decision.charger_id, plan, headers))

    def on_open(connection: ServerConnection) -> None:
        assert connection.request is not None
        decision = admit(
            connection.request.path,
            connection.request.headers.get("Authorization"),
            hub.settings.chargers,
        )
        if isinstance(decision, Refused):  # cannot happen: process_request refused it already
            connection.close(1008, decision.reason)
            return
        if connection.subprotocol is None:
            hub.stats.errors["no_subprotocol"] += 1
            lines = LimitedLog(log, hub.log_limit, decision.charger_id)
            lines.warning(hub.loop_time(), "no supported OCPP subprotocol offered", "closing")
            connection.close(1002, "no supported OCPP subprotocol (ocpp1.6, ocpp2.0.1, ocpp2.1)")
            return
        version = SUBPROTOCOLS[connection.subprotocol]
        log.info(
            "%s connected (OCPP %s) from %s",
            decision.charger_id,
            version,
            connection.remote_address,
        )
        hub.accept(
            decision.charger_id, version, connection, versions.offered_versions(connection.offered)
        )

    server = WsServer(
        on_open=on_open,
        process_request=process_request,
        subprotocols=list(SUBPROTOCOLS),
        choose_subprotocol=choose_subprotocol,
        max_size=settings.max_message_bytes,
        # RFC 7692 accepted from every charger that offers it: OCPP 2.0.1 Part 4 §3.3 and 2.1
        # Part 4 §3.4 make it required for the CSMS and the Local Controller. Small windows (2 KB,
        # RFC 7692 §7.1.2; the charger's own only if it offers client_max_window_bits): OCPP
        # frames are small, and each link keeps its zlib state for as long as it is open.
        extensions=[
            ServerPerMessageDeflateFactory(
                server_max_window_bits=DEFLATE_WINDOW_BITS,
                client_max_window_bits=DEFLATE_WINDOW_BITS,
                compress_settings={"memLevel": DEFLATE_MEM_LEVEL},
            )
        ],
        timeouts=Timeouts(open_s=10.0, close_s=2.0),
        keepalive=Keepalive(interval_s=20.0, timeout_s=20.0),
    )
    await server.listen(settings.host, settings.port, ssl=ssl_context)
    return server
