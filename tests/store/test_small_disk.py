"""A store on a file system too small for SQLite's default WAL (a 2 MiB tmpfs, mounted by the
fixture; root only, skipped elsewhere with the reason): the WAL is checkpointed before it can fill
the disk, the real ``run`` starts on a full disk and reports down instead of exiting, recovers by
itself when space returns, and a graceful stop leaves no WAL behind. Also: ``freeBytes`` is read
when asked, and faults that a look at the file can see show without a commit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.core.depot import DepotView
from gateway.errors import StoreError
from gateway.net.depot_recorder import DepotRecorder
from gateway.store.engine import Store
from gateway.store.health import RESERVE_BYTES, FileLook, autocheckpoint_pages, file_fault
from tests.procs import GatewayProcess, base_config
from tests.store.disk import fill
from tests.support import charger

MIB = 1024 * 1024


def meter_values(n: int) -> dict[str, Any]:
    """A 1.6 MeterValues of about 4 KB (40 sampled values): stored while the cloud is down."""
    values = [
        {"value": f"{n}.{i}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
        for i in range(40)
    ]
    return {
        "connectorId": 1,
        "meterValue": [{"timestamp": "2026-12-01T00:00:00Z", "sampledValue": values}],
    }


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def mount(args: list[str]) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def unmount(directory: Path) -> None:
    """Take the topmost mount off ``directory``."""
    subprocess.run(["umount", str(directory)], check=True, capture_output=True)


def wal_size(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def get_health(port: int) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.get("/health")
    return response.status_code, response.json()


async def wait_health(port: int, code: int, timeout: float = 5) -> dict[str, Any]:
    """Poll /health until it answers ``code``; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got, body = await get_health(port)
        if got == code:
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"/health still {got} after {timeout} s: {body}")
        await asyncio.sleep(0.05)


async def test_the_wal_is_checkpointed_before_it_can_fill_a_2mb_disk(small_fs: Path) -> None:
    path = small_fs / "g.db"
    store = await Store.open(path)
    largest_wal = 0
    written = 0
    try:
        for n in range(5000):
            try:
                await store.enqueue("CP", "1.6", f"m{n}", "DataTransfer", "x" * 4000, float(n))
            except Exception:
                break
            written += 1
            largest_wal = max(largest_wal, wal_size(path))
        else:
            raise AssertionError("a 2 MiB disk took 20 MB of messages")
        assert store.status()["ok"] is False
        assert store.status()["error"].startswith("disk full")
        # SQLite's default (1000 pages, ~4 MB) would have let the WAL take the whole disk.
        assert largest_wal <= 2 * MIB // 4, largest_wal
        assert written > 100  # most of the disk went to messages, not to the WAL
        await store.probe()  # room is left to checkpoint: the WAL goes back into the file
        assert wal_size(path) == 0
    finally:
        await store.close()
    assert wal_size(path) == 0
    reopened = await Store.open(path)  # no wedge: the next start opens (down: still full)
    try:
        assert len(await reopened.pending("CP", 10_000)) == written
    finally:
        await reopened.close()


async def test_a_full_disk_keeps_the_watchdog_fed_other_faults_do_not(small_fs: Path) -> None:
    # A restart cannot make room: the watchdog stays fed while the disk is full (the store is
    # down meanwhile); a fault a restart may cure stops it.
    store = await Store.open(small_fs / "g.db")
    try:
        filler = fill(small_fs)
        await store.probe()
        assert str(store.status()["error"]).startswith("disk full")
        assert await store.healthy()
        filler.unlink()
        await store.probe()
        assert store.ok
        await store.fetchone("PRAGMA query_only = 1")
        with pytest.raises(StoreError, match="read-only"):
            await store.write([("INSERT OR REPLACE INTO store_probe (id, at) VALUES (2, 0)", ())])
        assert not await store.healthy()
        assert str(store.why_unhealthy()).startswith("read-only")
    finally:
        await store.close()


async def test_the_depot_view_waits_for_a_full_disk_without_a_line_a_flush(
    small_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await Store.open(small_fs / "g.db")
    view = DepotView()
    recorder = DepotRecorder(view, store)
    status = {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
    try:
        filler = fill(small_fs)
        await store.probe()
        view.charger_call("CP", "1.6", "StatusNotification", status, 1.0)
        caplog.clear()
        for _ in range(5):  # ten seconds of flushes: nothing tried, nothing logged
            assert await recorder.flush(meters=False) == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        filler.unlink()
        await store.probe()
        assert await recorder.flush(meters=False) == 1  # what changed meanwhile is written
        assert [cid for cid, _ in await store.depot_records()] == ["CP"]
    finally:
        await store.close()


async def test_free_bytes_is_read_when_asked(small_fs: Path) -> None:
    store = await Store.open(small_fs / "g.db")
    try:
        before = store.status()["freeBytes"]
        assert before == free_bytes(small_fs)
        (small_fs / "other").write_bytes(b"\0" * 512 * 1024)
        # No probe ran: the value is the file system's now, not the last probe's.
        assert store.status()["freeBytes"] == free_bytes(small_fs) <= before - 512 * 1024
        fill(small_fs)
        assert store.status()["freeBytes"] == free_bytes(small_fs) < 4096
    finally:
        await store.close()


async def test_idle_probe_commits_at_most_once_per_idle_interval(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    store = await Store.open(path)
    # Another connection sees each commit of the store's as a change of its data_version.
    watcher = sqlite3.connect(path, isolation_level=None)

    def data_version() -> int:
        return int(watcher.execute("PRAGMA data_version").fetchone()[0])

    try:
        store.start_monitoring(every_s=0.01)  # the gateway's 10 min between probe commits
        first, wal = data_version(), wal_size(path)
        for _ in range(100):  # 4 s, ~400 rounds of the probe: looks only, no commit
            await asyncio.sleep(0.04)
            assert data_version() == first
        assert wal_size(path) == wal
    finally:
        await store.close()
    # With a short idle interval the same probe does commit: the check above can fail.
    store = await Store.open(path)
    try:
        first = data_version()
        store.start_monitoring(every_s=0.01, idle_s=0.2)
        for _ in range(500):
            await asyncio.sleep(0.01)
            if data_version() != first:
                break
        assert data_version() != first
    finally:
        watcher.close()
        await store.close()


def test_what_a_look_at_the_file_says() -> None:
    # The decisions on values, as stat, statvfs and access report them (a file this user may not
    # write cannot be made for root, who runs these tests).
    opened = (1, 10)
    fine = FileLook(opened, wal_bytes=0, free_bytes=MIB, read_only_fs=False, writable=True)
    assert file_fault("g.db", fine, opened) is None
    reason = file_fault("g.db", replace(fine, read_only_fs=True), opened)
    assert reason is not None and reason.startswith("read-only")
    reason = file_fault("g.db", replace(fine, writable=False), opened)
    assert reason is not None and reason.startswith("permission denied")
    assert "deleted" in str(file_fault("g.db", replace(fine, identity=None), opened))
    assert "replaced" in str(file_fault("g.db", replace(fine, identity=(1, 11)), opened))
    # Full: fewer bytes free than the WAL, the reserve and twice the commit about to start.
    edge = replace(fine, wal_bytes=100_000, free_bytes=100_000 + RESERVE_BYTES)
    assert file_fault("g.db", edge, opened) is None
    assert str(file_fault("g.db", edge, opened, incoming_bytes=1)).startswith("disk full")
    # Once full, twice the reserve must be free again: a disk at the edge does not flap.
    assert str(file_fault("g.db", edge, opened, was_full=True)).startswith("disk full")
    # The WAL takes at most an eighth of its room; SQLite's default where there is plenty.
    assert autocheckpoint_pages(2 * MIB, 0, 4096) == 32
    assert autocheckpoint_pages(10**9, 0, 4096) == 1000
    assert autocheckpoint_pages(0, 0, 4096) == 16


async def test_read_only_full_and_replaced_show_within_5s_without_a_commit(
    small_fs: Path,
) -> None:
    # The gateway's own probe intervals: a commit only after 10 idle minutes, so whatever shows
    # within 5 s was seen by stat/statvfs.
    path = small_fs / "g.db"
    cfg = base_config(small_fs.parent, db=path)
    async with GatewayProcess(cfg) as gateway:
        port = gateway.api_port
        await wait_health(port, 200)

        # Read-only: a read-only bind mount over the store's directory. The kernel refuses to
        # remount a file system read-only while the gateway holds files open for writing; the
        # path's file system is read-only all the same (statvfs says ST_RDONLY), same inode.
        mount(["--bind", "-o", "ro", str(small_fs), str(small_fs)])
        try:
            body = await wait_health(port, 503)
            assert body["store"]["error"].startswith("read-only")
        finally:
            unmount(small_fs)
        await wait_health(port, 200)

        filler = fill(small_fs)
        body = await wait_health(port, 503)
        assert body["store"]["error"].startswith("disk full")
        filler.unlink()
        await wait_health(port, 200)

        os.link(path, small_fs / "kept.db")
        other = small_fs / "other.db"
        sqlite3.connect(other).close()
        os.replace(other, path)
        body = await wait_health(port, 503)
        assert "replaced" in body["store"]["error"]
        os.replace(small_fs / "kept.db", path)
        await wait_health(port, 200)


async def test_run_starts_on_a_full_disk_reports_down_and_recovers(small_fs: Path) -> None:
    path = small_fs / "gw.db"
    upstream = '[upstream]\nurl = "ws://127.0.0.1:9/ocpp"\ncall_timeout_s = 1\n'
    cfg = base_config(small_fs.parent, upstream, db=path)

    # 1. The store itself fills the disk (beside other files): messages until one is refused.
    others = small_fs / "logs"
    others.write_bytes(b"\0" * 512 * 1024)
    acknowledged = 0
    async with GatewayProcess(cfg) as gateway, charger(gateway.charger_port, "CP") as cp:
        for n in range(2000):
            answer = await cp.call("MeterValues", meter_values(n))
            if answer[0] == 4:
                assert answer[2] == "InternalError" and answer[3] == ""
                break
            acknowledged += 1
        else:
            raise AssertionError("a 2 MiB disk took 8 MB of messages")
        body = await wait_health(gateway.api_port, 503)
        assert body["store"]["error"].startswith("disk full")
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait() == 0
    assert wal_size(path) == 0  # the graceful stop checkpointed the WAL into the file
    assert acknowledged > 100

    # 2. Start on the full disk (a filler takes what is left): down, not an exit.
    filler = fill(small_fs)
    gateway = await GatewayProcess(cfg).start()
    try:
        body = await wait_health(gateway.api_port, 503)
        assert body["status"] == "down" and body["store"]["error"].startswith("disk full")
        assert body["store"]["freeBytes"] == free_bytes(small_fs) < 4096  # now, not at start
        async with charger(gateway.charger_port, "CP") as cp:
            answer = await cp.call("MeterValues", meter_values(9000))
            assert answer[0] == 4 and answer[2] == "InternalError"
            await asyncio.sleep(1.5)  # still running, not exiting into a restart loop
            assert gateway.proc is not None and gateway.proc.returncode is None

            # 3. Space returns (the filler and other files go): commits resume within 5 s,
            # without a restart.
            filler.unlink()
            others.unlink()
            await wait_health(gateway.api_port, 200)
            assert (await cp.call("MeterValues", meter_values(9001)))[0] == 3
            acknowledged += 1
        gateway.signal(signal.SIGTERM)
        assert await gateway.wait() == 0
    finally:
        if gateway.proc is not None and gateway.proc.returncode is None:
            await gateway.kill9()
    assert wal_size(path) == 0
    lines = "".join(gateway.log)
    assert "Traceback" not in lines
    store = await Store.open(path)
    try:
        assert len(await store.pending("CP", 10_000)) == acknowledged
    finally:
        await store.close()
