"""What the table modules of the store build on: the engine's primitives.

:class:`Table` declares them; :class:`gateway.store.engine.Store` implements them and inherits every
table's operations, so callers see one ``Store`` with named operations.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any, Self

import aiosqlite

__all__ = ["Record", "Statement", "Table", "log"]

log = logging.getLogger("gateway.store")  # one logger for the whole store

Statement = tuple[str, Sequence[Any]]


class Record:
    """Base of the store's row types: frozen dataclasses whose fields are the table's columns.

    ``record["column"]`` reads a field as well, so the pure shape functions, which take any row
    readable by column name (a mapping in their tests), read records unchanged.
    """

    __slots__ = ()

    def __getitem__(self, column: str) -> Any:
        return getattr(self, column)

    @classmethod
    def of(cls, row: sqlite3.Row) -> Self:
        """The record of a ``SELECT *`` row; a column the record does not name is an error."""
        return cls(**{key: row[key] for key in row.keys()})  # noqa: SIM118 (sqlite3.Row)


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
