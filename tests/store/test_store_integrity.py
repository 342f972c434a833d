"""Start-up integrity, the store commands and the commit path's own failures, on real files and
with the real CLI as a subprocess where start-up matters."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gateway.errors import StoreError
from gateway.store.engine import Store
from tests.procs import GatewayProcess, base_config, cli
from tests.support import charger, wait_for

PAGE = 4096


def config(tmp_path: Path, store: Path) -> Path:
    upstream = '[upstream]\nurl = "ws://127.0.0.1:9/ocpp"\ncall_timeout_s = 1\n'
    return base_config(tmp_path, upstream, db=store)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_cli(cfg: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli("--config", str(cfg), *args), capture_output=True, text=True, timeout=timeout
    )


async def make_store(path: Path, rows: int = 2000) -> None:
    store = await Store.open(path)
    for i in range(0, rows, 100):
        await store.write(
            [
                (
                    "INSERT INTO outbox (charger_id, ocpp_version, message_id, action, payload,"
                    " created_at) VALUES ('CP', '1.6', ?, 'StatusNotification', ?, 1.0)",
                    (f"m{j}", "p" * 400),
                )
                for j in range(i, i + 100)
            ]
        )
    await store.close()  # the last connection checkpoints the WAL into the file


def spoil(path: Path, kind: str) -> None:
    """Overwrite ten pages in the middle of the file with zeros or random bytes."""
    pages = path.stat().st_size // PAGE
    assert pages > 40
    data = bytes(10 * PAGE) if kind == "zeroed" else os.urandom(10 * PAGE)
    with path.open("r+b") as f:
        f.seek((pages // 2) * PAGE)
        f.write(data)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


@pytest.mark.parametrize("kind", ["zeroed", "garbage"])
async def test_corrupt_store_stops_start_up_with_one_line(tmp_path: Path, kind: str) -> None:
    store = tmp_path / "gw.db"
    await make_store(store)
    spoil(store, kind)
    before = digest(store)
    cfg = config(tmp_path, store)

    done = run_cli(cfg, "run")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (line,) = error_lines(done.stderr)
    assert str(store) in line and "quick_check" in line
    assert digest(store) == before  # left exactly as it was, not replaced by a new store

    checked = run_cli(cfg, "store", "check")
    assert checked.returncode == 1
    assert "integrity_check" in checked.stderr and "Traceback" not in checked.stderr
    assert digest(store) == before


async def test_quick_check_that_raises_is_one_line_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "gw.db"
    await make_store(store)
    # Half the pages the header counts are gone: the check itself raises ("malformed").
    os.truncate(store, store.stat().st_size // 2)
    before = digest(store)
    with pytest.raises(StoreError, match="quick_check") as raised:
        await Store.open(store)
    assert str(store) in str(raised.value)
    assert not [r for r in caplog.records if r.name == "gateway.store" and r.levelno >= 40]

    done = run_cli(config(tmp_path, store), "run")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = error_lines(done.stderr)
    assert str(store) in line and "PRAGMA quick_check" in line
    assert "cannot commit" not in done.stderr
    assert digest(store) == before


async def test_not_a_database_is_never_overwritten(tmp_path: Path) -> None:
    store = tmp_path / "gw.db"
    store.write_bytes(b"precious, but not SQLite " * 500)
    before = digest(store)
    done = run_cli(config(tmp_path, store), "run")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (line,) = error_lines(done.stderr)
    assert str(store) in line
    assert digest(store) == before


def test_read_only_store_at_start_up_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    store = directory / "gw.db"
    mounted = False
    if os.geteuid() == 0:
        # Root ignores file modes: make the file system read-only (a tmpfs holding the store).
        mount = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(directory)]
        subprocess.run(mount, check=False, capture_output=True)
        mounted = os.path.ismount(directory)
        if not mounted:
            pytest.skip("cannot mount a tmpfs here to make the store read-only for root")
    asyncio.run(make_store(store, rows=100))
    before = digest(store)
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
    else:
        store.chmod(0o444)
        directory.chmod(0o555)
    try:
        done = run_cli(config(tmp_path, store), "run")
        assert done.returncode == 1 and "Traceback" not in done.stderr
        (line,) = error_lines(done.stderr)
        assert str(store) in line and "read-only" in line
        assert digest(store) == before
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], check=False)
        else:
            directory.chmod(0o755)


async def test_store_check_passes_a_good_store_and_never_creates_one(tmp_path: Path) -> None:
    store = tmp_path / "gw.db"
    cfg = config(tmp_path, store)
    missing = run_cli(cfg, "store", "check")
    assert missing.returncode == 1 and str(store) in missing.stderr
    assert not store.exists()
    await make_store(store, rows=100)
    done = run_cli(cfg, "store", "check")
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout


async def test_backup_is_a_consistent_copy_while_the_gateway_writes(tmp_path: Path) -> None:
    store = tmp_path / "gw.db"
    cfg = config(tmp_path, store)
    copy = tmp_path / "backup" / "copy.db"
    copy.parent.mkdir()
    acknowledged: list[int] = []
    stop = asyncio.Event()  # not cancel(): 3.11's wait_for can swallow a cancellation
    async with GatewayProcess(cfg) as gateway:

        async def send_until_stopped() -> None:
            async with charger(gateway.charger_port, "CP") as cp:
                n = 0
                while not stop.is_set():
                    n += 1
                    payload = {"connectorId": n, "errorCode": "NoError", "status": "Available"}
                    answer = await cp.call("StatusNotification", payload)
                    assert answer[0] == 3
                    acknowledged.append(n)

        sender = asyncio.create_task(send_until_stopped())
        try:
            await wait_for(lambda: len(acknowledged) >= 50, timeout=20)
            at_start = len(acknowledged)
            done = await asyncio.to_thread(run_cli, cfg, "store", "backup", str(copy))
            at_end = len(acknowledged)
            assert done.returncode == 0, done.stderr
            assert at_end > at_start  # the gateway kept acknowledging during the backup
        finally:
            stop.set()
            await asyncio.wait_for(sender, 10)
    with sqlite3.connect(copy) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (count,) = db.execute("SELECT COUNT(*) FROM outbox").fetchone()
    assert at_start <= count <= at_end
    assert not list(copy.parent.glob("*.partial"))


async def test_backup_never_writes_over_the_store(tmp_path: Path) -> None:
    store = tmp_path / "gw.db"
    await make_store(store, rows=100)
    before = digest(store)
    done = run_cli(config(tmp_path, store), "store", "backup", str(store))
    assert done.returncode == 1 and "the store itself" in done.stderr
    assert digest(store) == before


async def test_failed_commit_is_rolled_back_and_the_next_one_works(tmp_path: Path) -> None:
    # A deferred foreign key fails at COMMIT itself, which leaves the transaction open unless
    # the store rolls it back; the next BEGIN would then fail for ever.
    store = await Store.open(tmp_path / "g.db")
    try:
        await store.write(
            [
                ("CREATE TABLE parent (id INTEGER PRIMARY KEY)", ()),
                (
                    "CREATE TABLE child (p INTEGER REFERENCES parent (id)"
                    " DEFERRABLE INITIALLY DEFERRED)",
                    (),
                ),
            ]
        )
        with pytest.raises(StoreError, match="FOREIGN KEY"):
            await store.write([("INSERT INTO child (p) VALUES (42)", ())])
        await store.enqueue("CP", "1.6", "after", "StatusNotification", "{}", 1.0)
        assert [r.message_id for r in await store.pending("CP")] == ["after"]
        assert store.ok  # a statement's own failure says nothing about the file
    finally:
        await store.close()


class Unbindable:
    """A parameter whose conversion raises something that is not an SQLite error."""

    def __conform__(self, protocol: object) -> object:
        raise RuntimeError("conversion failed")


async def test_every_writer_is_released_whatever_the_exception(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "g.db")
    try:
        good = [
            store.enqueue("CP", "1.6", f"m{i}", "StatusNotification", "{}", 1.0) for i in range(10)
        ]
        bad = store.write([("INSERT INTO store_probe (id, at) VALUES (7, ?)", (Unbindable(),))])
        results = await asyncio.wait_for(
            asyncio.gather(*good, bad, return_exceptions=True), timeout=10
        )
        assert results[:-1] == [None] * 10  # the group's other writers are committed
        assert isinstance(results[-1], StoreError) and "conversion failed" in str(results[-1])
        await store.enqueue("CP", "1.6", "later", "StatusNotification", "{}", 2.0)
        assert [r.message_id for r in await store.pending("CP")] == [
            *(f"m{i}" for i in range(10)),
            "later",
        ]
        assert store.ok
    finally:
        await store.close()


async def test_corruption_met_while_running_keeps_the_store_down(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    await make_store(path)
    spoil(path, "zeroed")
    store = await Store.open(path, quick_check=False)  # as if the pages went bad after start-up
    try:
        with pytest.raises(StoreError, match="corrupt"):
            await store.pending("CP", 10_000)
        assert store.status()["ok"] is False
        assert "corrupt" in store.status()["error"]
        await store.probe()  # a probe commit elsewhere in the file proves nothing: still down
        assert store.status()["ok"] is False and not await store.healthy()
    finally:
        await store.close()
