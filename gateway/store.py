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

__all__ = ["SCHEMA_VERSION", "OutboxRow", "Statement", "Store"]

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
        local_tx_id INTEGER,                   -- 1.6 StartTransaction answered locally: its local id
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
        id_tag TEXT NOT NULL,
        parent_id_tag TEXT,
        expiry_date TEXT NOT NULL,             -- ISO 8601 UTC
        source TEXT NOT NULL,                  -- api | cloud
        status TEXT NOT NULL,                  -- the charger's answer, or Pending
        state TEXT NOT NULL,                   -- active | used | cancelled | expired | removed | refused
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (charger_id, reservation_id)
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One queued charger CALL."""

    seq: int
    charger_id: str
    version: str
    message_id: str
    action: str
    payload: str
    created_at: float
    local_tx_id: int | None
    attempts: int
    next_attempt_at: float

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> OutboxRow:
        return cls(
            seq=int(row["seq"]),
            charger_id=str(row["charger_id"]),
            version=str(row["ocpp_version"]),
            message_id=str(row["message_id"]),
            action=str(row["action"]),
            payload=str(row["payload"]),
            created_at=float(row["created_at"]),
            local_tx_id=None if row["local_tx_id"] is None else int(row["local_tx_id"]),
            attempts=int(row["attempts"]),
            next_attempt_at=float(row["next_attempt_at"]),
        )


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

    async def enqueue(
        self,
        charger_id: str,
        version: str,
        message_id: str,
        action: str,
        payload: str,
        created_at: float,
        *,
        local_tx_id: int | None = None,
    ) -> None:
        """Durably queue a charger CALL for replay (and reserve its local transaction id)."""
        statements: list[Statement] = [
            (
                "INSERT INTO outbox (charger_id, ocpp_version, message_id, action, payload,"
                " created_at, local_tx_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (charger_id, version, message_id, action, payload, created_at, local_tx_id),
            )
        ]
        if local_tx_id is not None:
            statements.append(
                (
                    "INSERT INTO tx_ids (charger_id, local_id, cloud_id, created_at)"
                    " VALUES (?, ?, NULL, ?)",
                    (charger_id, local_tx_id, created_at),
                )
            )
        await self.write(statements)

    async def max_local_tx_id(self) -> int | None:
        """The highest local transaction id ever handed out, or None."""
        row = await self.fetchone("SELECT MAX(local_id) FROM tx_ids")
        return int(row[0]) if row and row[0] is not None else None

    async def tx_ids(self, charger_id: str) -> list[tuple[int, int | None]]:
        """(local id, cloud id or None) for every local transaction of a charger."""
        rows = await self.fetchall(
            "SELECT local_id, cloud_id FROM tx_ids WHERE charger_id = ?", (charger_id,)
        )
        return [(int(r[0]), None if r[1] is None else int(r[1])) for r in rows]

    async def pending(self, charger_id: str, limit: int = 100) -> list[OutboxRow]:
        """The oldest queued messages of a charger, in order."""
        rows = await self.fetchall(
            "SELECT * FROM outbox WHERE charger_id = ? ORDER BY seq LIMIT ?", (charger_id, limit)
        )
        return [OutboxRow.from_row(r) for r in rows]

    async def backlog(self) -> dict[str, tuple[int, float]]:
        """charger id → (pending messages, created_at of the oldest)."""
        rows = await self.fetchall(
            "SELECT charger_id, COUNT(*), MIN(created_at) FROM outbox GROUP BY charger_id"
        )
        return {str(r[0]): (int(r[1]), float(r[2])) for r in rows}

    async def backlog_versions(self) -> dict[str, str]:
        """charger id → OCPP version of its oldest queued message."""
        rows = await self.fetchall(
            "SELECT charger_id, ocpp_version FROM outbox WHERE seq IN"
            " (SELECT MIN(seq) FROM outbox GROUP BY charger_id)"
        )
        return {str(r[0]): str(r[1]) for r in rows}

    async def delivered(self, seq: int, *, tx: tuple[str, int, int] | None = None) -> None:
        """Remove a message the cloud answered; ``tx`` = (charger, local id, cloud id) to bind."""
        statements: list[Statement] = [("DELETE FROM outbox WHERE seq = ?", (seq,))]
        if tx is not None:
            statements.append(
                (
                    "UPDATE tx_ids SET cloud_id = ? WHERE charger_id = ? AND local_id = ?",
                    (tx[2], tx[0], tx[1]),
                )
            )
        await self.write(statements)

    async def retry_later(self, seq: int, *, next_attempt_at: float, error: str) -> None:
        """Count a failed attempt and hold the message until ``next_attempt_at``."""
        await self.write(
            [
                (
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                    " WHERE seq = ?",
                    (next_attempt_at, error, seq),
                )
            ]
        )

    async def dead_letter(self, row: OutboxRow, *, code: str, description: str, now: float) -> None:
        """Move a message the cloud refused for good out of the queue, keeping it for operators."""
        await self.write(
            [
                (
                    "INSERT OR REPLACE INTO dead_letters (seq, charger_id, ocpp_version, message_id,"
                    " action, payload, created_at, failed_at, attempts, error_code,"
                    " error_description) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        row.seq,
                        row.charger_id,
                        row.version,
                        row.message_id,
                        row.action,
                        row.payload,
                        row.created_at,
                        now,
                        row.attempts + 1,
                        code,
                        description,
                    ),
                ),
                ("DELETE FROM outbox WHERE seq = ?", (row.seq,)),
            ]
        )

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters, as plain dicts."""
        rows = await self.fetchall(
            "SELECT * FROM dead_letters ORDER BY failed_at DESC, seq DESC LIMIT ?", (limit,)
        )
        return [dict(r) for r in rows]

    async def dead_letter_count(self) -> int:
        row = await self.fetchone("SELECT COUNT(*) FROM dead_letters")
        return int(row[0]) if row else 0

    async def prune_outbox(
        self,
        *,
        before: float,
        transactional_before: float,
        transactional: Sequence[str],
        max_rows: int,
    ) -> int:
        """Bound a queue nothing drains (standalone): drop old rows, then the oldest past max_rows."""
        marks = ",".join("?" * len(transactional))
        async with self.transaction() as db:
            cur = await db.execute(
                f"DELETE FROM outbox WHERE (action NOT IN ({marks}) AND created_at < ?)"
                f" OR (action IN ({marks}) AND created_at < ?)",
                (*transactional, before, *transactional, transactional_before),
            )
            removed = cur.rowcount
            cur = await db.execute(
                "DELETE FROM outbox WHERE seq <= (SELECT seq FROM outbox ORDER BY seq DESC"
                " LIMIT 1 OFFSET ?)",
                (max_rows,),
            )
            removed += cur.rowcount
        return max(removed, 0)

    async def save_boot(
        self,
        charger_id: str,
        version: str,
        message_id: str,
        payload: str,
        received_at: float,
        *,
        delivered: bool,
    ) -> None:
        """Keep a charger's latest BootNotification (durably: it is replayed first)."""
        await self.write(
            [
                (
                    "INSERT OR REPLACE INTO boot_notifications (charger_id, ocpp_version,"
                    " message_id, payload, received_at, delivered) VALUES (?, ?, ?, ?, ?, ?)",
                    (charger_id, version, message_id, payload, received_at, int(delivered)),
                )
            ]
        )

    async def undelivered_boot(self, charger_id: str) -> tuple[str, str] | None:
        """(message id, payload) of a BootNotification the cloud has not seen, if any."""
        row = await self.fetchone(
            "SELECT message_id, payload FROM boot_notifications"
            " WHERE charger_id = ? AND delivered = 0",
            (charger_id,),
        )
        return (str(row[0]), str(row[1])) if row else None

    async def boot_delivered(self, charger_id: str) -> None:
        await self.write(
            [("UPDATE boot_notifications SET delivered = 1 WHERE charger_id = ?", (charger_id,))]
        )

    # --- reservations -----------------------------------------------------------------------
