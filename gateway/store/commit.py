"""Durable group commit: writers that arrive while a commit runs share the next one.

Every write that acknowledges a charger's message goes through :meth:`GroupCommit.write`, which
returns only once its statements are committed (``synchronous=FULL``: fsync'd). Several chargers'
messages then share one fsync. The store's health hooks (``_check_before_commit``, ``_committed``,
``_failed``) decide whether a commit may start and what its outcome says about the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiosqlite

from gateway.core.limits import LimitedLog
from gateway.errors import StoreError
from gateway.store.base import Statement, Table
from gateway.store.health import fault_of

__all__ = ["GroupCommit"]


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


class GroupCommit(Table):
    """Transactions and group commit over one connection; :class:`gateway.store.engine.Store`
    provides the connection and the health hooks."""

    _db: aiosqlite.Connection
    _lock: asyncio.Lock  # one writer transaction at a time on this connection
    _waiting: list[_Batch]
    _flusher: asyncio.Task[None] | None
    _commit_since: float | None = None  # monotonic start of the group commit in progress
    lines: LimitedLog  # the store's repeated log lines (gateway.core.limits)

    def _check_before_commit(self, incoming_bytes: int) -> None:
        """Raise StoreError if no commit of about ``incoming_bytes`` may start (the file lost its
        name, the disk is too full, ...)."""
        raise NotImplementedError

    def _committed(self) -> None:
        """A commit went through; raise StoreError if it must not be acknowledged after all."""
        raise NotImplementedError

    def _failed(self, exc: BaseException) -> StoreError:
        """The StoreError for a failed commit, noting a store fault in the health state."""
        raise NotImplementedError

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
            self._commit_since = time.monotonic()  # a commit that hangs shows in Store.healthy
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
                    self.lines.error(time.monotonic(), "write failed", "%r", exc)
            finally:
                self._commit_since = None

    async def _commit_group(self, batches: list[_Batch]) -> None:
        # A look before and a stat after: nothing is written into a file already without a name
        # or onto a disk too full to checkpoint what it adds, and nothing is acknowledged whose
        # file lost its name during the commit (_committed).
        statements = [st for batch in batches for st in batch.statements]
        self._check_before_commit(_size_of(statements))
        try:
            await self._commit(statements)
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


def _size_of(statements: list[Statement]) -> int:
    """About what ``statements`` add to the file: their text and blob parameters, 100 bytes of
    row overhead each (an estimate for the free-space check, not an account)."""
    size = 0
    for _, params in statements:
        size += 100
        for value in params:
            if isinstance(value, (str, bytes)):
                size += len(value)
    return size
