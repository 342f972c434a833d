"""The SQLite store: one file in WAL mode, every SQL statement of the gateway in this module.

Durability: ``synchronous=FULL`` and group commit. Writes that acknowledge a charger's message go
through :meth:`Store.write`, which batches whatever is waiting into one transaction and returns only
after that transaction is committed (fsync'd). Several chargers' messages then share one fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import StoreError

__all__ = ["SCHEMA_VERSION", "Statement", "Store"]

log = logging.getLogger(__name__)

Statement = tuple[str, Sequence[Any]]

# Each entry migrates from version i to i+1; applied in order at start-up, each in its own transaction.
MIGRATIONS: tuple[str, ...] = (
    # 1: initial schema
    """
    CREATE TABLE access_ids (
        id INTEGER PRIMARY KEY,
        ocpp_id_tag TEXT NOT NULL,
        tag_key TEXT NOT NULL UNIQUE,          -- normalised ocppIdTag (tags.normalise)
        type TEXT NOT NULL,                    -- RFID | Vehicle
        name TEXT NOT NULL,
        authorization_status TEXT NOT NULL,    -- Authorized | Revoked
        authorized_at TEXT,
        revoked_at TEXT,
        created_at TEXT,
        updated_at TEXT,
        vehicle TEXT,                          -- JSON object or NULL
        customer TEXT                          -- JSON object or NULL
    );
    CREATE TABLE vehicles (
        id INTEGER PRIMARY KEY,
        name TEXT,
        make TEXT,
        model TEXT,
        vin TEXT,
        license_plate TEXT,
        has_telematics INTEGER NOT NULL DEFAULT 0,
        customer TEXT,                         -- JSON object or NULL
        access_ids TEXT NOT NULL DEFAULT '[]'  -- JSON list of {id, ocppIdTag, authorizationStatus}
    );
    CREATE TABLE learned_tags (                -- idTagInfo / idTokenInfo the cloud answered while online
        tag_key TEXT PRIMARY KEY,
        id_tag TEXT NOT NULL,
        status TEXT NOT NULL,
        expiry_date TEXT,
        parent_id_tag TEXT,
        learned_at TEXT NOT NULL
    );
    CREATE TABLE sync_state (
        name TEXT PRIMARY KEY,
        last_success_at TEXT,
        last_error TEXT,
        access_ids INTEGER NOT NULL DEFAULT 0,
        vehicles INTEGER NOT NULL DEFAULT 0,
        duration_s REAL
    );
    CREATE TABLE outbox (                      -- charger CALLs answered locally, waiting for the cloud
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        charger_id TEXT NOT NULL,
        ocpp_version TEXT NOT NULL,
        message_id TEXT NOT NULL,
        action TEXT NOT NULL,
        payload TEXT NOT NULL,                 -- JSON exactly as the charger sent it
        created_at REAL NOT NULL,              -- unix seconds
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX outbox_by_charger ON outbox (charger_id, seq);
    CREATE TABLE dead_letters (                -- replayed messages the cloud refused for good
        seq INTEGER PRIMARY KEY,
        charger_id TEXT NOT NULL,
        ocpp_version TEXT NOT NULL,
        message_id TEXT NOT NULL,
        action TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at REAL NOT NULL,
        failed_at REAL NOT NULL,
        attempts INTEGER NOT NULL,
        error_code TEXT NOT NULL,
        error_description TEXT NOT NULL
    );
    CREATE TABLE boot_notifications (          -- the latest BootNotification of each charger
        charger_id TEXT PRIMARY KEY,
        ocpp_version TEXT NOT NULL,
        message_id TEXT NOT NULL,
        payload TEXT NOT NULL,
        received_at REAL NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE tx_ids (                      -- OCPP 1.6 transaction ids answered locally
        charger_id TEXT NOT NULL,
        local_id INTEGER NOT NULL,
        cloud_id INTEGER,                      -- NULL until the replayed StartTransaction is answered
        created_at REAL NOT NULL,
        PRIMARY KEY (charger_id, local_id)
    );
    CREATE INDEX tx_ids_by_cloud ON tx_ids (charger_id, cloud_id);
    CREATE TABLE reservations (
        charger_id TEXT NOT NULL,
        reservation_id INTEGER NOT NULL,
        connector_id INTEGER,                  -- 1.6 connectorId / 2.0.1 evseId (NULL: any)
        id_tag TEXT NOT NULL,                  -- as sent to the charger (compared normalised)
        parent_id_tag TEXT,
        expiry_date TEXT NOT NULL,             -- ISO 8601 UTC
        source TEXT NOT NULL,                  -- api | cloud
        status TEXT NOT NULL,                  -- the charger's answer (Accepted, ...), or NoAnswer
        state TEXT NOT NULL,                   -- active | used | cancelled | expired | removed |
                                               -- refused | failed (see gateway.reservations)
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (charger_id, reservation_id)
    );
    CREATE INDEX reservations_by_state ON reservations (state, charger_id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass
class _Batch:
    statements: list[Statement]
    done: asyncio.Future[None]


class Store:
    """Named operations over the gateway's SQLite file. Open with :meth:`open`."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()  # one writer transaction at a time on this connection
        self._waiting: list[_Batch] = []
        self._flusher: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path) -> Store:
        """Open (creating if needed) the store, switch to WAL and apply pending migrations."""
        path = str(path)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("PRAGMA foreign_keys=ON")
            store = cls(db, path)
            await store._migrate()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        return store

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store schema version {current} is newer than this gateway ({SCHEMA_VERSION})"
            )
        for version in range(current, SCHEMA_VERSION):
            script = MIGRATIONS[version]
            await self._db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version={version + 1};\nCOMMIT;"
            )
            log.info("store migrated to schema version %d", version + 1)

    async def close(self) -> None:
        """Wait for pending writes, then close the connection."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        await self._db.close()

    async def healthy(self) -> bool:
        """True if the file answers a trivial query."""
        try:
            async with self._db.execute("SELECT 1") as cur:
                await cur.fetchone()
        except (sqlite3.Error, ValueError):
            return False
        return True

    # --- transactions and durable group commit ---------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """An exclusive write transaction; committed on success, rolled back on error."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def write(self, statements: Sequence[Statement]) -> None:
        """Run ``statements`` atomically; return once they are committed to disk.

        Callers that arrive while a commit is in progress are batched into the next one.
        """
        loop = asyncio.get_running_loop()
        batch = _Batch(list(statements), loop.create_future())
        self._waiting.append(batch)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await batch.done

    async def _flush(self) -> None:
        while self._waiting:
            batches, self._waiting = self._waiting, []
            try:
                async with self.transaction() as db:
                    for batch in batches:
                        await db.execute("SAVEPOINT batch")
                        try:
                            for sql, params in batch.statements:
                                await db.execute(sql, params)
                        except sqlite3.Error as exc:
                            await db.execute("ROLLBACK TO batch")
                            batch.done.set_exception(StoreError(str(exc)))
                        await db.execute("RELEASE batch")
            except (sqlite3.Error, ValueError) as exc:
                for batch in batches:
                    if not batch.done.done():
                        batch.done.set_exception(StoreError(f"commit failed: {exc}"))
                continue
            for batch in batches:
                if not batch.done.done():
                    batch.done.set_result(None)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one read query."""
        async with self._db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of one read query, or None."""
        async with self._db.execute(sql, params) as cur:
            row: sqlite3.Row | None = await cur.fetchone()
            return row

    # --- access ids, vehicles, learned cache (Flipturn sync) --------------------------------

    # --- outbox, boot notifications, 1.6 transaction ids (store-and-forward) ---------------

    # --- reservations -----------------------------------------------------------------------

    _PUT_RESERVATION = (
        "INSERT OR REPLACE INTO reservations (charger_id, reservation_id, connector_id, id_tag,"
        " parent_id_tag, expiry_date, source, status, state, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    async def put_reservations(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert or replace reservation rows (values in table column order), durably."""
        await self.write([(self._PUT_RESERVATION, tuple(row)) for row in rows])

    async def reservation(self, charger_id: str, reservation_id: int) -> sqlite3.Row | None:
        """One reservation row, or None."""
        return await self.fetchone(
            "SELECT * FROM reservations WHERE charger_id = ? AND reservation_id = ?",
            (charger_id, reservation_id),
        )

    async def reservations_in_state(
        self, state: str, charger_id: str | None = None
    ) -> list[sqlite3.Row]:
        """Reservation rows in ``state`` (of one charger, or all), oldest first."""
        if charger_id is None:
            return await self.fetchall(
                "SELECT * FROM reservations WHERE state = ? ORDER BY created_at, reservation_id",
                (state,),
            )
        return await self.fetchall(
            "SELECT * FROM reservations WHERE state = ? AND charger_id = ?"
            " ORDER BY created_at, reservation_id",
            (state, charger_id),
        )
