"""HTTP routes of the local API for reservations (thin: the rules are in gateway.reservations).

``POST /api/ocpp/reservations``, ``POST /api/ocpp/reservations/cancel`` and
``GET /api/ocpp/reservations``. Errors are ``{"error": "<message>"}``: 422 invalid body, 404 unknown
portId, 409 charger not connected, 503 the charger's queue is full (``chargers.max_queued_calls``),
504 the charger did not answer within ``chargers.call_timeout_s`` of receiving the CALL, 502 the
charger answered something unusable. The CALLs go through the charger session's queue
(``call_charger``), shared with the cloud's CALLs, and wait their turn there (a slow cloud CALL
ahead is no timeout of ours); their ids and answers never reach the cloud.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.api.server import error
from gateway.config import PortMapping
from gateway.errors import (
    ChargerBadAnswer,
    ChargerCallError,
    ChargerCallRefused,
    ChargerNotConnected,
    ChargerQueueFull,
    ChargerTimeout,
    InvalidReservationRequest,
    UnknownPort,
)
from gateway.net.hub import Hub
from gateway.ocpp.frames import CallError, OcppVersion
from gateway.reservations.book import BAD_ANSWER, CALL_ERROR, NO_ANSWER, ReservationBook
from gateway.reservations.rules import (
    cancel_payload,
    cancel_status,
    check_for_version,
    parse_cancel_request,
    parse_reserve_request,
    reservation_json,
    reserve_now_payload,
    reserve_status,
    resolve_port,
)

__all__ = ["reservation_routes"]

log = logging.getLogger(__name__)

# OCPP-J: a charger without the Reservation profile answers NotImplemented / NotSupported.
# Flipturn documents that case as status Rejected ("e.g. reservations not supported").
_UNSUPPORTED: Final = frozenset({"NotImplemented", "NotSupported"})


class _Routes:
    def __init__(
        self,
        book: ReservationBook,
        hub: Hub,
        ports: Sequence[PortMapping],
    ) -> None:
        self.book = book
        self.hub = hub
        self.ports = tuple(ports)

    async def reserve(self, request: Request) -> JSONResponse:
        return await self._guard(self._reserve(request), "ReserveNow")

    async def cancel(self, request: Request) -> JSONResponse:
        return await self._guard(self._cancel(request), "CancelReservation")

    async def listing(self, request: Request) -> JSONResponse:
        active = await self.book.list_active()
        return JSONResponse({"data": [reservation_json(r, self.ports) for r in active]})

    async def _reserve(self, request: Request) -> JSONResponse:
        parsed = parse_reserve_request(await _body(request), self.book.clock())
        port = resolve_port(self.ports, parsed.port_id)
        version = self._version(port.charger)
        check_for_version(parsed, version)
        payload = reserve_now_payload(version, port.connector, parsed)
        log.info(
            "reserving port %d (%s connector %d) as reservation %d",
            port.id,
            port.charger,
            port.connector,
            parsed.reservation_id,
        )
        record = functools.partial(self.book.on_api_reserve, port.charger, version, payload)
        status = await self._ask(
            port.charger, version, "ReserveNow", payload, reserve_status, record
        )
        return JSONResponse({"status": status})

    async def _cancel(self, request: Request) -> JSONResponse:
        parsed = parse_cancel_request(await _body(request))
        port = resolve_port(self.ports, parsed.port_id)
        version = self._version(port.charger)
        payload = cancel_payload(version, parsed.reservation_id)
        record = functools.partial(self.book.on_api_cancel, port.charger, parsed.reservation_id)
        status = await self._ask(
            port.charger, version, "CancelReservation", payload, cancel_status, record
        )
        return JSONResponse({"status": status})

    def _version(self, charger_id: str) -> OcppVersion:
        session = self.hub.get(charger_id)
        if session is None or not session.connected:
            raise ChargerNotConnected(f"charger {charger_id} is not connected")
        return session.version

    async def _ask(
        self,
        charger_id: str,
        version: OcppVersion,
        action: str,
        payload: dict[str, Any],
        status_of: Callable[[OcppVersion, Any], str],
        record: Callable[[str], Awaitable[object]],
    ) -> str:
        """Send one CALL through the charger's queue; record and return the outcome."""
        session = self.hub.get(charger_id)
        if session is None:
            raise ChargerNotConnected(f"charger {charger_id} is not connected")
        try:
            answer = await session.call_charger(action, payload)
            if isinstance(answer, CallError):
                raise ChargerCallRefused(answer.code, answer.description)
            status = status_of(version, answer.payload)
        except ChargerBadAnswer:
            await record(BAD_ANSWER)
            raise
        except ChargerTimeout:
            await record(NO_ANSWER)
            raise
        except ChargerCallRefused as exc:
            if exc.code not in _UNSUPPORTED:
                await record(CALL_ERROR)
                raise
            status = "Rejected"
        await record(status)
        return status

    async def _guard(self, work: Awaitable[JSONResponse], action: str) -> JSONResponse:
        try:
            return await work
        except InvalidReservationRequest as exc:
            return error(422, str(exc))
        except UnknownPort as exc:
            return error(404, str(exc))
        except ChargerNotConnected as exc:
            self.book.metrics.requests.labels("api", action, "NotConnected").inc()
            return error(409, str(exc) or "charger is not connected")
        except ChargerTimeout as exc:
            return error(504, str(exc) or "charger did not answer in time")
        except ChargerQueueFull as exc:
            return error(503, str(exc) or "charger queue full")
        except ChargerCallError as exc:
            return error(502, str(exc) or "charger answered with an error")


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        raise InvalidReservationRequest("body", "body must be valid JSON") from None


def reservation_routes(
    book: ReservationBook, hub: Hub, ports: Sequence[PortMapping]
) -> list[Route]:
    """The three reservation routes, to be mounted in the local API app."""
    routes = _Routes(book, hub, ports)
    return [
        Route("/api/ocpp/reservations", routes.reserve, methods=["POST"]),
        Route("/api/ocpp/reservations/cancel", routes.cancel, methods=["POST"]),
        Route("/api/ocpp/reservations", routes.listing, methods=["GET"]),
    ]
