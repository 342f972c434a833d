"""The SQLite store: one file in WAL mode; :class:`Store` opens it and holds its connections.

Durability: ``synchronous=FULL`` and group commit (gateway.store.commit). Writes that acknowledge a
charger's message go through :meth:`Store.write`, which batches whatever is waiting into one
transaction and returns only after that transaction is committed (fsync'd).

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import aiosqlite

from gateway.errors import StoreError
from gateway.store.base import Statement, log
from gateway.store.boot import BootTable
from gateway.store.commit import GroupCommit
from gateway.store.depot import DepotTable
from gateway.store.files import (
    backup_file,
    check_file,
    exists,
    fsync_dir,
    nonempty_file,
    unwritable,
)
from gateway.store.health import Health, fault_of, is_sticky
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
from gateway.store.reservations import ReservationTable
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


PROBE_EVERY_S: Final = 1.0  # free space and the file's identity: a stat and a statvfs
PROBE_IDLE_S: Final = 3.0  # a probe commit when no commit succeeded for this long (or while down)
PRUNE_EVERY_S: Final = 600.0
HEALTHY_COMMIT_AGE_S: Final = 10.0  # watchdog: fed only if a commit succeeded this recently
JOURNAL_SIZE_LIMIT: Final = 4 * 1024 * 1024  # the WAL is truncated to this after a checkpoint
QUICK_CHECK_ROWS: Final = 5  # problems quoted from a failed check

_PROBE_SQL: Final = "INSERT OR REPLACE INTO store_probe (id, at) VALUES (1, ?)"


class Store(
    GroupCommit, OutboxTable, TagTables, BootTable, ReservationTable, LocalListTable, DepotTable
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
            existed = path != ":memory:" and nonempty_file(path)
            db = await cls._connect(path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open store {path}: {exc}{unwritable(path)}") from exc
        try:
            store = cls(db, path)
            if existed and quick_check:
                await store._quick_check()
            await db.execute("PRAGMA journal_mode=WAL")
            await migrate(db)
            store._file_id = store._identity()
            store._health.free_bytes = store._free_bytes()
            await store._commit([(_PROBE_SQL, (time.time(),))])
        except BaseException as exc:
            await db.close()
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StoreError(f"cannot open store {path}: {exc}{unwritable(path)}") from exc
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
            self._fault(fault, sticky=is_sticky(exc))
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
        if self._file_id is not None and not exists(self.path):
            await self._restore_deleted()
            if not exists(self.path):
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
        log.warning(
            "store file %s was deleted while in use; restored it from the open database", self.path
        )
        with contextlib.suppress(StoreError):
            await self.write([(_PROBE_SQL, (time.time(),))])

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
