"""The SQLite store on real files: group commit, migrations, outbox operations."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import sqlite3
from pathlib import Path

import pytest

from gateway.core.versions import VersionRecord
from gateway.errors import StoreError
from gateway.store.engine import SCHEMA_VERSION, Store


async def test_group_commit_isolates_a_failing_batch(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "g.db")
    await store.enqueue(
        "CP", "1.6", "first", "StartTransaction", "{}", 1.0, local_tx_id=2_000_000_000
    )

    async def ok(i: int) -> None:
        await store.enqueue("CP", "1.6", f"m{i}", "MeterValues", "{}", float(i))

    # The same local transaction id again violates the tx_ids primary key.
    dup = store.enqueue(
        "CP", "1.6", "dup", "StartTransaction", "{}", 9.0, local_tx_id=2_000_000_000
    )
    results = await asyncio.gather(*(ok(i) for i in range(50)), dup, return_exceptions=True)
    assert isinstance(results[-1], StoreError)
    assert all(r is None for r in results[:-1])
    rows = await store.pending("CP", 1000)
    assert [r.message_id for r in rows] == ["first"] + [f"m{i}" for i in range(50)]
    await store.close()
    # Durable: a fresh connection sees every committed row.
    with sqlite3.connect(tmp_path / "g.db") as db:
        assert db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 51


async def test_wal_full_sync_and_migrations(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "g.db")
    assert (await store.fetchone("PRAGMA journal_mode"))[0] == "wal"  # type: ignore[index]
    assert (await store.fetchone("PRAGMA synchronous"))[0] == 2  # type: ignore[index]  # FULL
    await store.close()
    store = await Store.open(tmp_path / "g.db")  # reopening applies nothing twice
    assert (await store.fetchone("PRAGMA user_version"))[0] == SCHEMA_VERSION  # type: ignore[index]
    await store.close()
    with sqlite3.connect(tmp_path / "g.db") as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        await Store.open(tmp_path / "g.db")


async def test_unusable_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError):
        await Store.open(tmp_path / "junk.db")


async def test_outbox_lifecycle(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "g.db")
    await store.enqueue(
        "A", "1.6", "s", "StartTransaction", '{"idTag":"X"}', 10.0, local_tx_id=2_000_000_007
    )
    await store.enqueue("A", "1.6", "m", "MeterValues", "{}", 11.0)
    await store.enqueue("B", "2.0.1", "t", "TransactionEvent", "{}", 12.0)
    assert await store.backlog() == {"A": (2, 10.0), "B": (1, 12.0)}
    assert await store.backlog_versions() == {"A": "1.6", "B": "2.0.1"}
    assert await store.max_local_tx_id() == 2_000_000_007
    start, meter = await store.pending("A")
    assert start.local_tx_id == 2_000_000_007 and meter.local_tx_id is None

    await store.delivered(start.seq, tx=("A", 2_000_000_007, 555))
    assert await store.tx_ids("A") == [(2_000_000_007, 555)]
    await store.retry_later(meter.seq, next_attempt_at=99.0, error="InternalError: busy")
    (meter,) = await store.pending("A")
    assert meter.attempts == 1 and meter.next_attempt_at == 99.0
    await store.dead_letter(meter, code="FormationViolation", description="bad", now=100.0)
    assert await store.pending("A") == []
    (dead,) = await store.dead_letters()
    assert (
        dead["message_id"] == "m"
        and dead["attempts"] == 2
        and dead["error_code"] == "FormationViolation"
    )

    await store.save_boot("A", "1.6", "b1", "{}", 1.0, delivered=False)
    assert await store.undelivered_boot("A") == ("b1", "{}")
    assert await store.undelivered_boot("A", "1.6") == ("b1", "{}")
    assert await store.undelivered_boot("A", "2.0.1") is None  # never replayed on another version
    await store.boot_delivered("A")
    assert await store.undelivered_boot("A") is None
    await store.close()


async def test_the_cloud_s_version_is_kept_per_charger_across_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "gateway.db")
    store = await Store.open(path)
    assert await store.cloud_versions() == {}
    await store.save_cloud_version("A", VersionRecord("2.0.1", frozenset({"2.1"})), 1.0)
    await store.save_cloud_version("B", VersionRecord("1.6"), 1.0)
    await store.save_cloud_version("B", VersionRecord("2.0.1"), 2.0)  # the latest choice wins
    await store.close()
    store = await Store.open(path)
    assert await store.cloud_versions() == {
        "A": VersionRecord("2.0.1", frozenset({"2.1"})),
        "B": VersionRecord("2.0.1"),
    }
    await store.close()


async def test_prune_bounds_an_undrained_queue(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "g.db")
    for i in range(10):
        await store.enqueue("A", "1.6", f"s{i}", "StatusNotification", "{}", float(i))
    await store.enqueue("A", "1.6", "tx", "StopTransaction", "{}", 1.0)
    removed = await store.prune_outbox(
        before=5.0, transactional_before=0.0, transactional=["StopTransaction"], max_rows=4
    )
    # s0-s4 are older than a day's worth here; the transaction message is kept; then the cap of 4.
    assert [r.message_id for r in await store.pending("A")] == ["s7", "s8", "s9", "tx"]
    assert removed == 7
    await store.close()


@pytest.mark.parametrize("on_disk", [True, False])
async def test_one_chargers_reservations_read_every_committed_write(
    tmp_path: Path, on_disk: bool
) -> None:
    # On a file this read goes through the read-only connection on the event loop thread and is
    # kept until the next put_reservations; in memory there is no such connection and the shared
    # one answers. Both must see every write that has returned.
    store = await Store.open(tmp_path / "g.db" if on_disk else ":memory:")
    row = ["CP", 7, 1, "alice", None, "2026-11-21T19:00:00.000Z", "api", "Accepted", "active"]
    await store.put_reservations([[*row, "2026-11-21T18:00:00Z", "2026-11-21T18:00:00Z"]])
    active = await store.reservations_in_state("active", "CP")
    assert [(r["reservation_id"], r["id_tag"], r["connector_id"]) for r in active] == [
        (7, "alice", 1)
    ]
    assert await store.reservations_in_state("active", "OTHER") == []
    active.clear()  # callers get their own list, never the store's cached one
    assert len(await store.reservations_in_state("active", "CP")) == 1
    row[8] = "used"
    await store.put_reservations([[*row, "2026-11-21T18:00:00Z", "2026-11-21T18:05:00Z"]])
    assert await store.reservations_in_state("active", "CP") == []
    assert [r["state"] for r in await store.reservations_in_state("used", "CP")] == ["used"]
    await store.close()


async def test_a_failed_read_or_transaction_is_a_store_error(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "g.db")
    try:
        with sqlite3.connect(tmp_path / "g.db") as db:
            db.execute("DROP TABLE vehicles")  # another process spoils the schema under the store
        with pytest.raises(StoreError, match="no such table: vehicles"):
            await store.list_vehicles(None, 10)
        with pytest.raises(StoreError, match="no such table: vehicles"):
            await store.get_vehicle(1)
        with sqlite3.connect(tmp_path / "g.db") as db:
            db.execute("DROP TABLE dead_letters")
        with pytest.raises(StoreError, match="no such table: dead_letters"):
            await store.requeue_dead_letter(1)  # inside a transaction of the store's own
        assert store.status()["ok"] is True  # a bad statement is not a broken file
    finally:
        await store.close()
    with pytest.raises(StoreError):
        await store.dead_letter_count()  # closed


def test_named_operations_return_records_not_sqlite_rows() -> None:
    raw = {"fetchall", "fetchone"}  # the engine's own query primitives
    for name, function in inspect.getmembers(Store, inspect.isfunction):
        if not name.startswith("_") and name not in raw:
            assert "sqlite3" not in str(function.__annotations__.get("return")), name


async def test_rows_are_frozen_records_with_the_column_names(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "g.db")
    try:
        row = ["CP", 7, None, "alice", "FLEET", "2026-11-21T19:00:00.000Z", "api", "Accepted"]
        await store.put_reservations(
            [[*row, "active", "2026-11-21T18:00:00Z", "2026-11-21T18:01:00Z"]]
        )
        (record,) = await store.reservations_in_state("active")
        assert dataclasses.is_dataclass(record) and not isinstance(record, sqlite3.Row)
        assert (record.charger_id, record.connector_id, record.parent_id_tag) == (
            "CP",
            None,
            "FLEET",
        )
        assert record["updated_at"] == record.updated_at == "2026-11-21T18:01:00Z"
        with pytest.raises(dataclasses.FrozenInstanceError):
            record.state = "used"  # type: ignore[misc]
        assert await store.reservation("CP", 7) == record
        await store.learn_tags([("ALICE", "alice", "Accepted", None, None)], "2026-11-21T18:00:00Z")
        learned = await store.find_learned_tag("ALICE")
        assert learned is not None and (learned.id_tag, learned.status) == ("alice", "Accepted")
        assert await store.sync_status() is None and await store.list_vehicles(None, 5) == []
    finally:
        await store.close()
