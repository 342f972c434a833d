"""The SQLite store: one file in WAL mode, every SQL statement of the gateway in this module.

Durability: ``synchronous=FULL`` and group commit. Writes that acknowledge a charger's message go
through :meth:`Store.write`, which batches whatever is waiting into one transaction and returns only
after that transaction is committed (fsync'd). Several chargers' messages then share one fsync.

Integrity (docs/reliability.md): a group commit counts as done only if the file still has its name
afterwards (one ``stat`` of the path against the inode opened); the outcome of every commit and a
periodic probe (free space, the file's identity, a tiny commit when nothing else committed lately)
make :meth:`Store.status` the truth about whether acknowledgements can be given. Start-up runs
``PRAGMA quick_check`` and a probe commit, and never writes into a file it cannot read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiosqlite

from gateway.errors import StoreError
from gateway.store.base import Statement, log
from gateway.store.boot import BootTable
from gateway.store.depot import DepotTable
from gateway.store.local_lists import LocalListRow, LocalListTable
from gateway.store.outbox import (
    RESEND_WINDOW_S,
    ChargerState,
    DeadLetterRow,
    OutboxRow,
    OutboxTable,
    call_digest,
)
from gateway.store.reservations import ReservationTable
from gateway.store.site import SITE_MIGRATION, SiteTable
from gateway.store.tags import TagTables

__all__ = [
    "RESEND_WINDOW_S",
    "SCHEMA_VERSION",
    "ChargerState",
    "DeadLetterRow",
    "LocalListRow",
    "OutboxRow",
    "Statement",
    "Store",
    "backup_file",
    "call_digest",
    "check_file",
    "fault_of",
]


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
    # 2: the depot view (gateway.core.depot), one JSON record per charger, written in batches
    """
    CREATE TABLE depot_chargers (
        charger_id TEXT PRIMARY KEY,
        record TEXT NOT NULL,                  -- JSON (gateway.depot.DepotView.record)
        updated_at REAL NOT NULL               -- unix seconds
    );
    """,
    # 3: charger resends answered like the first time (design.md "Store integrity and exactly-once")
    """
    ALTER TABLE outbox ADD COLUMN digest BLOB;     -- call_digest(action, payload); NULL: not deduped
    ALTER TABLE outbox ADD COLUMN answer TEXT;     -- the CALLRESULT payload the charger was given
    CREATE INDEX outbox_by_message ON outbox (charger_id, message_id);
    CREATE TABLE answered (                    -- delivered or dead-lettered CALLs, kept RESEND_WINDOW_S
        charger_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        digest BLOB NOT NULL,
        answer TEXT NOT NULL,
        done_at REAL NOT NULL,                 -- unix seconds
        PRIMARY KEY (charger_id, message_id, digest)
    ) WITHOUT ROWID;
    CREATE INDEX answered_by_age ON answered (done_at);
    -- Whatever removes a queued CALL (delivered, dead-lettered, pruned) keeps its key: in the
    -- DELETE's own statement, so a delivery stays one statement (one database-thread hop).
    CREATE TRIGGER outbox_keeps_answered AFTER DELETE ON outbox
    WHEN old.digest IS NOT NULL AND old.answer IS NOT NULL
    BEGIN
        INSERT OR REPLACE INTO answered (charger_id, message_id, digest, answer, done_at)
        VALUES (old.charger_id, old.message_id, old.digest, old.answer,
                (julianday('now') - 2440587.5) * 86400.0);
    END;
    CREATE TABLE store_probe (                 -- one row, rewritten by the health probe
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL
    );
    """,
    # 4: the chargers' Local Authorization Lists (gateway.tags.local_list)
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
    # 5: the site power guard's caps and engaged state (gateway.store.site)
    SITE_MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)

PROBE_EVERY_S: Final = 1.0  # free space and the file's identity: a stat and a statvfs
PROBE_IDLE_S: Final = 3.0  # a probe commit when no commit succeeded for this long (or while down)
PRUNE_EVERY_S: Final = 600.0
HEALTHY_COMMIT_AGE_S: Final = 10.0  # watchdog: fed only if a commit succeeded this recently
JOURNAL_SIZE_LIMIT: Final = 4 * 1024 * 1024  # the WAL is truncated to this after a checkpoint
QUICK_CHECK_ROWS: Final = 5  # problems quoted from a failed check

# Primary SQLite result codes that mean the file, not the statement, is at fault.
_FAULTS: Final = {
    sqlite3.SQLITE_FULL: "disk full",
    sqlite3.SQLITE_READONLY: "read-only",
    sqlite3.SQLITE_IOERR: "I/O error",
    sqlite3.SQLITE_CORRUPT: "database corrupt",
    sqlite3.SQLITE_NOTADB: "not a database",
    sqlite3.SQLITE_CANTOPEN: "cannot open the file",
    sqlite3.SQLITE_PERM: "permission denied",
}
_STICKY: Final = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

_PROBE_SQL: Final = "INSERT OR REPLACE INTO store_probe (id, at) VALUES (1, ?)"


def fault_of(exc: BaseException) -> str | None:
    """What an SQLite error says about the store (``"disk full: …"``), or None when the statement
    itself was at fault (a constraint, a bug) and the file is fine."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or not isinstance(code, int):
        return None
    name = _FAULTS.get(code & 0xFF)
    return f"{name} ({exc})" if name else None


def _is_sticky(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _STICKY


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


@dataclass(slots=True)
class _Health:
    """What the store knows about its own usability; read by /health and the watchdog."""

    error: str | None = None  # None: commits succeed
    sticky: bool = False  # corruption: stays until a restart (whose quick_check then decides)
    free_bytes: int | None = None
    last_commit_ok: float = 0.0  # monotonic time of the last successful commit
    checkpoint_tried: bool = False  # disk full: one WAL checkpoint attempted for this episode


class Store(
    OutboxTable, TagTables, BootTable, ReservationTable, LocalListTable, DepotTable, SiteTable
):
    """Named operations over the gateway's SQLite file. Open with :meth:`open`."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()  # one writer transaction at a time on this connection
        self._waiting: list[_Batch] = []
        self._flusher: asyncio.Task[None] | None = None
        self._health = _Health(last_commit_ok=time.monotonic())
        self._usable = asyncio.Event()
        self._usable.set()
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._monitor: asyncio.Task[None] | None = None
        self._probe_idle_s = PROBE_IDLE_S

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, path: str | Path, *, create: bool = True, quick_check: bool = True
    ) -> Store:
        """Open (creating if needed) the store, switch to WAL and apply pending migrations.

        With ``create=False`` (operator commands that read it) a missing file is a StoreError
        naming the path: a command must not answer from an empty store it just made.
        An existing file is first checked with ``PRAGMA quick_check`` (``quick_check=False``
        skips it) and must take a probe commit; a file that fails either raises StoreError and
        is left exactly as it was — never replaced by a new store.
        """
        path = str(path)
        if not create and path != ":memory:" and not os.path.isfile(path):  # noqa: ASYNC240
            raise StoreError(f"store not found: {path} (is store.path the service's?)")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            existed = path != ":memory:" and _nonempty_file(path)
            db = await cls._connect(path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}{_unwritable(path)}") from exc
        try:
            store = cls(db, path)
            if existed and quick_check:
                await store._quick_check()
            await db.execute("PRAGMA journal_mode=WAL")
            await store._migrate()
            store._file_id = store._identity()
            store._health.free_bytes = store._free_bytes()
            await store._commit([(_PROBE_SQL, (time.time(),))])
        except BaseException as exc:
            await db.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StoreError(f"cannot open store {path}: {exc}{_unwritable(path)}") from exc
            raise
        return store

    @staticmethod
    async def _connect(path: str) -> aiosqlite.Connection:
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA busy_timeout=5000")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            # A checkpoint truncates the WAL back to this: it never keeps a full disk full.
            await db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        except BaseException:
            await db.close()
            raise
        return db

    async def _quick_check(self) -> None:
        try:
            rows = await self.fetchall(f"PRAGMA quick_check({QUICK_CHECK_ROWS})")
            problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
        except sqlite3.Error as exc:
            problems = [str(exc)]
        if problems:  # one line: SQLite puts several findings in one row
            problems = [" ".join(p.split()) for p in problems]
            raise StoreError(f"store {self.path} failed PRAGMA quick_check: {'; '.join(problems)}")

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
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        self._close_reader()
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        await self._db.close()

    # --- health ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The /health ``store`` block: ``ok``, ``error`` (None when ok) and ``freeBytes``."""
        health = self._health
        return {"ok": health.error is None, "error": health.error, "freeBytes": health.free_bytes}

    @property
    def ok(self) -> bool:
        """True while commits succeed (as far as the last commit and probe know)."""
        return self._health.error is None

    async def healthy(self) -> bool:
        """The watchdog's check: usable, and a commit succeeded within the last few seconds
        (the probe commits at least every PROBE_IDLE_S, so a wedged disk shows here)."""
        health = self._health
        return (
            health.error is None and time.monotonic() - health.last_commit_ok < HEALTHY_COMMIT_AGE_S
        )

    async def wait_usable(self) -> None:
        """Return once commits succeed again (at once if they do)."""
        await self._usable.wait()

    def start_monitoring(
        self, *, every_s: float = PROBE_EVERY_S, idle_s: float = PROBE_IDLE_S
    ) -> None:
        """Run the periodic probe until :meth:`close` (the running gateway does this, with the
        defaults): a round every ``every_s``, a probe commit after ``idle_s`` without one."""
        if self._monitor is None and self.path != ":memory:":
            self._probe_idle_s = idle_s
            self._monitor = asyncio.create_task(self._monitor_loop(every_s))

    def _identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino)

    def _check_file(self) -> None:
        """Raise StoreError unless the path still names the file this connection writes into."""
        if self._file_id is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise StoreError(f"store file {self.path} was deleted") from None
        except OSError as exc:
            raise StoreError(f"store file {self.path}: {exc.strerror}") from exc
        if (st.st_dev, st.st_ino) != self._file_id:
            raise StoreError(f"store file {self.path} was replaced by another file")

    def _fault(self, reason: str, *, sticky: bool = False) -> None:
        health = self._health
        health.sticky = health.sticky or sticky
        if health.error != reason:
            log.error("store %s cannot commit: %s", self.path, reason)
            health.error = reason
            health.checkpoint_tried = False
        self._usable.clear()

    def _check_before_commit(self) -> None:
        try:
            self._check_file()
        except StoreError as exc:
            self._fault(str(exc))
            raise

    def _committed(self) -> None:
        """A commit went through: usable again, unless the file lost its name (raises)."""
        try:
            self._check_file()
        except StoreError as exc:
            self._fault(str(exc))
            raise
        health = self._health
        health.last_commit_ok = time.monotonic()
        if health.error is not None and not health.sticky:
            log.warning("store %s commits again (was: %s)", self.path, health.error)
            health.error = None
        if health.error is None:
            self._usable.set()

    def _failed(self, exc: BaseException) -> StoreError:
        """The StoreError for a failed commit, noting a store fault in the health state."""
        fault = fault_of(exc)
        if fault is not None:
            self._fault(fault, sticky=_is_sticky(exc))
            return StoreError(f"store unusable: {fault}")
        return StoreError(f"write failed: {exc}")

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(Path(self.path).parent)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    async def probe(self) -> None:
        """One round of checks: free space and the file's identity (a stat and a statvfs); a
        deleted file restored from the open connection; a tiny commit when none succeeded for
        PROBE_IDLE_S (see :meth:`start_monitoring`) or while the store is down. The outcome
        lands in :meth:`status`."""
        health = self._health
        health.free_bytes = self._free_bytes()
        if self._file_id is not None and not _exists(self.path):
            await self._restore_deleted()
            if not _exists(self.path):
                return  # nothing to probe; the fault stays as _restore_deleted put it
        if health.sticky:
            return
        if health.error is None:
            try:
                self._check_file()
            except StoreError as exc:
                self._fault(str(exc))
        if health.error is not None and health.error.startswith("disk full"):
            await self._release_wal()
        if (
            health.error is not None
            or time.monotonic() - health.last_commit_ok >= self._probe_idle_s
        ):
            with contextlib.suppress(StoreError):
                await self.write([(_PROBE_SQL, (time.time(),))])

    async def _release_wal(self) -> None:
        # Once per episode: a checkpoint that can complete truncates the WAL to
        # journal_size_limit, returning its space to a full disk.
        if self._health.checkpoint_tried:
            return
        self._health.checkpoint_tried = True
        async with self._lock:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def _monitor_loop(self, every_s: float) -> None:
        next_prune = time.monotonic() + PRUNE_EVERY_S
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.probe()
                if time.monotonic() >= next_prune and self.ok:
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                    await self.prune_answered(time.time())
            except Exception:  # the monitor must outlive any one failed round
                log.exception("store probe failed")

    async def _restore_deleted(self) -> None:
        """The file was deleted while open: write the open database back under its name
        (SQLite backup API, then an atomic link) and continue on the copy. Nothing that was
        acknowledged is lost; commits that raced the deletion were refused (``_committed``)."""
        target = Path(self.path)
        if not target.parent.is_dir():
            self._fault(f"store directory {target.parent} was deleted")
            return
        copy_path = target.with_name(target.name + ".restoring")
        async with self._lock:
            if _exists(target):
                return
            with contextlib.suppress(FileNotFoundError):
                copy_path.unlink()
            copy = sqlite3.connect(copy_path, check_same_thread=False)
            try:
                await self._db.backup(copy)
                copy.execute("PRAGMA journal_mode=WAL")
            except sqlite3.Error as exc:
                copy.close()
                self._fault(f"store file {self.path} was deleted; restoring it failed: {exc}")
                return
            copy.close()
            try:
                os.link(copy_path, target)  # fails if someone created the path meanwhile
            except FileExistsError:
                copy_path.unlink()
                return
            copy_path.unlink()
            _fsync_dir(target.parent)
            new_db = await self._connect(self.path)
            old, self._db = self._db, new_db
            self._file_id = self._identity()
            await old.close()
            self._reopen_reader()
        log.warning(
            "store file %s was deleted while in use; restored it from the open database", self.path
        )
        with contextlib.suppress(StoreError):
            await self.write([(_PROBE_SQL, (time.time(),))])

    # --- transactions and durable group commit ---------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """An exclusive write transaction; committed on success, rolled back on any error,
        the COMMIT's own failure included (else the next BEGIN fails forever). A failure of
        SQLite's is a StoreError, as for ``write``."""
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
            except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite's closed connection
                raise self._failed(exc) from exc
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException as exc:
                await self._rollback()
                if isinstance(exc, sqlite3.Error):
                    raise self._failed(exc) from exc
                raise

    async def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._db.execute("ROLLBACK")

    async def write(self, statements: Sequence[Statement]) -> None:
        """Run ``statements`` atomically; return once they are committed to disk.

        Callers that arrive while a commit is in progress are batched into the next one.
        Raises StoreError if the commit failed or the file no longer has its name.
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
                await self._commit_group(batches)
            except BaseException as exc:
                # Whatever went wrong, no writer is left waiting (settle skips settled ones).
                error = exc if isinstance(exc, StoreError) else StoreError(f"write failed: {exc!r}")
                for batch in batches:
                    batch.settle(error)
                if not isinstance(exc, Exception):
                    for batch in self._waiting:
                        batch.settle(StoreError("store closing"))
                    self._waiting = []
                    raise
                if not isinstance(exc, StoreError):
                    log.error("store write failed: %r", exc)

    async def _commit_group(self, batches: list[_Batch]) -> None:
        # A stat before and after: nothing is written into a file already without a name, and
        # nothing is acknowledged whose file lost its name during the commit (_committed).
        self._check_before_commit()
        try:
            await self._commit([st for batch in batches for st in batch.statements])
        except Exception as exc:  # e.g. a parameter that cannot be bound raises its own error
            if len(batches) == 1 or fault_of(exc) is not None:
                error = self._failed(exc)
                for batch in batches:
                    batch.settle(error)
                return
            # One batch spoilt the group: commit each alone so only it fails.
            for batch in batches:
                try:
                    await self._commit(batch.statements)
                except Exception as one:
                    batch.settle(self._failed(one))
                else:
                    self._committed()
                    batch.settle(None)
            return
        self._committed()
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
        """Rows of one read query; StoreError if it fails."""
        try:
            async with self._db.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite's closed connection
            raise self._read_failed(exc) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of one read query, or None; StoreError if it fails."""
        try:
            async with self._db.execute(sql, params) as cur:
                row: sqlite3.Row | None = await cur.fetchone()
                return row
        except (sqlite3.Error, ValueError) as exc:
            raise self._read_failed(exc) from exc

    def _read_failed(self, exc: BaseException) -> StoreError:
        """The StoreError for a failed read (every read of the store ends here or in ``_failed``)."""
        # A read that finds a malformed page means the next commit may not be safe either.
        if _is_sticky(exc) or (fault_of(exc) or "").startswith("I/O error"):
            return self._failed(exc)
        return StoreError(f"read failed: {exc}")

    # --- the read-only connection for point reads on the event loop ----------------------

    _tag_reader: sqlite3.Connection | None = None
    _tag_reader_closed = False

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

    def _reopen_reader(self) -> None:
        """The file was replaced by a restored copy: the next read opens a reader on it."""
        if self._tag_reader is not None:
            self._tag_reader.close()
            self._tag_reader = None
        self._active_cache = None

    async def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version``: changes when another connection commits to the file
        (an operator's ``outbox requeue`` from the shell), not on this connection's own commits."""
        row = await self.fetchone("PRAGMA data_version")
        return int(row[0]) if row else 0

    # --- local authorization lists (gateway.tags.local_list_push) --------------------------------


# --- operator commands on a store file (flipturn-gateway store check / backup) -----------------


def _exists(path: str | Path) -> bool:
    return os.path.lexists(path)


def _nonempty_file(path: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def _unwritable(path: str) -> str:
    """Why the store cannot be written, as a suffix for an error message ("" if no reason seen)."""
    if path == ":memory:":
        return ""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return " (read-only file system)"
    except OSError:
        return ""
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return " (the file is read-only for this user)"
    if not os.access(directory, os.W_OK):
        return " (its directory is read-only for this user)"
    return ""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_existing(path: str | Path) -> sqlite3.Connection:
    """A connection to an existing store, never creating one (StoreError naming the path)."""
    if not Path(path).is_file():
        raise StoreError(f"no store at {path}")
    try:
        return sqlite3.connect(Path(path).resolve().as_uri(), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc


def check_file(path: str | Path, *, max_rows: int = 100) -> list[str]:
    """``PRAGMA integrity_check`` of the store at ``path``: the problems found ([] when ok)."""
    db = _open_existing(path)
    try:
        rows = db.execute(f"PRAGMA integrity_check({int(max_rows)})").fetchall()
    except sqlite3.Error as exc:
        return [str(exc)]
    finally:
        db.close()
    return [line for r in rows if str(r[0]) != "ok" for line in str(r[0]).splitlines()]


def backup_file(path: str | Path, target: str | Path) -> int:
    """Copy the store at ``path`` to ``target`` with SQLite's online backup API (consistent
    while the gateway writes); the copy is written beside ``target`` and renamed into place
    once complete and fsync'd. Returns the copy's size in bytes."""
    target = Path(target)
    partial = target.with_name(f".{target.name}.partial")
    store_files = {Path(f"{path}{suffix}").resolve() for suffix in ("", "-wal", "-shm")}
    if target.resolve() in store_files:
        raise StoreError(f"{target} is the store itself; back it up elsewhere")
    source = _open_existing(path)
    try:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        copy = sqlite3.connect(partial)
        try:
            # One step: a single read transaction, which in WAL mode never blocks the gateway's
            # writers (copying in steps would restart whenever the gateway commits meanwhile).
            source.backup(copy)
            copy.execute("PRAGMA journal_mode=DELETE")
        finally:
            copy.close()
    except sqlite3.Error as exc:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        raise StoreError(f"backup of {path} failed: {exc}") from exc
    finally:
        source.close()
    fd = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, target)
    _fsync_dir(target.parent)
    return target.stat().st_size
