"""Store faults under a running gateway, on real files: each one visible on /health within 5 s,
nothing acknowledged that is not on disk under the store's name, and back to normal by itself.

Disk full uses a small tmpfs mounted by the test, which needs root (CI runs as root); elsewhere
those tests are skipped and say why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from gateway.errors import StoreError
from gateway.store.engine import Store
from tests.store.disk import fill
from tests.support import FakeCloud, charger, make_settings, running_gateway

STATUS = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}


def status(n: int) -> dict[str, Any]:
    return {**STATUS, "connectorId": n}


@pytest.fixture
async def down_cloud() -> AsyncIterator[FakeCloud]:
    """A cloud that is not listening: every CALL is answered locally and stored."""
    cloud = await FakeCloud().start()
    await cloud.stop()
    yield cloud


async def health(gw: Gateway) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as client:
        response = await client.get("/health")
    return response.status_code, response.json()


async def wait_health(gw: Gateway, code: int, timeout: float) -> dict[str, Any]:
    """Poll /health until it answers ``code``; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got, body = await health(gw)
        if got == code:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/health still {got} after {timeout} s: {body}")
        await asyncio.sleep(0.05)


def remove(*paths: Path) -> None:
    for path in paths:
        path.unlink()


async def test_disk_full_is_down_within_5s_and_recovers_by_itself(
    small_fs: Path, down_cloud: FakeCloud, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(
        small_fs.parent,
        store={"path": str(small_fs / "gateway.db")},
        upstream={"url": down_cloud.url, "call_timeout_s": 1.0},
    )
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP") as cp:
        assert (await cp.call("StatusNotification", status(1)))[0] == 3
        code, body = await health(gw)
        assert code == 200 and body["store"]["ok"] is True
        assert 0 < body["store"]["freeBytes"] <= 2 * 1024 * 1024
        filler = fill(small_fs)
        caplog.clear()
        # Keep sending until the store refuses; a refused message is an InternalError.
        acknowledged = 1
        for n in range(2, 3000):
            answer = await cp.call("StatusNotification", status(n))
            if answer[0] == 4:
                assert answer[2] == "InternalError" and answer[3] == ""
                break
            acknowledged += 1
        else:
            raise AssertionError("a full disk never refused a commit")
        body = await wait_health(gw, 503, timeout=5)
        assert body["status"] == "down" and body["store"]["ok"] is False
        assert body["store"]["error"].startswith("disk full")
        # More messages meanwhile: refused, never acknowledged.
        for n in range(10):
            assert (await cp.call("StatusNotification", status(5000 + n)))[0] == 4

        remove(filler)
        await wait_health(gw, 200, timeout=5)
        assert (await cp.call("StatusNotification", status(9999)))[0] == 3
        acknowledged += 1
        assert gw.store is not None
        rows = await gw.store.pending("CP", 10_000)
        assert len(rows) == acknowledged  # exactly what was acknowledged
    # One line per change of state, no traceback per refused message.
    store_lines = [r for r in caplog.records if r.name == "gateway.store"]
    assert 1 <= len(store_lines) <= 4, [r.getMessage() for r in store_lines]
    assert not any(r.exc_info for r in caplog.records if r.levelno >= logging.ERROR)


async def test_wal_shrinks_back_after_a_burst(tmp_path: Path) -> None:
    # journal_size_limit: once a checkpoint has copied a big WAL into the database, the next
    # commit truncates it back to 4 MiB; without the limit it would keep its largest size.
    store = await Store.open(tmp_path / "g.db")
    wal = tmp_path / "g.db-wal"
    try:
        await store.write(
            [
                ("INSERT INTO store_probe (id, at) VALUES (?, ?)", (i + 10, float(i)))
                for i in range(1)
            ]
            + [
                (
                    "INSERT INTO outbox (charger_id, ocpp_version, message_id, action, payload,"
                    " created_at) VALUES ('CP', '1.6', ?, 'DataTransfer', ?, 1.0)",
                    (f"m{i}", os.urandom(6000).hex()),
                )
                for i in range(1000)
            ]
        )
        assert wal.stat().st_size > 8 * 1024 * 1024
        await store.fetchone("PRAGMA wal_checkpoint(PASSIVE)")
        await store.enqueue("CP", "1.6", "after", "StatusNotification", "{}", 2.0)
        assert wal.stat().st_size <= 4 * 1024 * 1024
    finally:
        await store.close()


async def test_read_only_store_is_down_and_back_when_writable(
    tmp_path: Path, down_cloud: FakeCloud
) -> None:
    # SQLite's own read-only switch on the gateway's connection: every write fails with
    # SQLITE_READONLY, as on a file system remounted read-only.
    settings = make_settings(tmp_path, upstream={"url": down_cloud.url, "call_timeout_s": 1.0})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP") as cp:
        assert gw.store is not None
        await gw.store.fetchone("PRAGMA query_only = 1")
        assert (await cp.call("StatusNotification", status(1)))[2] == "InternalError"
        body = await wait_health(gw, 503, timeout=5)
        assert body["store"]["error"].startswith("read-only")
        assert not await gw.store.healthy()  # the watchdog is not fed
        await gw.store.fetchone("PRAGMA query_only = 0")
        await wait_health(gw, 200, timeout=5)
        assert await gw.store.healthy()
        assert (await cp.call("StatusNotification", status(2)))[0] == 3
        assert [r.message_id for r in await gw.store.pending("CP")] == ["m2"]


async def test_idle_fault_only_a_commit_shows_is_found_by_the_probe_commit(tmp_path: Path) -> None:
    # No traffic at all, and a fault no stat/statvfs can see (SQLite's own read-only switch):
    # the probe's tiny commit after idle_s finds it (the gateway's idle_s is 10 minutes; faults
    # a look can see show within 5 s without a commit: tests/store/test_small_disk.py).
    store = await Store.open(tmp_path / "g.db")
    try:
        store.start_monitoring(every_s=0.05, idle_s=0.5)
        await store.fetchone("PRAGMA query_only = 1")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not store.ok:
                break
        assert str(store.status()["error"]).startswith("read-only")
        assert not await store.healthy()
        await store.fetchone("PRAGMA query_only = 0")
        for _ in range(100):  # while down the probe commits every round
            await asyncio.sleep(0.05)
            if store.ok:
                break
        assert store.ok and await store.healthy()
    finally:
        await store.close()


async def test_deleted_file_refuses_acknowledgement_then_is_restored(
    tmp_path: Path, down_cloud: FakeCloud
) -> None:
    path = tmp_path / "gateway.db"
    settings = make_settings(tmp_path, upstream={"url": down_cloud.url, "call_timeout_s": 1.0})
    acknowledged: list[int] = []
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP") as cp:
        for n in range(1, 21):
            assert (await cp.call("StatusNotification", status(n)))[0] == 3
            acknowledged.append(n)
        remove(*(Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm")))
        # The next commit goes into a file without a name: it is not acknowledged.
        assert (await cp.call("StatusNotification", status(21)))[2] == "InternalError"
        code, body = await health(gw)
        assert code == 503 and "deleted" in body["store"]["error"]
        # Within a probe round the open database is written back under its name.
        await wait_health(gw, 200, timeout=5)
        assert path.exists()
        for n in range(22, 31):
            assert (await cp.call("StatusNotification", status(n)))[0] == 3
            acknowledged.append(n)
    # A restart on the restored file has every acknowledged message, and nothing else.
    async with running_gateway(settings) as gw:
        assert gw.store is not None
        rows = await gw.store.pending("CP", 1000)
        assert [int(r.payload.split('"connectorId":')[1].split(",")[0]) for r in rows] == (
            acknowledged
        )


async def test_replaced_file_is_down_until_its_own_file_is_back(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = await Store.open(path)
    try:
        await store.enqueue("CP", "1.6", "a", "StatusNotification", "{}", 1.0)
        keep = tmp_path / "kept.db"
        os.link(path, keep)  # the operator's copy of the original inode
        other = tmp_path / "other.db"
        sqlite3.connect(other).close()
        os.replace(other, path)
        with pytest.raises(StoreError, match="replaced"):
            await store.enqueue("CP", "1.6", "b", "StatusNotification", "{}", 2.0)
        assert store.status()["ok"] is False and "replaced" in store.status()["error"]
        await store.probe()
        assert store.status()["ok"] is False  # still another file under the name
        os.replace(keep, path)  # the store's own file back under its name
        await store.probe()
        assert store.status() == {
            "ok": True,
            "error": None,
            "freeBytes": store.status()["freeBytes"],
        }
        await store.enqueue("CP", "1.6", "c", "StatusNotification", "{}", 3.0)
        assert [r.message_id for r in await store.pending("CP")] == ["a", "c"]
    finally:
        await store.close()


async def test_stat_per_group_commit_sees_a_deletion_before_the_answer(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "g.db")
    try:
        await store.enqueue("CP", "1.6", "a", "StatusNotification", "{}", 1.0)
        (tmp_path / "g.db").unlink()
        results = await asyncio.gather(
            *(
                store.enqueue("CP", "1.6", f"b{i}", "StatusNotification", "{}", 2.0)
                for i in range(20)
            ),
            return_exceptions=True,
        )
        assert all(isinstance(r, StoreError) and "deleted" in str(r) for r in results)
        assert not await store.healthy()
    finally:
        await store.close()


async def test_a_store_failing_every_other_commit_logs_once_a_minute(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    # A flaky disk: each commit alternates between failing and working. Each change of state
    # used to be a line (200 here); now each kind is logged once a minute, the rest counted.
    caplog.set_level(logging.INFO, logger="gateway.store")
    probe = ("INSERT OR REPLACE INTO store_probe (id, at) VALUES (1, ?)", (1.0,))
    failed = 0
    for _ in range(100):
        await store.fetchone("PRAGMA query_only = 1")
        with pytest.raises(StoreError):
            await store.write([probe])
        failed += 1
        await store.fetchone("PRAGMA query_only = 0")
        await store.write([probe])
    assert failed == 100 and store.status()["ok"] is True
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"store {store.path}: cannot commit: read-only")
    assert lines[1].startswith(f"store {store.path}: commits again: was: read-only")
    left = store.lines.limiter.flush(time.monotonic() + 60.0)
    assert sorted((x.kind, x.count) for x in left) == [("cannot commit", 99), ("commits again", 99)]
