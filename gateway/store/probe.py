"""The store's health: what the last commit and the last look at the file say, and the probe
round that keeps it true while nothing commits (docs/reliability.md).

:class:`HealthProbe` is the part of :class:`gateway.store.engine.Store` that answers ``/health``
and the watchdog, refuses a commit the file cannot take (``_check_before_commit``), notes each
commit's outcome (``_committed``, ``_failed``) and runs one probe round (:meth:`probe`). The
decisions themselves are values in gateway.store.health.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Final

from gateway.errors import StoreError
from gateway.store.base import Statement
from gateway.store.commit import GroupCommit
from gateway.store.files import exists
from gateway.store.health import (
    FileLook,
    Health,
    autocheckpoint_pages,
    fault_kind,
    fault_of,
    file_fault,
    is_sticky,
    look_at,
    wants_checkpoint,
)

__all__ = [
    "HEALTHY_COMMIT_AGE_S",
    "HEALTHY_ROUND_AGE_S",
    "PROBE_SQL",
    "HealthProbe",
    "probe_commit",
]

HEALTHY_COMMIT_AGE_S: Final = 10.0  # watchdog: a group commit running longer than this hangs
HEALTHY_ROUND_AGE_S: Final = 10.0  # watchdog: the probe's last round ended within this
PROBE_SQL: Final = "INSERT OR REPLACE INTO store_probe (id, at) VALUES (1, ?)"


def probe_commit() -> list[Statement]:
    """The probe's tiny commit: one row rewritten."""
    return [(PROBE_SQL, (time.time(),))]


class HealthProbe(GroupCommit):
    """Health state, the look before each commit, and one probe round; the store provides the
    connection, its file's identity and the operations that replace the connection."""

    path: str
    _health: Health
    _usable: asyncio.Event
    _file_id: tuple[int, int] | None
    _monitor: asyncio.Task[None] | None
    _probe_idle_s: float
    _last_round: float
    _page_size: int
    _wal_pages: int
    _until_room: bool

    async def _restore_deleted(self) -> None:
        """The file was deleted while open: write the open database back under its name."""
        raise NotImplementedError

    async def _reopen_for_writing(self) -> None:
        """There is room again: replace the read-only connection by a writing one."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """The /health ``store`` block: ``ok``, ``error`` (None when ok) and ``freeBytes`` (read
        now, by statvfs: what the file system has, not what the last probe saw)."""
        error = self._health.error
        return {"ok": error is None, "error": error, "freeBytes": self._free_bytes()}

    @property
    def ok(self) -> bool:
        """True while commits succeed (as far as the last commit and look know)."""
        return self._health.error is None

    async def healthy(self) -> bool:
        """The watchdog's check: no fault known from the last commit or look at the file, no
        group commit hanging, and the probe still completing its rounds. It commits nothing: the
        watchdog task running at all shows the event loop is alive."""
        return self.why_unhealthy() is None

    def why_unhealthy(self) -> str | None:
        """Why :meth:`healthy` is false (for the log and ``systemctl status``); None if it is not.

        A full disk alone does not stop the watchdog: a restart cannot make room, it would only
        drop every charger's connection every WatchdogSec; the gateway stays up (``/health``
        503, chargers answered InternalError for what must be stored) and commits again by
        itself once there is room. Every other fault does: a restart may cure it.
        """
        now = time.monotonic()
        error = self._health.error
        if error is not None and fault_kind(error) != "disk full":
            return error
        if self._commit_since is not None and now - self._commit_since > HEALTHY_COMMIT_AGE_S:
            return f"a store commit has been running for {now - self._commit_since:.0f} s"
        if self._monitor is not None and now - self._last_round > HEALTHY_ROUND_AGE_S:
            return f"the store probe has not finished a round for {now - self._last_round:.0f} s"
        return None

    async def wait_usable(self) -> None:
        """Return once commits succeed again (at once if they do)."""
        await self._usable.wait()

    def _identity(self) -> tuple[int, int] | None:
        if self.path == ":memory:":
            return None
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino)

    def _look(self, incoming_bytes: int = 0) -> FileLook | None:
        """Look at the file (None for ``:memory:``) and note what it says in the health state."""
        if self._file_id is None:
            return None
        look = look_at(self.path)
        health = self._health
        health.file_error = file_fault(
            self.path,
            look,
            self._file_id,
            incoming_bytes=incoming_bytes,
            was_full=health.full,
        )
        if self._until_room and health.file_error is None:
            health.file_error = "disk full (the store is read-only until it is reopened)"
        self._report()
        return look

    def _report(self) -> None:
        """Log a change of the store's state once (a new kind of fault, or commits again) and
        wake the writers waiting for a usable store."""
        health = self._health
        error = health.error
        if fault_kind(error) != fault_kind(health.reported):
            if error is None:
                self.lines.warning(time.monotonic(), "commits again", "was: %s", health.reported)
            else:
                self.lines.error(time.monotonic(), "cannot commit", "%s", error)
        health.reported = error
        if error is None:
            self._usable.set()
        else:
            self._usable.clear()

    def _fault(self, reason: str, *, sticky: bool = False) -> None:
        health = self._health
        health.sticky = health.sticky or sticky
        health.commit_error = reason
        self._report()

    def _check_before_commit(self, incoming_bytes: int) -> None:
        self._look(incoming_bytes)
        error = self._health.file_error
        if error is not None:
            raise StoreError(
                error if error.startswith("store file") else f"store unusable: {error}"
            )

    def _committed(self) -> None:
        """A commit went through: usable again, unless the file lost its name (raises)."""
        if self._file_id is not None:
            try:
                identity: tuple[int, int] | None = self._identity()
            except OSError:
                identity = None
            if identity != self._file_id:
                self._look()
                raise StoreError(self._health.file_error or f"store file {self.path} is gone")
        health = self._health
        health.last_commit_ok = time.monotonic()
        if not health.sticky:
            health.commit_error = None
        self._report()

    def _failed(self, exc: BaseException) -> StoreError:
        """The StoreError for a failed commit, noting a store fault in the health state."""
        fault = fault_of(exc)
        if fault is not None:
            self._fault(fault, sticky=is_sticky(exc))
            return StoreError(f"store unusable: {fault}")
        return StoreError(f"write failed: {exc}")

    def _free_bytes(self) -> int | None:
        if self.path == ":memory:":
            return None
        try:
            st = os.statvfs(Path(self.path).resolve().parent)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    async def probe(self) -> None:
        """One round of checks: a look at the file (stat, statvfs: identity, read-only mount,
        permissions, free space), a deleted file restored from the open connection, the WAL
        sized to the room there is and checkpointed when free space runs low, and a tiny
        commit when none succeeded for ``idle_s`` (see :meth:`start_monitoring`) or while the
        last one failed. The outcome lands in :meth:`status`."""
        health = self._health
        if self._file_id is not None and not exists(self.path):
            await self._restore_deleted()
            if not exists(self.path):
                return  # nothing to probe; the fault stays as _restore_deleted put it
        if health.sticky:
            return
        if self._until_room and file_fault(self.path, look_at(self.path), self._file_id) is None:
            await self._reopen_for_writing()
        look = self._look()
        if look is None:
            return
        await self._size_wal(look)
        if wants_checkpoint(look):
            await self._checkpoint()
            self._look()  # the room the checkpoint gave back counts at once
        if health.file_error is not None:
            return  # a commit now would only be refused; the next look decides
        if (
            health.commit_error is not None
            or time.monotonic() - health.last_commit_ok >= self._probe_idle_s
        ):
            with contextlib.suppress(StoreError):
                await self.write(probe_commit())

    async def _size_wal(self, look: FileLook, *, force: bool = False) -> None:
        """Keep the automatic checkpoint (and the WAL's size after one) within the room there is:
        on a small disk the WAL is checkpointed long before it could fill it."""
        pages = autocheckpoint_pages(look.free_bytes, look.wal_bytes, self._page_size)
        if pages == self._wal_pages and not force:
            return
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self._db.execute(f"PRAGMA wal_autocheckpoint={pages}")
            # After a checkpoint the WAL file is truncated back to this size.
            await self._db.execute(f"PRAGMA journal_size_limit={pages * self._page_size}")
            self._wal_pages = pages

    async def _checkpoint(self) -> None:
        """Copy the WAL into the file and truncate it to zero bytes (when nothing reads an
        older snapshot; else as much as it can). A failure changes nothing: the WAL stays."""
        async with self._lock:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
