"""The SQLite store: one file in WAL mode; :class:`Store` opens it and holds its connections.

Durability: ``synchronous=FULL`` and group commit (gateway.store.commit). Writes that acknowledge a
charger's message go through :meth:`Store.write`, which batches whatever is waiting into one
transaction and returns only after that transaction is committed (fsync'd).

Integrity (docs/reliability.md): before each group commit a look at the file (gateway.store.health:
stat and statvfs) refuses to write into a file that lost its name, onto a read-only mount or onto a
disk too full to checkpoint the WAL; after it, a ``stat`` makes sure the file still has its name.
The outcome of every commit and a probe every second (the same look; a tiny commit only after
10 minutes without one, or while the last one failed) make :meth:`Store.status` the truth about
whether acknowledgements can be given. Start-up runs ``PRAGMA quick_check`` and a probe commit,
never writes into a file it cannot read, and opens a store on a full disk down rather than failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import aiosqlite

from gateway.core.limits import LimitedLog, LogLimiter
from gateway.errors import StoreError
from gateway.store.base import Statement, log
from gateway.store.boot import BootTable
from gateway.store.depot import DepotTable
from gateway.store.files import (
    backup_file,
    check_file,
    exists,
    fsync_dir,
    nonempty_file,
    unwritable,
)
from gateway.store.health import (
    MAX_AUTOCHECKPOINT_PAGES,
    RESERVE_BYTES,
    Health,
    fault_kind,
    fault_of,
    is_sticky,
    look_at,
)
from gateway.store.local_lists import LocalListRow, LocalListTable
from gateway.store.migrations import SCHEMA_VERSION, migrate
from gateway.store.outbox import (
    RESEND_WINDOW_S,
    ChargerState,
    DeadLetterRow,
    OutboxRow,
    OutboxTable,
    call_digest,
)
from gateway.store.probe import HealthProbe, probe_commit
from gateway.store.reservations import ReservationTable
from gateway.store.site import SiteTable
from gateway.store.tags import TagTables
from gateway.store.versions import VersionTable

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


PROBE_EVERY_S: Final = 1.0  # a look at the file: stat and statvfs, nothing written
# A probe commit when no commit succeeded for this long. One costs ~20-24 KB of writes on an
# idle store (the WAL frame spans two 4 KiB pages, and the WAL index's pages in -shm are written
# back too): every 10 minutes that is ~3.5 MB a day, every 5 minutes ~7 MB (docs/benchmarks.md).
PROBE_IDLE_S: Final = 600.0
PRUNE_EVERY_S: Final = 600.0
QUICK_CHECK_ROWS: Final = 5  # problems quoted from a failed check


class Store(
    HealthProbe,
    OutboxTable,
    TagTables,
    BootTable,
    ReservationTable,
    LocalListTable,
    DepotTable,
    VersionTable,
    SiteTable,
):
    """Named operations over the gateway's SQLite file. Open with :meth:`open`."""

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self.path = path
        self._lock = asyncio.Lock()  # one writer transaction at a time on this connection
        self._waiting = []
        self._flusher: asyncio.Task[None] | None = None
        self._health = Health(last_commit_ok=time.monotonic())
        self._usable = asyncio.Event()
        self._usable.set()
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._monitor: asyncio.Task[None] | None = None
        self._probe_idle_s = PROBE_IDLE_S
        self._last_round = time.monotonic()  # when the probe last finished a round
        self._page_size = 4096
        self._wal_pages = MAX_AUTOCHECKPOINT_PAGES  # PRAGMA wal_autocheckpoint in force
        self._until_room = False  # opened read-only on a full disk (_open_until_room)
        # Its repeated lines (a disk that fails every other commit); the app shares the hub's.
        self.lines = LimitedLog(log, LogLimiter(), f"store {path}")

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
        is left exactly as it was — never replaced by a new store. A disk too full for the probe
        commit is not a failure: the store opens down (``status()`` says why) and comes back by
        itself once there is room, so a full disk never turns into a restart loop.
        """
        path = str(path)
        if not create and path != ":memory:" and not os.path.isfile(path):  # noqa: ASYNC240
            raise StoreError(f"store not found: {path} (is store.path the service's?)")
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            existed = path != ":memory:" and nonempty_file(path)
            db = await aiosqlite.connect(path, isolation_level=None)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}{unwritable(path)}") from exc
        try:
            if existed and quick_check:
                # Before any other statement: even a PRAGMA may read a damaged page first.
                await _quick_check(db, path)
            await cls._configure(db)
            store = cls(db, path)
            await db.execute("PRAGMA journal_mode=WAL")
            await migrate(db)
            await store._first_commit()
        except BaseException as exc:
            await db.close()
            if existed and isinstance(exc, (sqlite3.Error, OSError, StoreError)) and _no_room(path):
                # SQLite cannot even make the WAL's index file on a disk with no byte free.
                return await cls._open_until_room(path, quick_check=quick_check)
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StoreError(f"cannot open store {path}: {exc}{unwritable(path)}") from exc
            raise
        return store

    @classmethod
    async def _open_until_room(cls, path: str, *, quick_check: bool) -> Store:
        """A store on a disk with no room even to open it for writing: opened read-only
        (``immutable``: no WAL index to create, safe as no WAL exists), down as "disk full",
        reopened for writing by the probe once there is room. Reads (tags for offline
        authorization, the depot view) work meanwhile; commits are refused."""
        uri = _read_only_uri(path)
        try:
            db = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc} (disk full)") from exc
        try:
            if quick_check:
                await _quick_check(db, path)
            await cls._configure(db)
            async with db.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            if row is None or int(row[0]) != SCHEMA_VERSION:
                raise StoreError(f"cannot open store {path}: no room on its disk to migrate it")
            store = cls(db, path)
            store._until_room = True
            store._file_id = store._identity()
            store._look()  # "disk full", logged once
        except BaseException as exc:
            await db.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StoreError(f"cannot open store {path}: {exc}") from exc
            raise
        return store

    async def _reopen_for_writing(self) -> None:
        """There is room again: replace the read-only connection by a writing one (a failure
        leaves things as they were, for the next round)."""
        try:
            new_db = await self._connect(self.path)
        except (sqlite3.Error, OSError):
            return
        try:
            await new_db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error:
            await new_db.close()
            return
        async with self._lock:
            old, self._db = self._db, new_db
            self._until_room = False
            await old.close()
            self._reopen_reader()
        row = await self.fetchone("PRAGMA page_size")
        self._page_size = int(row[0]) if row else self._page_size
        await self._size_wal(look_at(self.path), force=True)
        log.info("store %s reopened for writing: there is room on its disk again", self.path)

    @staticmethod
    async def _configure(db: aiosqlite.Connection) -> None:
        db.row_factory = sqlite3.Row
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")

    @classmethod
    async def _connect(cls, path: str) -> aiosqlite.Connection:
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await cls._configure(db)
        except BaseException:
            await db.close()
            raise
        return db

    async def _first_commit(self) -> None:
        """The start-up probe commit, after sizing the WAL for the room there is."""
        if self.path != ":memory:":
            row = await self.fetchone("PRAGMA page_size")
            self._page_size = int(row[0]) if row else self._page_size
            self._file_id = self._identity()
            await self._size_wal(look_at(self.path), force=True)
        try:
            await self.write(probe_commit())
        except StoreError:
            if not self._health.full and fault_kind(self._health.error) != "disk full":
                raise
            # Down, not dead: the probe checkpoints and retries, and commits resume by
            # themselves once there is room (the reason is logged once, by _report).

    async def close(self) -> None:
        """Wait for pending writes, checkpoint the WAL into the file, close the connection.

        The checkpoint (TRUNCATE) leaves no WAL behind a graceful stop: the file is whole on its
        own (for a copy, or a disk that is nearly full) and the next start has nothing to recover.
        """
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        self._close_reader()
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self.path != ":memory:":
            await self._checkpoint()
        await self._db.close()

    # --- health (gateway.store.probe) and the periodic probe ---------------------------------

    def start_monitoring(
        self, *, every_s: float = PROBE_EVERY_S, idle_s: float = PROBE_IDLE_S
    ) -> None:
        """Run the periodic probe until :meth:`close` (the running gateway does this, with the
        defaults): a look at the file every ``every_s``, a probe commit after ``idle_s`` without
        a commit (and every round while the last commit failed)."""
        if self._monitor is None and self.path != ":memory:":
            self._probe_idle_s = idle_s
            self._last_round = time.monotonic()
            self._monitor = asyncio.create_task(self._monitor_loop(every_s))

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
            self._last_round = time.monotonic()

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
            if exists(target):
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
            fsync_dir(target.parent)
            new_db = await self._connect(self.path)
            old, self._db = self._db, new_db
            self._file_id = self._identity()
            await old.close()
            self._reopen_reader()
            await self._size_wal(look_at(self.path), force=True)
        log.warning(
            "store file %s was deleted while in use; restored it from the open database", self.path
        )
        with contextlib.suppress(StoreError):
            await self.write(probe_commit())

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one read query; StoreError if it fails.

        Executed and read to the end in one call on the connection's thread: a statement left
        active between calls (execute, then fetch) would make another task's ``DROP TABLE`` on
        this connection, queued in between, fail with SQLITE_LOCKED ("database table is locked").
        """
        try:
            return list(await self._db.execute_fetchall(sql, params))
        except (sqlite3.Error, ValueError) as exc:  # ValueError: aiosqlite's closed connection
            raise self._read_failed(exc) from exc

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of a query of at most a few rows, or None; StoreError if it fails.
        Read in one call, as ``fetchall``."""
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    def _read_failed(self, exc: BaseException) -> StoreError:
        """The StoreError for a failed read (every read of the store ends here or in ``_failed``)."""
        # A read that finds a malformed page means the next commit may not be safe either.
        if is_sticky(exc) or (fault_of(exc) or "").startswith("I/O error"):
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


async def _quick_check(db: aiosqlite.Connection, path: str) -> None:
    """``PRAGMA quick_check`` of a file about to be opened: StoreError naming the check and the
    file if it finds a problem or cannot run (one line: SQLite puts several findings in one row)."""
    try:
        async with db.execute(f"PRAGMA quick_check({QUICK_CHECK_ROWS})") as cur:
            rows = await cur.fetchall()
        problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
    except sqlite3.Error as exc:
        if not is_sticky(exc):  # the file could not be read at all, e.g. a read-only mount
            raise StoreError(
                f"store {path}: PRAGMA quick_check could not run: {exc}{unwritable(path)}"
            ) from exc
        problems = [str(exc)]
    if problems:
        problems = [" ".join(p.split()) for p in problems]
        raise StoreError(f"store {path} failed PRAGMA quick_check: {'; '.join(problems)}")


def _no_room(path: str) -> bool:
    """No byte to spare on the store's disk, and an empty WAL (a read-only open would not see
    what one holds)."""
    look = look_at(path)
    return (
        look.identity is not None
        and look.wal_bytes == 0
        and look.free_bytes is not None
        and look.free_bytes < RESERVE_BYTES
    )


def _read_only_uri(path: str) -> str:
    """The URI of ``path`` opened read-only with no WAL index (SQLite's ``immutable``)."""
    return Path(path).resolve().as_uri() + "?mode=ro&immutable=1"
