"""The chargers' Local Authorization Lists as last sent, their snapshots, and tag usage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.store.base import Statement, Table

__all__ = ["LocalListRow", "LocalListTable"]


@dataclass(frozen=True, slots=True)
class LocalListRow:
    """A charger's Local Authorization List as the gateway knows it."""

    charger_id: str
    owner: str  # gateway | cloud | none
    version: int | None
    entries: int
    truncated: bool
    snapshot: str | None
    refused: str | None
    updated_at: float


class LocalListTable(Table):
    """The store's operations on these tables (a part of Store)."""

    async def local_lists(self) -> list[LocalListRow]:
        """Every charger's local-list state."""
        rows = await self.fetchall(
            "SELECT charger_id, owner, version, entries, truncated, snapshot, refused, updated_at"
            " FROM local_lists"
        )
        return [
            LocalListRow(
                str(r[0]),
                str(r[1]),
                None if r[2] is None else int(r[2]),
                int(r[3]),
                bool(r[4]),
                r[5],
                r[6],
                float(r[7]),
            )
            for r in rows
        ]

    async def put_local_list(self, row: LocalListRow, snapshot_body: bytes | None = None) -> None:
        """Record a charger's list state (with the snapshot it points at); drop unused snapshots."""
        statements: list[Statement] = []
        if row.snapshot is not None and snapshot_body is not None:
            statements.append(
                (
                    "INSERT OR IGNORE INTO local_list_snapshots (digest, body) VALUES (?, ?)",
                    (row.snapshot, snapshot_body),
                )
            )
        statements += [
            (
                "INSERT OR REPLACE INTO local_lists (charger_id, owner, version, entries,"
                " truncated, snapshot, refused, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.charger_id,
                    row.owner,
                    row.version,
                    row.entries,
                    int(row.truncated),
                    row.snapshot,
                    row.refused,
                    row.updated_at,
                ),
            ),
            (
                "DELETE FROM local_list_snapshots WHERE digest NOT IN"
                " (SELECT snapshot FROM local_lists WHERE snapshot IS NOT NULL)",
                (),
            ),
        ]
        await self.write(statements)

    async def local_list_snapshot(self, digest: str) -> bytes | None:
        """The stored body of a list snapshot."""
        row = await self.fetchone(
            "SELECT body FROM local_list_snapshots WHERE digest = ?", (digest,)
        )
        return None if row is None else bytes(row[0])

    async def tag_usage(self) -> dict[str, tuple[float, str | None]]:
        """tag key → (last presented, 2.0.1 idToken type presented)."""
        rows = await self.fetchall("SELECT tag_key, last_used_at, token_type FROM tag_usage")
        return {str(r[0]): (float(r[1]), r[2]) for r in rows}

    async def record_tag_usage(self, rows: Sequence[tuple[str, float, str | None]]) -> None:
        """Upsert (tag key, last presented, idToken type) rows in one transaction."""
        sql = (
            "INSERT INTO tag_usage (tag_key, last_used_at, token_type) VALUES (?, ?, ?)"
            " ON CONFLICT (tag_key) DO UPDATE SET"
            " last_used_at = max(last_used_at, excluded.last_used_at),"
            " token_type = coalesce(excluded.token_type, token_type)"
        )
        await self.write([(sql, row) for row in rows])
