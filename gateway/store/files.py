"""Operations on a store file outside the open connection: the operator commands
(``flipturn-gateway store check`` / ``store backup``) and the file checks the engine makes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from gateway.errors import StoreError

__all__ = ["backup_file", "check_file", "exists", "fsync_dir", "nonempty_file", "unwritable"]


def exists(path: str | Path) -> bool:
    return os.path.lexists(path)


def nonempty_file(path: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False


def unwritable(path: str) -> str:
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


def fsync_dir(path: Path) -> None:
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
    fsync_dir(target.parent)
    return target.stat().st_size
