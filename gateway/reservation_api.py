"""HTTP routes of the local API for reservations (thin: the rules are in gateway.reservations).

``POST /api/ocpp/reservations``, ``POST /api/ocpp/reservations/cancel`` and
``GET /api/ocpp/reservations``.
Errors are ``{"error": "<message>"}``: 422 invalid body, 404 unknown portId, 409 charger not
connected, 504 the charger did not answer in time, 502 the charger answered something unusable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.config import PortMapping
from gateway.errors import ChargerCallError, ChargerNotConnected, ChargerTimeout
from gateway.frames import CallError, OcppVersion
from gateway.hub import Hub
from gateway.reservation_book import BAD_ANSWER, CALL_ERROR, NO_ANSWER, ReservationBook
from gateway.reservations import (
    BadChargerAnswer,
    InvalidReservationRequest,
    UnknownPort,
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

__all__ = ["ChargerAnsweredError", "ChargerLink", "HubLink", "reservation_routes"]

log = logging.getLogger(__name__)

# OCPP-J: a charger without the Reservation profile answers NotImplemented / NotSupported.
# Flipturn documents that case as status Rejected ("e.g. reservations not supported").
_UNSUPPORTED = frozenset({"NotImplemented", "NotSupported"})


class ChargerAnsweredError(ChargerCallError):
    """The charger answered a gateway-originated CALL with a CALLERROR."""

    def __init__(self, code: str, description: str) -> None:
        super().__init__(f"charger answered with CALLERROR {code}: {description}".rstrip(": "))
        self.code = code


class ChargerLink(Protocol):
    """What the routes need from the session layer."""

    def ocpp_version(self, charger_id: str) -> OcppVersion | None:
        """The connected charger's OCPP version, or None when it is not connected."""

    async def call_charger(
        self, charger_id: str, action: str, payload: dict[str, Any], *, timeout_s: float
    ) -> dict[str, Any]:
        """Send a gateway-originated CALL; the CALLRESULT payload, or ChargerCallError."""


class HubLink:
    """:class:`ChargerLink` over the hub's sessions (their shared outbound CALL queue)."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def ocpp_version(self, charger_id: str) -> OcppVersion | None:
        session = self._hub.get(charger_id)
        return session.version if session is not None and session.connected else None

    async def call_charger(
        self, charger_id: str, action: str, payload: dict[str, Any], *, timeout_s: float
    ) -> dict[str, Any]:
        session = self._hub.get(charger_id)
        if session is None:
            raise ChargerNotConnected(f"charger {charger_id} is not connected")
        answer = await session.call_charger(action, payload, timeout_s=timeout_s)
        if isinstance(answer, CallError):
            raise ChargerAnsweredError(answer.code, answer.description)
        return answer.payload


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class _Routes:
    def __init__(
        self,
        book: ReservationBook,
        link: ChargerLink,
        ports: Sequence[PortMapping],
        charger_timeout_s: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.book = book
        self.link = link
        self.ports = tuple(ports)
        self.timeout_s = charger_timeout_s
        self.clock = clock

    async def _body(self, request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw)
        except ValueError:
            raise InvalidReservationRequest("body", "body must be valid JSON") from None

    def _connected(self, charger_id: str) -> OcppVersion:
        version = self.link.ocpp_version(charger_id)
        if version is None:
            raise ChargerNotConnected(f"charger {charger_id} is not connected")
        return version

    async def reserve(self, request: Request) -> JSONResponse:
        return await self._guard(self._reserve(request), "ReserveNow")

    async def cancel(self, request: Request) -> JSONResponse:
        return await self._guard(self._cancel(request), "CancelReservation")

    async def listing(self, request: Request) -> JSONResponse:
        active = await self.book.list_active(self.clock())
        return JSONResponse({"data": [reservation_json(r, self.ports) for r in active]})

    async def _reserve(self, request: Request) -> JSONResponse:
        parsed = parse_reserve_request(await self._body(request), self.clock())
        port = resolve_port(self.ports, parsed.port_id)
        version = self._connected(port.charger)
        check_for_version(parsed, version)
        payload = reserve_now_payload(version, port.connector, parsed)
        log.info(
            "reserving port %d (%s connector %d) as reservation %d",
            port.id,
            port.charger,
            port.connector,
            parsed.reservation_id,
        )
        try:
            answer = await self.link.call_charger(
                port.charger, "ReserveNow", payload, timeout_s=self.timeout_s
            )
            status = reserve_status(answer)
        except BadChargerAnswer:
            await self.book.on_api_reserve(port.charger, version, payload, BAD_ANSWER)
            raise
        except ChargerTimeout:
            await self.book.on_api_reserve(port.charger, version, payload, NO_ANSWER)
            raise
        except ChargerNotConnected:
            raise
        except ChargerAnsweredError as exc:
            if exc.code not in _UNSUPPORTED:
                await self.book.on_api_reserve(port.charger, version, payload, CALL_ERROR)
                raise
            status = "Rejected"
        await self.book.on_api_reserve(port.charger, version, payload, status)
        return JSONResponse({"status": status})

    async def _cancel(self, request: Request) -> JSONResponse:
        parsed = parse_cancel_request(await self._body(request))
        port = resolve_port(self.ports, parsed.port_id)
        version = self._connected(port.charger)
        payload = cancel_payload(version, parsed.reservation_id)
        try:
            answer = await self.link.call_charger(
                port.charger, "CancelReservation", payload, timeout_s=self.timeout_s
            )
            status = cancel_status(answer)
        except ChargerNotConnected:
            raise
        except BadChargerAnswer:
            await self.book.on_api_cancel(port.charger, parsed.reservation_id, BAD_ANSWER)
            raise
        except ChargerTimeout:
            await self.book.on_api_cancel(port.charger, parsed.reservation_id, NO_ANSWER)
            raise
        except ChargerAnsweredError as exc:
            if exc.code not in _UNSUPPORTED:
                await self.book.on_api_cancel(port.charger, parsed.reservation_id, CALL_ERROR)
                raise
            status = "Rejected"
        await self.book.on_api_cancel(port.charger, parsed.reservation_id, status)
        return JSONResponse({"status": status})

    async def _guard(self, work: Awaitable[JSONResponse], action: str) -> JSONResponse:
        try:
            response = await work
        except InvalidReservationRequest as exc:
            return _error(422, str(exc))
        except UnknownPort as exc:
            return _error(404, str(exc))
        except ChargerNotConnected as exc:
            self.book.metrics.requests.labels("api", action, "NotConnected").inc()
            return _error(409, str(exc) or "charger is not connected")
        except ChargerTimeout as exc:
            return _error(504, str(exc) or "charger did not answer in time")
        except ChargerCallError as exc:
            return _error(502, str(exc) or "charger answered with an error")
        return response


def reservation_routes(
    book: ReservationBook,
    link: ChargerLink,
    ports: Sequence[PortMapping],
    *,
    charger_timeout_s: float,
    clock: Callable[[], datetime] = _utc_now,
) -> list[Route]:
    """The three reservation routes, to be mounted in the local API app."""
    routes = _Routes(book, link, ports, charger_timeout_s, clock)
    return [
        Route("/api/ocpp/reservations", routes.reserve, methods=["POST"]),
        Route("/api/ocpp/reservations/cancel", routes.cancel, methods=["POST"]),
        Route("/api/ocpp/reservations", routes.listing, methods=["GET"]),
    ]
