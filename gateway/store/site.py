"""The site power guard's state: what each charger holds and whether the guard is engaged."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.store.base import Statement, Table

__all__ = ["SITE_MIGRATION", "SiteTable"]

# The schema migration adding these tables (listed in gateway.store.engine.MIGRATIONS).
SITE_MIGRATION = """
CREATE TABLE site_chargers (                   -- per charger: the cap it holds (gateway.site)
    charger_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,                      -- JSON: sequencer.record, capabilities, cloud max
    updated_at REAL NOT NULL
);
CREATE TABLE site_state (                      -- one row: the guard engaged or not
    id INTEGER PRIMARY KEY CHECK (id = 1),
    engaged INTEGER NOT NULL,
    updated_at REAL NOT NULL
);
"""


class SiteTable(Table):
    """The store's operations on these tables (a part of Store)."""

    async def site_records(self) -> tuple[dict[str, str], bool]:
        """Every charger's record (JSON text) and whether the guard was engaged."""
        rows = await self.fetchall("SELECT charger_id, record FROM site_chargers")
        state = await self.fetchone("SELECT engaged FROM site_state WHERE id = 1")
        return {str(r[0]): str(r[1]) for r in rows}, bool(state[0]) if state else False

    async def save_site(
        self, records: Mapping[str, str | None], engaged: bool | None, now: float
    ) -> None:
        """Replace (a JSON text) or delete (None) charger records and set the engaged flag (None:
        unchanged), in one transaction."""
        statements: list[Statement] = []
        for charger_id, record in records.items():
            if record is None:
                statements.append(("DELETE FROM site_chargers WHERE charger_id = ?", (charger_id,)))
            else:
                statements.append(
                    (
                        "INSERT OR REPLACE INTO site_chargers (charger_id, record, updated_at)"
                        " VALUES (?, ?, ?)",
                        (charger_id, record, now),
                    )
                )
        if engaged is not None:
            statements.append(
                (
                    "INSERT OR REPLACE INTO site_state (id, engaged, updated_at) VALUES (1, ?, ?)",
                    (int(engaged), now),
                )
            )
        if statements:
            await self.write(statements)
