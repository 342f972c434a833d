"""The SQLite store: one file in WAL mode, every SQL statement of the gateway in this module.

Durability: ``synchronous=FULL`` and group commit. Writes that acknowledge a charger's message go
through :meth:`Store.write`, which batches whatever is waiting into one transaction and returns only
after that transaction is committed (fsync'd). Several chargers' messages then share one fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.errors import StoreError
from gateway.tags import LearnedTag, SyncedTag

__all__ = ["SCHEMA_VERSION", "LocalListRow", "OutboxRow", "Statement", "Store"]

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
    # 2: the depot view (gateway.depot), one JSON record per charger, written in batches
    """
    CREATE TABLE depot_chargers (
        charger_id TEXT PRIMARY KEY,
        record TEXT NOT NULL,                  -- JSON (gateway.depot.DepotView.record)
        updated_at REAL NOT NULL               -- unix seconds
    );
    """,
    # 3: the chargers' Local Authorization Lists (gateway.local_list)
    """
    CREATE TABLE local_lists (                 -- per charger: who owns its list, what is on it
        charger_id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,                   -- gateway | cloud | none
        version INTEGER,                       -- the list version the charger last reported/accepted
        entries INTEGER NOT NULL DEFAULT 0,
        truncated INTEGER NOT NULL DEFAULT 0,
        snapshot TEXT,                         -- local_list_snapshots.digest of what the gateway sent
        refused TEXT,                          -- why the charger is left alone (NULL: it is not)
        updated_at REAL NOT NULL
    );
    CREATE TABLE local_list_snapshots (        -- list contents, shared by chargers holding the same
        digest TEXT PRIMARY KEY,
        body BLOB NOT NULL                     -- zlib of JSON [[idTag, idToken type], ...]
    );
    CREATE TABLE tag_usage (                   -- when a tag was last presented (most recent first)
        tag_key TEXT PRIMARY KEY,              -- normalised tag (tags.normalise)
        last_used_at REAL NOT NULL,            -- unix seconds
        token_type TEXT                        -- 2.0.1 idToken type as presented, if any
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


@dataclass
class _Batch:
    statements: list[Statement]
    done: asyncio.Future[None]

    def settle(self, error: Exception | None) -> None:
        """Wake the writer (unless it stopped waiting, e.g. cancelled at shutdown)."""
        if self.done.done():
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)


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
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        try:
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("PRAGMA foreign_keys=ON")
            store = cls(db, path)
            await store._migrate()
        except BaseException as exc:
            await db.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StoreError(f"cannot open store {path}: {exc}") from exc
            raise
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
        self._close_reader()
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
                await self._commit([st for batch in batches for st in batch.statements])
            except (sqlite3.Error, ValueError):
                # One batch spoilt the group: commit each alone so only it fails.
                for batch in batches:
                    try:
                        await self._commit(batch.statements)
                    except (sqlite3.Error, ValueError) as exc:
                        batch.settle(StoreError(f"write failed: {exc}"))
                    else:
                        batch.settle(None)
                continue
            for batch in batches:
                batch.settle(None)

    async def _commit(self, statements: list[Statement]) -> None:
        """One transaction; runs of the same SQL go to the database thread as one executemany."""
        async with self.transaction() as db:
            start = 0
            while start < len(statements):
                sql = statements[start][0]
                end = start + 1
                while end < len(statements) and statements[end][0] == sql:
                    end += 1
                if end - start == 1:
                    await db.execute(sql, statements[start][1])
                else:
                    await db.executemany(sql, [params for _, params in statements[start:end]])
                start = end

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
    #
    # A sync streams the API's pages into stage tables in short transactions (the outbox shares this
    # file and its commits answer chargers), then swaps them in with one transaction of renames, so
    # the write lock is held for milliseconds whatever the list size. A failed sync drops its stage.

    _tag_reader: sqlite3.Connection | None = None
    _tag_reader_closed = False
    _SYNC_NAME = "flipturn"
    _STAGE_PREFIX = "sync_stage_"
    _SYNCED_TABLES = ("access_ids", "vehicles")
    _DROP_CHUNK_ROWS = 2000

    def _reader(self) -> sqlite3.Connection | None:
        """A read-only connection for tag point lookups, used on the event loop thread.

        An indexed point read takes microseconds; the aiosqlite thread hop costs more than the
        read itself. WAL readers never wait for the writer, and the short busy timeout bounds the
        rare wait (WAL recovery) before falling back to the shared connection.
        """
        if self._tag_reader is None and self.path != ":memory:" and not self._tag_reader_closed:
            uri = Path(self.path).resolve().as_uri() + "?mode=ro"
            reader = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            reader.execute("PRAGMA busy_timeout=100")
            self._tag_reader = reader
        return self._tag_reader

    def _read_now(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row] | None:
        """Rows of a small indexed read through the read-only connection, on the event loop
        thread; None if there is no such connection or it failed (then use ``fetchall``).

        It sees every committed write, i.e. every ``write`` that has returned.
        """
        reader = self._reader()
        if reader is None:
            return None
        try:
            cursor = reader.cursor()
            cursor.row_factory = sqlite3.Row
            return cursor.execute(sql, params).fetchall()
        except sqlite3.Error:
            return None

    def _close_reader(self) -> None:
        self._tag_reader_closed = True
        if self._tag_reader is not None:
            self._tag_reader.close()
            self._tag_reader = None

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
                rows = await self.fetchall(self._LOOKUP_TAG_SQL, (key,))
            except (sqlite3.Error, ValueError) as exc:
                raise StoreError(f"tag lookup failed: {exc}") from exc
        synced: SyncedTag | None = None
        learned: LearnedTag | None = None
        for row in rows:
            if row[0] == 0:
                synced = SyncedTag(*row[1:5])
            else:
                learned = LearnedTag(*row[1:6])
        return synced, learned

    async def find_access_id(self, key: str) -> sqlite3.Row | None:
        """The full synced access id row for a normalised tag key."""
        return await self.fetchone("SELECT * FROM access_ids WHERE tag_key = ?", (key,))

    async def find_learned_tag(self, key: str) -> sqlite3.Row | None:
        """The learned cache row for a normalised tag key."""
        return await self.fetchone("SELECT * FROM learned_tags WHERE tag_key = ?", (key,))

    async def learn_tags(
        self, entries: Sequence[tuple[str, str, str, str | None, str | None]], learned_at: str
    ) -> None:
        """Upsert learned (key, id_tag, status, expiry, parent) entries; durable on return."""
        sql = (
            "INSERT INTO learned_tags"
            " (tag_key, id_tag, status, expiry_date, parent_id_tag, learned_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (tag_key) DO UPDATE SET"
            " id_tag = excluded.id_tag, status = excluded.status,"
            " expiry_date = excluded.expiry_date, parent_id_tag = excluded.parent_id_tag,"
            " learned_at = excluded.learned_at"
        )
        await self.write([(sql, (*entry, learned_at)) for entry in entries])

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
        async with self.transaction() as db:
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

    async def sync_status(self) -> sqlite3.Row | None:
        """The persisted sync state (last success, last error, counts, duration)."""
        return await self.fetchone("SELECT * FROM sync_state WHERE name = ?", (self._SYNC_NAME,))

    async def count_access_ids(self) -> int:
        """How many access ids the cache holds."""
        row = await self.fetchone("SELECT count(*) FROM access_ids")
        return int(row[0]) if row else 0

    async def list_access_ids(self, after_id: int | None, limit: int) -> list[sqlite3.Row]:
        """Up to ``limit`` access ids with id above ``after_id``, by id."""
        return await self.fetchall(
            "SELECT * FROM access_ids WHERE id > ? ORDER BY id LIMIT ?",
            (after_id if after_id is not None else -(2**63), limit),
        )

    async def get_access_id(self, access_id: int) -> sqlite3.Row | None:
        """One access id by its Flipturn id."""
        return await self.fetchone("SELECT * FROM access_ids WHERE id = ?", (access_id,))

    async def list_vehicles(self, after_id: int | None, limit: int) -> list[sqlite3.Row]:
        """Up to ``limit`` vehicles with id above ``after_id``, by id."""
        return await self.fetchall(
            "SELECT * FROM vehicles WHERE id > ? ORDER BY id LIMIT ?",
            (after_id if after_id is not None else -(2**63), limit),
        )

    async def get_vehicle(self, vehicle_id: int) -> sqlite3.Row | None:
        """One vehicle by its Flipturn id."""
        return await self.fetchone("SELECT * FROM vehicles WHERE id = ?", (vehicle_id,))

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
    _active_cache: dict[str, list[sqlite3.Row]] | None = None
    _ACTIVE_CACHE_MAX = 4096

    async def put_reservations(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert or replace reservation rows (values in table column order), durably."""
        try:
            await self.write([(self._PUT_RESERVATION, tuple(row)) for row in rows])
        finally:
            self._active_cache = None

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
        rows = self._read_now(sql, (state, charger_id))
        if rows is None:
            return await self.fetchall(sql, (state, charger_id))  # not cached: it awaits
        if state == "active":
            if cache is None or len(cache) >= self._ACTIVE_CACHE_MAX:
                cache = self._active_cache = {}
            cache[charger_id] = rows
        return list(rows)

    # --- depot view -------------------------------------------------------------------------

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

    # --- local authorization lists (gateway.local_list_push) --------------------------------

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

    async def authorized_access_ids(self) -> list[tuple[str, str, str]]:
        """(tag key, ocppIdTag, type) of every Authorized access id."""
        rows = await self.fetchall(
            "SELECT tag_key, ocpp_id_tag, type FROM access_ids"
            " WHERE authorization_status = 'Authorized'"
        )
        return [(str(r[0]), str(r[1]), str(r[2])) for r in rows]

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
