"""The session hook through which reservations see a charger's traffic (``host.SessionHook``).

- Cloud ReserveNow / CancelReservation: relayed unchanged by the session; once the charger has
  answered, the reservation is recorded with the outcome.
- Charger CALLs that end a reservation (1.6 StartTransaction, 2.0.1 TransactionEvent with
  ``reservationId``, 2.0.1 ReservationStatusUpdate) close its record, online or offline.
- Offline answers: a tag the cache accepts is refused on a connector reserved for someone else.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from gateway.ocpp.frames import Call, CallError, CallResult
from gateway.reservations.book import ReservationBook
from gateway.reservations.gate import gate_target, parent_of, refused_info
from gateway.reservations.rules import CLOSING_ACTIONS

if TYPE_CHECKING:
    from gateway.net.session import ChargerSession

__all__ = ["ReservationHook"]

RESERVATION_CALLS: Final = frozenset({"ReserveNow", "CancelReservation"})


class ReservationHook:
    """Connects a :class:`ReservationBook` to every charger session of a hub."""

    charger_actions: frozenset[str] = CLOSING_ACTIONS
    cloud_actions: frozenset[str] = RESERVATION_CALLS

    def __init__(self, book: ReservationBook) -> None:
        self.book = book

    async def on_charger_call(self, session: ChargerSession, call: Call) -> None:
        """Close the reservation this charger CALL ends, if any."""
        await self.book.on_charger_call(
            session.charger_id, session.version, call.action, call.payload
        )

    async def on_cloud_call_answered(
        self, session: ChargerSession, call: Call, answer: CallResult | CallError
    ) -> None:
        """Record a cloud ReserveNow / CancelReservation with the charger's answer."""
        response = answer.payload if isinstance(answer, CallResult) else None
        if call.action == "ReserveNow":
            await self.book.on_cloud_reserve(
                session.charger_id, session.version, call.payload, response
            )
        elif call.action == "CancelReservation":
            await self.book.on_cloud_cancel(
                session.charger_id, session.version, call.payload, response
            )

    async def gate(
        self, session: ChargerSession, call: Call, auth_info: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        """``auth_info``, or a refusal when the tag would take someone else's reserved connector.

        Only an Accepted answer is gated: a tag the cache already refuses stays refused as it is.
        """
        if auth_info.get("status") != "Accepted":
            return auth_info
        target = gate_target(session.version, call.action, call.payload)
        if target is None:
            return auth_info
        refusal = await self.book.gate_refusal(
            session.charger_id,
            session.version,
            target.connector_id,
            target.tag,
            parent_tag=parent_of(session.version, auth_info),
            now=now,
        )
        if refusal is None:
            return auth_info
        return refused_info(session.version, auth_info, refusal)
