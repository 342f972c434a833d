"""Reads on the store's connection and the sync's schema changes on a real SQLite file.

SQLite refuses ``DROP TABLE`` with SQLITE_LOCKED ("database table is locked") while another
statement of the same connection is still active. The sync drops the tables it replaced
(``TagTables._drop_gradually``) on the connection that also serves the reads of /health, the API,
the outbox and the depot view, so no read may leave a statement open while another task writes.
The swap's renames are separate statements on that connection too: a read of the synced tables
queued between two of them must wait for the commit instead of finding no table.
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


async def test_reads_of_the_synced_tables_never_see_a_swap_half_done(store: Store) -> None:
    """The swap renames the tables in separate statements on the connection the reads share: a
    read between two renames would find no access_ids table. Reads run while syncs swap in
    lists of other tags, and each sees one whole list, never an error."""
    stop = asyncio.Event()
    seen: list[set[str]] = []

    async def poll() -> None:
        while not stop.is_set():
            listed = await store.list_access_ids(None, 10)
            assert await store.count_access_ids() == 3
            authorized = await store.authorized_access_ids()
            seen.append({r.ocpp_id_tag[:3] for r in listed} | {a[1][:3] for a in authorized})

    pollers = [asyncio.create_task(poll()) for _ in range(2)]
    try:
        for i in range(30):
            stage = await store.create_sync_stage(1_800_000_000)
            tags = [f"{i:02d}-{n}" for n in range(3)]
            rows = [parse_access_id(access_id(n + 1, tag=tag)) for n, tag in enumerate(tags)]
            await store.stage_access_ids(stage, rows)
            await store.swap_sync_stage(stage, access_ids=3, vehicles=0, duration_s=0.1, at="x")
            assert all(not p.done() for p in pollers)  # a failed read ends its poller
    finally:
        stop.set()
        await asyncio.gather(*pollers)
    assert len(seen) > 30
    # The list and the authorized ids of one poll may come from consecutive syncs, never a torn one.
    assert all(len(prefixes) <= 2 for prefixes in seen)
