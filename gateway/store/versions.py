"""The version the cloud last selected for each charger (gateway.core.versions), kept across restarts.

One row per charge point id, written only when the cloud's choice changes: a charger answered with
its remembered version costs no write.
"""

from __future__ import annotations

from typing import Final

from gateway.core.versions import VersionRecord
from gateway.ocpp.frames import VERSIONS, OcppVersion
from gateway.store.base import Table

__all__ = ["MIGRATION", "VersionTable"]

# Schema migration 5 (gateway.store.migrations.MIGRATIONS).
MIGRATION: Final = """
    CREATE TABLE cloud_versions (              -- per charger: the version the cloud last selected
        charger_id TEXT PRIMARY KEY,
        version TEXT NOT NULL,                 -- 1.6 | 2.0.1 | 2.1
        refused TEXT NOT NULL DEFAULT '',      -- versions it refused in favour of it, space-separated
        updated_at REAL NOT NULL               -- unix seconds
    );
    """


def _version(value: str) -> OcppVersion | None:
    return next((v for v in VERSIONS if v == value), None)


class VersionTable(Table):
    """The store's operations on this table (a part of Store)."""

    async def cloud_versions(self) -> dict[str, VersionRecord]:
        """Every charger's record (rows naming a version the gateway does not speak are skipped)."""
        rows = await self.fetchall("SELECT charger_id, version, refused FROM cloud_versions")
        out: dict[str, VersionRecord] = {}
        for charger_id, version, refused in rows:
            selected = _version(str(version))
            if selected is not None:
                others = (_version(v) for v in str(refused).split())
                out[str(charger_id)] = VersionRecord(
                    selected, frozenset(v for v in others if v is not None)
                )
        return out

    async def save_cloud_version(self, charger_id: str, record: VersionRecord, now: float) -> None:
        """Remember the cloud's choice for ``charger_id``."""
        await self.write(
            [
                (
                    "INSERT OR REPLACE INTO cloud_versions (charger_id, version, refused,"
                    " updated_at) VALUES (?, ?, ?, ?)",
                    (charger_id, record.version, " ".join(sorted(record.refused)), now),
                )
            ]
        )
