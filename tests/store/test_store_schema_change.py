"""Reads on the store's connection and the sync's schema changes on a real SQLite file.

SQLite refuses ``DROP TABLE`` with SQLITE_LOCKED ("database table is locked") while another
statement of the same connection is still active. The sync drops the tables it replaced
(``TagTables._drop_gradually``) on the connection that also serves the reads of /health, the API,
the outbox and the depot view, so no read may leave a statement open while another task writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from gateway.store.engine import Store
from gateway.tags.flipturn import parse_access_id
from tests.flipturn_fake import access_id

Read = Callable[[Store], Coroutine[Any, Any, Any]]
Check = Callable[[Any], bool]


async def _swap_in(store: Store, count: int, at: str) -> None:
    """One sync's store side: a stage of ``count`` access ids swapped in (and the old dropped)."""
    stage = await store.create_sync_stage(1_800_000_000)
    rows = [parse_access_id(access_id(i, tag=f"RFID-{i}")) for i in range(1, count + 1)]
    await store.stage_access_ids(stage, rows)
    await store.swap_sync_stage(stage, access_ids=count, vehicles=0, duration_s=0.1, at=at)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "gateway.db")
    await _swap_in(s, 3, "2026-12-01T00:00:00Z")
    yield s
    await s.close()


READS: dict[str, tuple[Read, Check]] = {
    # What GET /health and the sync's own status read, what the API's pages read, a tag lookup.
    "sync_status": (lambda s: s.sync_status(), lambda r: r.access_ids == 3),
    "count_access_ids": (lambda s: s.count_access_ids(), lambda r: r == 3),
    "list_access_ids": (lambda s: s.list_access_ids(None, 10), lambda r: len(r) == 3),
    "find_access_id": (lambda s: s.find_access_id("RFID-2"), lambda r: r.id == 2),
}


@pytest.mark.parametrize("name", READS)
async def test_a_read_in_flight_does_not_lock_out_a_table_drop(store: Store, name: str) -> None:
    read, check = READS[name]
    stage = await store.create_sync_stage(1_800_000_100)  # e.g. a failed sync's, to be dropped
    async with store.transaction() as db:
        reading: asyncio.Task[Any] = asyncio.create_task(read(store))
        # One turn of the loop: the read has handed its SELECT to the connection's thread, ahead
        # of the DROP below, exactly as when a read arrives while the sync empties a table.
        await asyncio.sleep(0)
        await db.execute(f'DROP TABLE "{stage}_access_ids"')
        await db.execute(f'DROP TABLE "{stage}_vehicles"')
    assert check(await reading)
    assert (
        await store.fetchall("SELECT name FROM sqlite_master WHERE name LIKE 'sync_stage_%'") == []
    )


async def test_syncs_succeed_while_health_reads_the_store(store: Store) -> None:
    """The store side of many syncs, each dropping the tables it replaced, while the sync status
    is read continuously (as GET /health and a waiting operator do): every sync goes through."""
    stop = asyncio.Event()
    reads = 0

    async def poll() -> None:
        nonlocal reads
        while not stop.is_set():
            await store.sync_status()
            reads += 1

    pollers = [asyncio.create_task(poll()) for _ in range(2)]
    try:
        for i in range(30):
            await _swap_in(store, 3, f"2026-12-01T00:00:{i:02d}Z")
    finally:
        stop.set()
        await asyncio.gather(*pollers)
    assert reads > 0
    status = await store.sync_status()
    assert status is not None and status.last_success_at == "2026-12-01T00:00:29Z"
    assert (
        await store.fetchall("SELECT name FROM sqlite_master WHERE name LIKE 'sync_stage_%'") == []
    )
