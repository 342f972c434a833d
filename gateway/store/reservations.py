"""Reservations as recorded by the reservation book, with a small cache of the active ones."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.store.base import Record, Table

__all__ = ["ReservationTable"]


@dataclass(frozen=True, slots=True)
class ReservationRecord(Record):
    """A row of ``reservations`` (the rules read it as :class:`gateway.reservations.rules.Reservation`)."""

    charger_id: str
    reservation_id: int
    connector_id: int | None  # 1.6 connectorId / 2.0.1 evseId (None: any)
    id_tag: str  # as sent to the charger (compared normalised)
    parent_id_tag: str | None
    expiry_date: str  # ISO 8601 UTC
    source: str  # api | cloud
    status: str  # the charger's answer (Accepted, ...), or NoAnswer
    state: str  # active | used | cancelled | expired | removed | refused | failed
    created_at: str
    updated_at: str


class ReservationTable(Table):
    """The store's operations on these tables (a part of Store)."""

    _PUT_RESERVATION = (
        "INSERT OR REPLACE INTO reservations (charger_id, reservation_id, connector_id, id_tag,"
        " parent_id_tag, expiry_date, source, status, state, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    # Active reservations per charger as last read through the read-only connection. The offline
    # gate asks for them on every Authorize it accepts, and there are almost never any; the read
    # is a read transaction of its own (~5 µs). put_reservations is the only writer of the table
    # and empties this once its commit is done (whatever the outcome), so a cached list never
    # outlives the rows it was read from. Bounded: emptied when it holds _ACTIVE_CACHE_MAX chargers.
    _active_cache: dict[str, list[ReservationRecord]] | None = None

    _ACTIVE_CACHE_MAX = 4096

    async def put_reservations(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert or replace reservation rows (values in table column order), durably."""
        try:
            await self.write([(self._PUT_RESERVATION, tuple(row)) for row in rows])
        finally:
            self._active_cache = None

    async def reservation(self, charger_id: str, reservation_id: int) -> ReservationRecord | None:
        """One reservation row, or None."""
        row = await self.fetchone(
            "SELECT * FROM reservations WHERE charger_id = ? AND reservation_id = ?",
            (charger_id, reservation_id),
        )
        return None if row is None else ReservationRecord.of(row)

    async def reservations_in_state(
        self, state: str, charger_id: str | None = None
    ) -> list[ReservationRecord]:
        """Reservation rows in ``state`` (of one charger, or all), oldest first."""
        if charger_id is None:
            rows = await self.fetchall(
                "SELECT * FROM reservations WHERE state = ? ORDER BY created_at, reservation_id",
                (state,),
            )
            return [ReservationRecord.of(row) for row in rows]
        cache = self._active_cache if state == "active" else None
        if cache is not None and (cached := cache.get(charger_id)) is not None:
            return list(cached)
        sql = (
            "SELECT * FROM reservations WHERE state = ? AND charger_id = ?"
            " ORDER BY created_at, reservation_id"
        )
        # The offline gate asks this for every Authorize it answers locally with Accepted. An
        # indexed read of a few rows takes microseconds on the event loop thread; the aiosqlite
        # thread hop cost ~100 µs of CPU per Authorize and, waiting for the GIL, millisecond tails
        # (docs/benchmarks.md "Offline authorize").
        read = self._read_now(sql, (state, charger_id))
        if read is None:  # not cached: it awaits
            return [
                ReservationRecord.of(row) for row in await self.fetchall(sql, (state, charger_id))
            ]
        records = [ReservationRecord.of(row) for row in read]
        if state == "active":
            if cache is None or len(cache) >= self._ACTIVE_CACHE_MAX:
                cache = self._active_cache = {}
            cache[charger_id] = records
        return list(records)
