"""What the store knows about its own usability, and what an SQLite error says about the file."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Final

__all__ = ["Health", "fault_of", "is_sticky"]

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
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _STICKY


@dataclass(slots=True)
class Health:
    """What the store knows about its own usability; read by /health and the watchdog."""

    error: str | None = None  # None: commits succeed
    sticky: bool = False  # corruption: stays until a restart (whose quick_check then decides)
    free_bytes: int | None = None
    last_commit_ok: float = 0.0  # monotonic time of the last successful commit
    checkpoint_tried: bool = False  # disk full: one WAL checkpoint attempted for this episode
