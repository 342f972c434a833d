"""What the table modules of the store build on: the engine's primitives.

:class:`Table` declares them; :class:`gateway.store.engine.Store` implements them and inherits every
table's operations, so callers see one ``Store`` with named operations.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

__all__ = ["Statement", "Table", "log"]

log = logging.getLogger("gateway.store")  # one logger for the whole store

Statement = tuple[str, Sequence[Any]]


class Table:
    """Base of the per-table operations; :class:`gateway.store.engine.Store` provides these."""

    async def write(self, statements: Sequence[Statement]) -> None:
        """Run ``statements`` atomically; return once they are committed to disk."""
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Rows of one read query; StoreError if it fails."""
        raise NotImplementedError

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        """The first row of one read query, or None; StoreError if it fails."""
        raise NotImplementedError

    def transaction(self) -> contextlib.AbstractAsyncContextManager[aiosqlite.Connection]:
        """An exclusive write transaction; StoreError if it fails."""
        raise NotImplementedError

    def _reader(self) -> sqlite3.Connection | None:
        """The read-only connection for point reads on the event loop thread, if there is one."""
        raise NotImplementedError

    def _read_now(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row] | None:
        """Rows of a small indexed read on the event loop thread; None: use ``fetchall``."""
        raise NotImplementedError
