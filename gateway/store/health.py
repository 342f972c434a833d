"""What the store knows about its own usability: what an SQLite error says about the file, what a
look at the file by ``stat``/``statvfs`` says, and the health state both feed.

The look costs four system calls and writes nothing, so it runs before every group commit and
once a second while idle (docs/reliability.md): a file deleted or replaced under the running
process, a read-only mount, a file this user cannot write, and a disk too full to checkpoint the
WAL are seen without a commit. Only faults no look can see (an I/O error, SQLite's own read-only
switch) need a commit to show, and those the outcome of every commit reports.

Small disks: SQLite's WAL grows until a checkpoint copies it into the database file, which may
then grow by as much as the WAL holds. A WAL that takes the last free bytes can never be
checkpointed, and the store would stay full for good. So commits are refused ("disk full") while
fewer bytes are free than the WAL plus :data:`RESERVE_BYTES` plus twice what the commit brings,
the automatic checkpoint runs before the WAL takes more than an eighth of the space it shares
with the free bytes (:func:`autocheckpoint_pages`), and the probe checkpoints (TRUNCATE) as soon
as free space runs low (:func:`wants_checkpoint`).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_AUTOCHECKPOINT_PAGES",
    "RESERVE_BYTES",
    "FileLook",
    "Health",
    "autocheckpoint_pages",
    "fault_kind",
    "fault_of",
    "file_fault",
    "is_sticky",
    "look_at",
    "wants_checkpoint",
]

RESERVE_BYTES: Final = 256 * 1024  # kept free: room to checkpoint the WAL and for one more commit
WAL_SHARE: Final = 8  # the WAL may hold 1/8 of (its own size + the free bytes) before a checkpoint
MIN_AUTOCHECKPOINT_PAGES: Final = 16
MAX_AUTOCHECKPOINT_PAGES: Final = 1000  # SQLite's default
WAL_FRAME_HEADER: Final = 24

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


def fault_of(exc: BaseException) -> str | None:
    """What an SQLite error says about the store (``"disk full: …"``), or None when the statement
    itself was at fault (a constraint, a bug) and the file is fine."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(exc, sqlite3.Error) or not isinstance(code, int):
        return None
    name = _FAULTS.get(code & 0xFF)
    return f"{name} ({exc})" if name else None


def is_sticky(exc: BaseException) -> bool:
    """Corruption: the store stays down until a restart (whose quick_check then decides)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _STICKY


def fault_kind(reason: str | None) -> str | None:
    """The kind of a fault, for logging a change once: ``"disk full"`` of ``"disk full (…)"``."""
    return reason.split(" (", 1)[0] if reason is not None else None


@dataclass(frozen=True, slots=True)
class FileLook:
    """One look at the store's file and its file system (:func:`look_at`)."""

    identity: tuple[int, int] | None  # (st_dev, st_ino) under the path; None: no file there
    wal_bytes: int  # size of the -wal file (0 if there is none)
    free_bytes: int | None  # statvfs f_bavail * f_frsize; None if statvfs failed
    read_only_fs: bool  # statvfs f_flag has ST_RDONLY
    writable: bool  # this user may write the file


def look_at(path: str) -> FileLook:
    """``stat`` of the file and its WAL, ``statvfs`` of its directory, ``access`` for writing."""
    try:
        st = os.stat(path)
        identity: tuple[int, int] | None = (st.st_dev, st.st_ino)
    except FileNotFoundError:
        identity = None
    try:
        wal_bytes = os.stat(f"{path}-wal").st_size
    except OSError:
        wal_bytes = 0
    try:
        vfs = os.statvfs(os.path.dirname(os.path.abspath(path)))
        free: int | None = vfs.f_bavail * vfs.f_frsize
        read_only = bool(vfs.f_flag & os.ST_RDONLY)
    except OSError:
        free, read_only = None, False
    writable = identity is None or os.access(path, os.W_OK)
    return FileLook(identity, wal_bytes, free, read_only, writable)


def file_fault(
    path: str,
    look: FileLook,
    opened: tuple[int, int] | None,
    *,
    incoming_bytes: int = 0,
    was_full: bool = False,
) -> str | None:
    """Why no commit can be made safely into the file ``opened`` (None: nothing seen).

    ``incoming_bytes``: what the commit about to start brings (the WAL grows by it, and the
    database file by as much at the next checkpoint). ``was_full``: the last look found the disk
    full; it stays full until twice the reserve is free, so a disk at the edge does not flap.
    """
    if opened is not None:
        if look.identity is None:
            return f"store file {path} was deleted"
        if look.identity != opened:
            return f"store file {path} was replaced by another file"
    if look.read_only_fs:
        return "read-only (the file system is mounted read-only)"
    if not look.writable:
        return f"permission denied ({path} is not writable for this user)"
    if look.free_bytes is not None:
        keep = look.wal_bytes + RESERVE_BYTES * (2 if was_full else 1) + 2 * incoming_bytes
        if look.free_bytes < keep:
            return (
                f"disk full ({look.free_bytes:,} bytes free; {keep:,} are kept to checkpoint"
                " the WAL)"
            )
    return None


def autocheckpoint_pages(free_bytes: int | None, wal_bytes: int, page_size: int) -> int:
    """``PRAGMA wal_autocheckpoint`` for this much room: the WAL may take an eighth of the space
    it shares with the free bytes, in powers of two from 16 pages up to SQLite's default 1000
    (so the setting changes only when the room halves or doubles)."""
    if free_bytes is None:
        return MAX_AUTOCHECKPOINT_PAGES
    room = (free_bytes + wal_bytes) // WAL_SHARE // (page_size + WAL_FRAME_HEADER)
    pages = MIN_AUTOCHECKPOINT_PAGES
    while pages * 2 <= room and pages * 2 < MAX_AUTOCHECKPOINT_PAGES:
        pages *= 2
    return MAX_AUTOCHECKPOINT_PAGES if room >= MAX_AUTOCHECKPOINT_PAGES else pages


def wants_checkpoint(look: FileLook) -> bool:
    """Free space runs low and the WAL holds something: checkpoint it (TRUNCATE) now, while the
    database file still has room to take its pages."""
    if look.wal_bytes == 0 or look.free_bytes is None:
        return False
    return look.free_bytes < look.wal_bytes + 4 * RESERVE_BYTES


@dataclass(slots=True)
class Health:
    """What the store knows about its own usability; read by /health and the watchdog.

    Two sources: the outcome of the last commit (``commit_error``, cleared by a commit that
    succeeds) and the last look at the file (``file_error``, cleared by a look that finds it
    fine). Corruption is sticky: it stays until a restart.
    """

    commit_error: str | None = None
    file_error: str | None = None
    sticky: bool = False
    last_commit_ok: float = 0.0  # monotonic time of the last successful commit
    reported: str | None = None  # the error last logged (None: "commits" was the last word)

    @property
    def error(self) -> str | None:
        """Why commits cannot be made now; None while they can."""
        if self.sticky:
            return self.commit_error
        return self.file_error or self.commit_error

    @property
    def full(self) -> bool:
        """The last look found the disk too full to commit."""
        return fault_kind(self.file_error) == "disk full"
