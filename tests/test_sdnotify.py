"""systemd notify client against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.sdnotify import Notifier, watchdog_interval_s, watchdog_loop
from gateway.store.engine import Store


class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``: a bound datagram socket that records messages."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        received = []
        while True:
            try:
                received.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return received

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def socket_path(tmp_path: Path) -> str:
    path = tmp_path / "notify.sock"
    if len(str(path)) >= 100:  # sun_path holds 108 bytes; fall back to a short private directory
        path = Path("/tmp") / f"sdn-{uuid.uuid4().hex[:12]}.sock"
    return str(path)


@pytest.fixture
def systemd(socket_path: str) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(socket_path)
    yield fake
    fake.close()
    Path(socket_path).unlink(missing_ok=True)


def test_ready_status_watchdog_stopping_reach_the_socket(
    systemd: FakeSystemd, socket_path: str
) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": socket_path})
    assert notifier.enabled
    assert notifier.ready("serving 0 chargers")
    assert notifier.status("serving 3 chargers")
    assert notifier.watchdog()
    assert notifier.stopping()
    notifier.close()
    assert systemd.messages() == [
        "READY=1\nSTATUS=serving 0 chargers",
        "STATUS=serving 3 chargers",
        "WATCHDOG=1",
        "STOPPING=1",
    ]


def test_status_is_kept_on_one_line(systemd: FakeSystemd, socket_path: str) -> None:
    notifier = Notifier(socket_path)
    notifier.status("upstream down\nretrying")
    notifier.close()
    assert systemd.messages() == ["STATUS=upstream down retrying"]


def test_abstract_socket_address() -> None:
    name = f"flipturn-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    try:
        notifier = Notifier("@" + name)
        assert notifier.ready()
        notifier.close()
        assert fake.messages() == ["READY=1"]
    finally:
        fake.close()


def test_no_notify_socket_is_a_no_op() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    notifier.close()


def test_relative_path_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.sdnotify"):
        notifier = Notifier("relative/notify.sock")
    assert not notifier.enabled
    assert "unsupported NOTIFY_SOCKET" in caplog.text


def test_send_failure_never_raises_and_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    with caplog.at_level(logging.DEBUG, logger="gateway.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    debugs = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(warnings) == 1
    assert len(debugs) == 2
    notifier.close()


def test_sending_resumes_once_the_socket_appears(socket_path: str) -> None:
    notifier = Notifier(socket_path)
    assert notifier.watchdog() is False
    fake = FakeSystemd(socket_path)
    try:
        assert notifier.watchdog() is True
        assert fake.messages() == ["WATCHDOG=1"]
    finally:
        notifier.close()
        fake.close()
        Path(socket_path).unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_period(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval_s(environ) == expected


def test_watchdog_pid_can_be_given() -> None:
    environ = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "4242"}
    assert watchdog_interval_s(environ, pid=4242) == 2.0
    assert watchdog_interval_s(environ, pid=4243) is None


async def test_watchdog_loop_pings_while_healthy_and_stops_when_not(
    systemd: FakeSystemd, socket_path: str
) -> None:
    notifier = Notifier(socket_path)
    healthy = True
    checks = 0

    async def is_healthy() -> bool:
        nonlocal checks
        checks += 1
        return healthy

    task = asyncio.create_task(watchdog_loop(notifier, 0.02, is_healthy))
    await asyncio.sleep(0.15)
    pings_while_healthy = systemd.messages()
    healthy = False
    await asyncio.sleep(0.02)  # let the current cycle finish
    systemd.messages()
    checks_before = checks
    await asyncio.sleep(0.15)
    while_unhealthy = systemd.messages()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    notifier.close()

    assert pings_while_healthy.count("WATCHDOG=1") >= 3
    assert set(pings_while_healthy) == {"WATCHDOG=1"}
    assert checks > checks_before  # it kept checking, but sent no ping
    assert "WATCHDOG=1" not in while_unhealthy


async def test_watchdog_loop_reports_unhealthy_then_resumes(
    systemd: FakeSystemd, socket_path: str
) -> None:
    notifier = Notifier(socket_path)
    answers = iter([True, False, False, True])

    async def is_healthy() -> bool:
        return next(answers, True)

    task = asyncio.create_task(watchdog_loop(notifier, 0.01, is_healthy))
    await asyncio.sleep(0.08)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    notifier.close()

    received = systemd.messages()
    assert received[:4] == [
        "WATCHDOG=1",
        "STATUS=unhealthy: health check failed",
        "WATCHDOG=1",
        "STATUS=running",
    ]
    assert set(received[4:]) == {"WATCHDOG=1"}


async def test_watchdog_loop_treats_a_hung_or_raising_check_as_unhealthy(
    systemd: FakeSystemd, socket_path: str
) -> None:
    notifier = Notifier(socket_path)
    calls = 0

    async def is_healthy() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()  # a wedged store: never answers
        raise RuntimeError("database is locked")

    task = asyncio.create_task(watchdog_loop(notifier, 0.02, is_healthy))
    await asyncio.sleep(0.1)
    assert not task.done()  # the loop survives both failures
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    notifier.close()

    received = systemd.messages()
    assert "WATCHDOG=1" not in received
    assert received == ["STATUS=unhealthy: health check took longer than 0.02 s"]
    assert calls >= 2


async def test_watchdog_is_fed_only_while_the_store_commits(
    systemd: FakeSystemd, socket_path: str, tmp_path: Path
) -> None:
    store = await Store.open(tmp_path / "g.db")
    # Rounds every 0.05 s and a probe commit after 0.1 s without one (the gateway's are 1 s and
    # 3 s): the same read-only fault, seen by the same probe, sooner.
    store.start_monitoring(every_s=0.05, idle_s=0.1)
    notifier = Notifier(socket_path)
    task = asyncio.create_task(
        watchdog_loop(notifier, 0.05, store.healthy, lambda: store.status()["error"])
    )

    async def until(seen: str, timeout: float = 5) -> list[str]:
        got: list[str] = []
        async with asyncio.timeout(timeout):
            while not any(m.startswith(seen) for m in got):
                await asyncio.sleep(0.01)
                got += systemd.messages()
        return got

    try:
        await until("WATCHDOG=1")
        await store.fetchone("PRAGMA query_only = 1")  # every commit now fails: read-only
        unhealthy = await until("STATUS=unhealthy", timeout=10)
        assert any("read-only" in m for m in unhealthy if m.startswith("STATUS="))
        systemd.messages()
        await asyncio.sleep(0.3)
        assert "WATCHDOG=1" not in systemd.messages()  # not fed while it cannot commit
        await store.fetchone("PRAGMA query_only = 0")
        await until("WATCHDOG=1")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        notifier.close()
        await store.close()
