"""The depot view's saved records, one JSON document per charger."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store.base import Table

__all__ = ["DepotTable"]


class DepotTable(Table):
    """The store's operations on these tables (a part of Store)."""

    async def save_depot(self, records: Sequence[tuple[str, str]], now: float) -> None:
        """Replace the depot records ``(charger id, JSON)`` in one transaction."""
        await self.write(
            [
                (
                    "INSERT OR REPLACE INTO depot_chargers (charger_id, record, updated_at)"
                    " VALUES (?, ?, ?)",
                    (charger_id, record, now),
                )
                for charger_id, record in records
            ]
        )

    async def depot_records(self) -> list[tuple[str, str]]:
        """Every charger's depot record ``(charger id, JSON)``."""
        rows = await self.fetchall("SELECT charger_id, record FROM depot_chargers")
        return [(str(r[0]), str(r[1])) for r in rows]
