"""ReservationBook: records reservations in the store and answers the offline gate.

A thin driver around the pure rules of :mod:`gateway.reservations.rules`: it reads rows, applies a rule,
writes the result, logs and counts. The session layer calls it:

- after relaying a cloud ReserveNow / CancelReservation and receiving the charger's answer
  (:meth:`ReservationBook.on_cloud_reserve`, :meth:`ReservationBook.on_cloud_cancel`);
- for every charger CALL whose action is in :data:`~gateway.reservations.CLOSING_ACTIONS`
  (:meth:`ReservationBook.on_charger_call`);
- before answering Authorize / StartTransaction / TransactionEvent locally
  (:meth:`ReservationBook.gate`).

The HTTP API records its own requests with :meth:`ReservationBook.on_api_reserve` and
:meth:`ReservationBook.on_api_cancel`, and lists with :meth:`ReservationBook.list_active`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from gateway.config import PortMapping
from gateway.errors import ChargerCallError
from gateway.ocpp.frames import OcppVersion
from gateway.reservations.gate import Refusal, decide_gate
from gateway.reservations.rules import (
    CANCEL_STATUSES,
    CLOSING_ACTIONS,
    Reservation,
    Source,
    apply_cancel,
    apply_closing,
    apply_reserve,
    cancel_status,
    closing_of,
    new_reservation,
    parse_reserve_call,
    reservation_from_row,
    reserve_status,
    split_expired,
    strict_int,
)
from gateway.store.engine import Store

__all__ = ["BAD_ANSWER", "CALL_ERROR", "NO_ANSWER", "ReservationBook", "ReservationMetrics"]

log = logging.getLogger(__name__)

NO_ANSWER = "NoAnswer"  # outcome label: the charger did not answer in time
BAD_ANSWER = "BadAnswer"  # outcome label: the charger's payload broke the schema
CALL_ERROR = "CallError"  # outcome label: the charger answered a CALLERROR


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _outcome(
    status_of: Callable[[OcppVersion, Any], str],
    version: OcppVersion,
    response: Mapping[str, Any] | None,
) -> str:
    """The outcome label of a relayed cloud CALL: the charger's status, or why there is none."""
    if response is None:
        return CALL_ERROR
    try:
        return status_of(version, dict(response))
    except ChargerCallError:
        return BAD_ANSWER


class ReservationMetrics:
    """The reservation counters, registered on an explicit registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "flipturn_gateway_reservation_requests",
            "ReserveNow / CancelReservation sent to chargers, by source and outcome",
            ["source", "action", "outcome"],
            registry=registry,
        )
        self.closed = Counter(
            "flipturn_gateway_reservations_closed",
            "Reservations that stopped being active, by how they ended",
            ["state"],
            registry=registry,
        )
        self.refusals = Counter(
            "flipturn_gateway_reservation_refusals",
            "Locally answered authorizations refused because the connector is reserved",
            registry=registry,
        )
        self.active = Gauge(
            "flipturn_gateway_reservations_active",
            "Reservations currently active (as of the last change or listing)",
            registry=registry,
        )


class ReservationBook:
    """Reservations of every charger: store rows plus the rules of :mod:`gateway.reservations.rules`.

    ``normalise`` turns a presented tag into its lookup key (``tags.normalise``); ``ports`` is the
    ``[[ports]]`` table, used to know which connectors a charger has; ``clock`` gives "now" when a
    caller does not pass it (the API routes use it too).
    """

    def __init__(
        self,
        store: Store,
        *,
        registry: CollectorRegistry,
        normalise: Callable[[str], str],
        ports: Iterable[PortMapping] = (),
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._store = store
        self._normalise = normalise
        self.clock = clock
        self.metrics = ReservationMetrics(registry)
        connectors: dict[str, set[int]] = defaultdict(set)
        for mapping in ports:
            if mapping.connector > 0:
                connectors[mapping.charger].add(mapping.connector)
        self._connectors = {charger: frozenset(ids) for charger, ids in connectors.items()}
        # Read-modify-write of one row must not interleave with another (single process).
        self._lock = asyncio.Lock()

    # --- ReserveNow ----------------------------------------------------------------------

    async def on_cloud_reserve(
        self,
        charger_id: str,
        version: OcppVersion,
        request: Mapping[str, Any],
        response: Mapping[str, Any] | None,
        *,
        now: datetime | None = None,
    ) -> Reservation | None:
        """Record a ReserveNow the cloud sent through the gateway, with the charger's answer.

        ``response`` is the charger's CALLRESULT payload, or None for a CALLERROR.
        """
        outcome = _outcome(reserve_status, version, response)
        return await self._record_reserve(charger_id, version, request, outcome, "cloud", now)

    async def on_api_reserve(
        self,
        charger_id: str,
        version: OcppVersion,
        request: Mapping[str, Any],
        outcome: str,
        *,
        now: datetime | None = None,
    ) -> Reservation | None:
        """Record a ReserveNow of the local API; ``outcome`` is the charger's status or a label."""
        return await self._record_reserve(charger_id, version, request, outcome, "api", now)

    async def _record_reserve(
        self,
        charger_id: str,
        version: OcppVersion,
        request: Mapping[str, Any],
        outcome: str,
        source: Source,
        now: datetime | None,
    ) -> Reservation | None:
        now = now or self.clock()
        self.metrics.requests.labels(source, "ReserveNow", outcome).inc()
        call = parse_reserve_call(version, request)
        if call is None:
            log.warning(
                "ReserveNow from %s to %s cannot be read; not recorded (outcome %s)",
                source,
                charger_id,
                outcome,
            )
            return None
        log.info(
            "reservation %d on %s connector %s (from %s, expires %s): %s",
            call.reservation_id,
            charger_id,
            call.connector_id if call.connector_id is not None else "any",
            source,
            call.expiry.isoformat(),
            outcome,
        )
        record = new_reservation(charger_id, call, source=source, status=outcome, now=now)
        async with self._lock:
            existing = await self._get(charger_id, call.reservation_id)
            row = apply_reserve(existing, record)
            if row is not None:
                await self._store.put_reservations([row.row()])
        await self._refresh_gauge(now)
        return row if row is not None else existing

    # --- CancelReservation -----------------------------------------------------------------

    async def on_cloud_cancel(
        self,
        charger_id: str,
        version: OcppVersion,
        request: Mapping[str, Any],
        response: Mapping[str, Any] | None,
        *,
        now: datetime | None = None,
    ) -> Reservation | None:
        """Record a CancelReservation the cloud sent, with the charger's answer (None: CALLERROR)."""
        outcome = _outcome(cancel_status, version, response)
        rid = strict_int(request.get("reservationId"))
        if rid is None:
            self.metrics.requests.labels("cloud", "CancelReservation", outcome).inc()
            return None
        return await self._record_cancel(charger_id, rid, outcome, "cloud", now)

    async def on_api_cancel(
        self, charger_id: str, reservation_id: int, outcome: str, *, now: datetime | None = None
    ) -> Reservation | None:
        """Record a CancelReservation of the local API and its outcome."""
        return await self._record_cancel(charger_id, reservation_id, outcome, "api", now)

    async def _record_cancel(
        self,
        charger_id: str,
        reservation_id: int,
        outcome: str,
        source: Source,
        now: datetime | None,
    ) -> Reservation | None:
        now = now or self.clock()
        self.metrics.requests.labels(source, "CancelReservation", outcome).inc()
        log.info(
            "cancel reservation %d on %s (from %s): %s", reservation_id, charger_id, source, outcome
        )
        if outcome not in CANCEL_STATUSES:
            return None  # no usable answer: the charger may or may not still hold it
        async with self._lock:
            row = apply_cancel(await self._get(charger_id, reservation_id), outcome, now)
            if row is not None:
                await self._store.put_reservations([row.row()])
        if row is not None:
            self.metrics.closed.labels(row.state).inc()
            await self._refresh_gauge(now)
        return row

    # --- charger messages that end a reservation --------------------------------------------

    async def on_charger_call(
        self,
        charger_id: str,
        version: OcppVersion,
        action: str,
        payload: Mapping[str, Any],
        *,
        now: datetime | None = None,
    ) -> Reservation | None:
        """Close the reservation a charger CALL ends (``closing_of``); cheap for other actions."""
        if action not in CLOSING_ACTIONS:
            return None
        closing = closing_of(version, action, payload)
        if closing is None:
            return None
        now = now or self.clock()
        async with self._lock:
            existing = await self._get(charger_id, closing.reservation_id)
            row = apply_closing(existing, closing, now)
            if row is not None:
                await self._store.put_reservations([row.row()])
        if row is None:
            return None
        log.info(
            "reservation %d on %s ended: %s (%s)",
            row.reservation_id,
            charger_id,
            row.state,
            action,
        )
        self.metrics.closed.labels(row.state).inc()
        await self._refresh_gauge(now)
        return row

    # --- offline gate ------------------------------------------------------------------------

    async def gate(
        self,
        charger_id: str,
        version: OcppVersion,
        connector_id: int | None,
        tag: str,
        *,
        parent_tag: str | None = None,
        now: datetime | None = None,
    ) -> str | None:
        """The status to impose on a tag the cache would accept, or None (no objection).

        ``connector_id``: 1.6 connectorId / 2.0.1 evse id of the message, None if it has none.
        ``parent_tag``: the tag's parentIdTag / groupIdToken as the cache knows it.
        """
        refusal = await self.gate_refusal(
            charger_id, version, connector_id, tag, parent_tag=parent_tag, now=now
        )
        return None if refusal is None else refusal.status

    async def gate_refusal(
        self,
        charger_id: str,
        version: OcppVersion,
        connector_id: int | None,
        tag: str,
        *,
        parent_tag: str | None = None,
        now: datetime | None = None,
    ) -> Refusal | None:
        """Like :meth:`gate`, with the reservation that causes the refusal."""
        now = now or self.clock()
        rows = await self._store.reservations_in_state("active", charger_id)
        if not rows:
            return None
        refusal = decide_gate(
            [reservation_from_row(row) for row in rows],
            version=version,
            connector_id=connector_id,
            tag_key=self._normalise(tag),
            parent_key=None if parent_tag is None else self._normalise(parent_tag),
            now=now,
            normalise=self._normalise,
            connectors=self._connectors.get(charger_id, frozenset()),
        )
        if refusal is None:
            return None
        self.metrics.refusals.inc()
        log.info(
            "offline authorization on %s connector %s refused (%s): reserved by reservation %d",
            charger_id,
            connector_id if connector_id is not None else "-",
            refusal.status,
            refusal.reservation.reservation_id,
        )
        return refusal

    # --- listing and expiry -------------------------------------------------------------------

    async def list_active(self, now: datetime | None = None) -> list[Reservation]:
        """Active reservations of every charger; those past their expiry are marked expired."""
        now = now or self.clock()
        async with self._lock:
            rows = await self._store.reservations_in_state("active")
            active, expired = split_expired((reservation_from_row(r) for r in rows), now)
            if expired:
                await self._store.put_reservations([r.row() for r in expired])
        for reservation in expired:
            log.info(
                "reservation %d on %s expired", reservation.reservation_id, reservation.charger_id
            )
            self.metrics.closed.labels("expired").inc()
        self.metrics.active.set(len(active))
        return active

    async def get(self, charger_id: str, reservation_id: int) -> Reservation | None:
        """The record of one reservation, whatever its state."""
        return await self._get(charger_id, reservation_id)

    async def _get(self, charger_id: str, reservation_id: int) -> Reservation | None:
        row = await self._store.reservation(charger_id, reservation_id)
        return None if row is None else reservation_from_row(row)

    async def _refresh_gauge(self, now: datetime) -> None:
        rows = await self._store.reservations_in_state("active")
        active, _ = split_expired((reservation_from_row(r) for r in rows), now)
        self.metrics.active.set(len(active))
