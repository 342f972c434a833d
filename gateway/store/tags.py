"""Access ids, vehicles and learned tags: lookups, the Flipturn sync's stage-and-swap, the API's pages.

A sync streams the API's pages into stage tables in short transactions (the outbox shares this
file and its commits answer chargers), then swaps them in with one transaction of renames, so
the write lock is held for milliseconds whatever the list size. A failed sync drops its stage.

The renames are separate statements on the connection every read of the store shares, and a read
queued between two of them would run inside the swap's transaction and find no ``access_ids``
table: reads of the synced tables on that connection wait for the swap to commit.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.core.access import LearnedTag, SyncedTag
from gateway.errors import StoreError
from gateway.store.base import Record, Table

__all__ = ["TagTables"]


@dataclass(frozen=True, slots=True)
class AccessIdRecord(Record):
    """A row of ``access_ids``: one synced Flipturn access id."""

    id: int
    ocpp_id_tag: str
    tag_key: str  # normalised ocppIdTag (tags.normalise)
    type: str  # RFID | Vehicle
    name: str
    authorization_status: str  # Authorized | Revoked
    authorized_at: str | None
    revoked_at: str | None
    created_at: str | None
    updated_at: str | None
    vehicle: str | None  # JSON object or NULL
    customer: str | None  # JSON object or NULL


@dataclass(frozen=True, slots=True)
class VehicleRecord(Record):
    """A row of ``vehicles``: one synced Flipturn vehicle."""

    id: int
    name: str | None
    make: str | None
    model: str | None
    vin: str | None
    license_plate: str | None
    has_telematics: int
    customer: str | None  # JSON object or NULL
    access_ids: str  # JSON list of {id, ocppIdTag, authorizationStatus}


@dataclass(frozen=True, slots=True)
class LearnedTagRecord(Record):
    """A row of ``learned_tags``: the idTagInfo / idTokenInfo the cloud answered while online."""

    tag_key: str
    id_tag: str
    status: str
    expiry_date: str | None
    parent_id_tag: str | None
    learned_at: str


@dataclass(frozen=True, slots=True)
class SyncStateRecord(Record):
    """The row of ``sync_state``: the last sync's outcome."""

    name: str
    last_success_at: str | None
    last_error: str | None
    access_ids: int
    vehicles: int
    duration_s: float | None


class TagTables(Table):
    """The store's operations on these tables (a part of Store)."""

    _SYNC_NAME = "flipturn"

    _STAGE_PREFIX = "sync_stage_"

    _SYNCED_TABLES = ("access_ids", "vehicles")

    _DROP_CHUNK_ROWS = 2000

    # Clear while a swap renames the synced tables (None until the first swap).
    _tables_in_place: asyncio.Event | None = None

    async def _fetch_synced(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """``fetchall`` of a read of the synced tables, once no swap is renaming them."""
        in_place = self._tables_in_place
        while in_place is not None and not in_place.is_set():
            await in_place.wait()
        return await self.fetchall(sql, params)

    async def _fetch_synced_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = await self._fetch_synced(sql, params)
        return rows[0] if rows else None

    # One statement for both tables: the synced row (kind 0) and the learned row (kind 1).
    _LOOKUP_TAG_SQL = (
        "SELECT 0, id, ocpp_id_tag, authorization_status, revoked_at, NULL FROM access_ids"
        " WHERE tag_key = ?1 UNION ALL"
        " SELECT 1, id_tag, status, expiry_date, parent_id_tag, learned_at FROM learned_tags"
        " WHERE tag_key = ?1"
    )

    async def lookup_tag(self, key: str) -> tuple[SyncedTag | None, LearnedTag | None]:
        """The synced access id and the learned entry for a normalised tag key."""
        rows: list[Any]
        try:
            reader = self._reader()
            if reader is None:
                raise sqlite3.OperationalError("no separate reader for an in-memory store")
            rows = reader.execute(self._LOOKUP_TAG_SQL, (key,)).fetchall()
        except sqlite3.Error:
            try:
                rows = await self._fetch_synced(self._LOOKUP_TAG_SQL, (key,))
            except StoreError as exc:
                raise StoreError(f"tag lookup failed: {exc}") from exc
        synced: SyncedTag | None = None
        learned: LearnedTag | None = None
        for row in rows:
            if row[0] == 0:
                synced = SyncedTag(*row[1:5])
            else:
                learned = LearnedTag(*row[1:6])
        return synced, learned

    async def find_access_id(self, key: str) -> AccessIdRecord | None:
        """The full synced access id row for a normalised tag key."""
        row = await self._fetch_synced_one("SELECT * FROM access_ids WHERE tag_key = ?", (key,))
        return None if row is None else AccessIdRecord.of(row)

    async def find_learned_tag(self, key: str) -> LearnedTagRecord | None:
        """The learned cache row for a normalised tag key."""
        row = await self.fetchone("SELECT * FROM learned_tags WHERE tag_key = ?", (key,))
        return None if row is None else LearnedTagRecord.of(row)

    async def learn_tags(
        self, entries: Sequence[tuple[str, str, str, str | None, str | None]], learned_at: str
    ) -> None:
        """Upsert learned (key, id_tag, status, expiry, parent) entries; durable on return."""
        await self.learn_tag_rows([(*entry, learned_at) for entry in entries])

    _LEARN_SQL = (
        "INSERT INTO learned_tags"
        " (tag_key, id_tag, status, expiry_date, parent_id_tag, learned_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tag_key) DO UPDATE SET"
        " id_tag = excluded.id_tag, status = excluded.status,"
        " expiry_date = excluded.expiry_date, parent_id_tag = excluded.parent_id_tag,"
        " learned_at = excluded.learned_at"
    )

    async def learn_tag_rows(
        self, rows: Sequence[tuple[str, str, str, str | None, str | None, str]]
    ) -> None:
        """Upsert learned (key, id_tag, status, expiry, parent, learned_at) rows in one
        transaction, in order (a later row for a key wins); durable on return."""
        await self.write([(self._LEARN_SQL, row) for row in rows])

    async def create_sync_stage(self, now_s: float) -> str:
        """Create empty stage tables shaped like the synced ones; returns the stage's name."""
        stage = f"{self._STAGE_PREFIX}{int(now_s)}_{secrets.token_hex(4)}"
        async with self.transaction() as db:
            for table in self._SYNCED_TABLES:
                async with db.execute(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
                ) as cur:
                    row = await cur.fetchone()
                if row is None:
                    raise StoreError(f"table {table} is missing")
                ddl = re.sub(
                    rf'^CREATE TABLE\s+"?{table}"?', f'CREATE TABLE "{stage}_{table}"', row[0]
                )
                await db.execute(ddl)
        return stage

    async def stage_access_ids(self, stage: str, rows: Sequence[Sequence[Any]]) -> None:
        """Append access id rows (``flipturn.ACCESS_ID_COLUMNS`` order) to the stage."""
        await self._stage_rows(f"{stage}_access_ids", rows, 12)

    async def stage_vehicles(self, stage: str, rows: Sequence[Sequence[Any]]) -> None:
        """Append vehicle rows (``flipturn.VEHICLE_COLUMNS`` order) to the stage."""
        await self._stage_rows(f"{stage}_vehicles", rows, 9)

    async def _stage_rows(self, table: str, rows: Sequence[Sequence[Any]], width: int) -> None:
        marks = ", ".join("?" * width)
        async with self.transaction() as db:
            await db.executemany(f'INSERT INTO "{table}" VALUES ({marks})', rows)

    async def swap_sync_stage(
        self, stage: str, *, access_ids: int, vehicles: int, duration_s: float, at: str
    ) -> None:
        """Replace the synced tables with the stage and record the success, in one transaction."""
        in_place = self._tables_in_place = self._tables_in_place or asyncio.Event()
        try:
            async with self.transaction() as db:
                # From the first rename to the commit, reads on this connection would see the
                # tables half swapped; those queued before this line run before the renames.
                in_place.clear()
                for table in self._SYNCED_TABLES:
                    await db.execute(f'ALTER TABLE "{table}" RENAME TO "{stage}_old_{table}"')
                    await db.execute(f'ALTER TABLE "{stage}_{table}" RENAME TO "{table}"')
                await db.execute(
                    "INSERT INTO sync_state"
                    " (name, last_success_at, last_error, access_ids, vehicles, duration_s)"
                    " VALUES (?, ?, NULL, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                    " last_success_at = excluded.last_success_at, last_error = NULL,"
                    " access_ids = excluded.access_ids, vehicles = excluded.vehicles,"
                    " duration_s = excluded.duration_s",
                    (self._SYNC_NAME, at, access_ids, vehicles, duration_s),
                )
        finally:
            in_place.set()
        # The replaced tables are dropped afterwards, each drop in its own short transaction.
        await self.drop_sync_stage(stage)

    async def drop_sync_stage(self, stage: str) -> None:
        """Drop every table of ``stage`` (its staged and its replaced tables)."""
        rows = await self.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, ?) = ?",
            (len(stage) + 1, f"{stage}_"),
        )
        for row in rows:
            await self._drop_gradually(row[0])

    async def _drop_gradually(self, table: str) -> None:
        # Dropping a 100k-row table in one statement holds the write lock for as long as it takes
        # to free every page; emptying it in chunks first keeps each transaction short.
        while True:
            async with self.transaction() as db:
                cursor = await db.execute(
                    f'DELETE FROM "{table}" WHERE rowid IN'
                    f' (SELECT rowid FROM "{table}" LIMIT {self._DROP_CHUNK_ROWS})'
                )
                if cursor.rowcount < self._DROP_CHUNK_ROWS:
                    await db.execute(f'DROP TABLE "{table}"')
                    return

    async def drop_stale_sync_stages(self, now_s: float, max_age_s: float) -> int:
        """Drop stages left behind by a crashed sync; returns how many were dropped."""
        rows = await self.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, ?) = ?",
            (len(self._STAGE_PREFIX), self._STAGE_PREFIX),
        )
        stages: set[str] = set()
        for row in rows:
            match = re.match(rf"({self._STAGE_PREFIX}(\d+)_[0-9a-f]+)_", row[0])
            if match and now_s - int(match.group(2)) > max_age_s:
                stages.add(match.group(1))
        for stage in stages:
            await self.drop_sync_stage(stage)
        return len(stages)

    async def record_sync_failure(self, error: str) -> None:
        """Record the error of a failed sync; the last success stays as it was."""
        await self.write(
            [
                (
                    "INSERT INTO sync_state (name, last_error) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET last_error = excluded.last_error",
                    (self._SYNC_NAME, error),
                )
            ]
        )

    async def sync_status(self) -> SyncStateRecord | None:
        """The persisted sync state (last success, last error, counts, duration)."""
        row = await self.fetchone("SELECT * FROM sync_state WHERE name = ?", (self._SYNC_NAME,))
        return None if row is None else SyncStateRecord.of(row)

    async def count_access_ids(self) -> int:
        """How many access ids the cache holds."""
        row = await self._fetch_synced_one("SELECT count(*) FROM access_ids")
        return int(row[0]) if row else 0

    async def list_access_ids(self, after_id: int | None, limit: int) -> list[AccessIdRecord]:
        """Up to ``limit`` access ids with id above ``after_id``, by id."""
        rows = await self._fetch_synced(
            "SELECT * FROM access_ids WHERE id > ? ORDER BY id LIMIT ?",
            (after_id if after_id is not None else -(2**63), limit),
        )
        return [AccessIdRecord.of(row) for row in rows]

    async def get_access_id(self, access_id: int) -> AccessIdRecord | None:
        """One access id by its Flipturn id."""
        row = await self._fetch_synced_one("SELECT * FROM access_ids WHERE id = ?", (access_id,))
        return None if row is None else AccessIdRecord.of(row)

    async def list_vehicles(self, after_id: int | None, limit: int) -> list[VehicleRecord]:
        """Up to ``limit`` vehicles with id above ``after_id``, by id."""
        rows = await self._fetch_synced(
            "SELECT * FROM vehicles WHERE id > ? ORDER BY id LIMIT ?",
            (after_id if after_id is not None else -(2**63), limit),
        )
        return [VehicleRecord.of(row) for row in rows]

    async def get_vehicle(self, vehicle_id: int) -> VehicleRecord | None:
        """One vehicle by its Flipturn id."""
        row = await self._fetch_synced_one("SELECT * FROM vehicles WHERE id = ?", (vehicle_id,))
        return None if row is None else VehicleRecord.of(row)

    async def authorized_access_ids(self) -> list[tuple[str, str, str]]:
        """(tag key, ocppIdTag, type) of every Authorized access id."""
        rows = await self._fetch_synced(
            "SELECT tag_key, ocpp_id_tag, type FROM access_ids"
            " WHERE authorization_status = 'Authorized'"
        )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]
