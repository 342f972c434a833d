"""Power-cut safety: ``kill -9`` of the real gateway process, restart, nothing acknowledged is lost.

Duplicates can only arise for the one replayed message whose answer from the cloud was received but
whose deletion from the queue had not been committed when the process died (docs/offline-behaviour.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed

from tests.procs import GatewayProcess, base_config
from tests.support import FakeCloud, charger, wait_for


def status(n: int) -> dict[str, Any]:
    # connectorId carries the sequence number so the cloud's view can be checked for order.
    return {"connectorId": n, "errorCode": "NoError", "status": "Available"}


def delivered(cloud: FakeCloud, charger_id: str = "CP") -> list[int]:
    return [f[3]["connectorId"] for f in cloud.calls(charger_id, "StatusNotification")]


async def down_cloud() -> FakeCloud:
    cloud = await FakeCloud().start()
    await cloud.stop()  # keeps its port: the gateway is configured with it
    return cloud


def config(tmp_path: Path, cloud: FakeCloud) -> Path:
    return base_config(tmp_path, f'[upstream]\nurl = "{cloud.url}"\ncall_timeout_s = 1\n')


async def test_queued_messages_survive_kill9(tmp_path: Path) -> None:
    cloud = await down_cloud()
    n = 40
    gateway = await GatewayProcess(config(tmp_path, cloud)).start()
    async with charger(gateway.charger_port, "CP") as cp:
        for i in range(1, n + 1):
            assert (await cp.call("StatusNotification", status(i)))[0] == 3
        await gateway.kill9()
    await cloud.restart()
    try:
        async with GatewayProcess(config(tmp_path, cloud)):
            await wait_for(lambda: len(delivered(cloud)) >= n, timeout=20)
            await asyncio.sleep(0.3)  # nothing more arrives
            assert delivered(cloud) == list(range(1, n + 1))
    finally:
        await cloud.stop()


async def test_kill9_during_enqueue_loses_nothing_acknowledged(tmp_path: Path) -> None:
    cloud = await down_cloud()
    gateway = await GatewayProcess(config(tmp_path, cloud)).start()
    acknowledged: list[int] = []
    sent: list[int] = []

    async def send_forever(port: int) -> None:
        async with charger(port, "CP") as cp:
            i = 0
            while True:
                i += 1
                sent.append(i)
                await cp.call("StatusNotification", status(i))
                acknowledged.append(i)

    sender = asyncio.create_task(send_forever(gateway.charger_port))
    await wait_for(lambda: len(acknowledged) >= 25, timeout=20)
    await gateway.kill9()  # mid-stream: a CALL is very likely in flight
    with contextlib.suppress(ConnectionClosed, TimeoutError, OSError):
        await asyncio.wait_for(sender, 5)
    await cloud.restart()
    try:
        async with GatewayProcess(config(tmp_path, cloud)):
            await wait_for(lambda: len(delivered(cloud)) >= len(acknowledged), timeout=20)
            await asyncio.sleep(0.3)
            got = delivered(cloud)
        assert got[: len(acknowledged)] == acknowledged  # every acknowledged message, in order
        assert got == sent[: len(got)]  # at most the in-flight one beyond that, nothing invented
        assert len(got) <= len(acknowledged) + 1
    finally:
        await cloud.stop()


async def test_kill9_during_replay_resumes_in_order(tmp_path: Path) -> None:
    cloud = await down_cloud()
    n = 150
    gateway = await GatewayProcess(config(tmp_path, cloud)).start()
    async with charger(gateway.charger_port, "CP") as cp:
        for i in range(1, n + 1):
            await cp.call("StatusNotification", status(i))
    await gateway.kill9()

    cloud.delay_s = 0.005
    await cloud.restart()
    try:
        replaying = await GatewayProcess(config(tmp_path, cloud)).start()
        await wait_for(lambda: len(delivered(cloud)) >= n // 3, timeout=20)
        await replaying.kill9()
        first_pass = len(delivered(cloud))
        assert first_pass < n
        async with GatewayProcess(config(tmp_path, cloud)):
            await wait_for(lambda: n in delivered(cloud), timeout=30)
            await asyncio.sleep(0.3)
        got = delivered(cloud)
        collapsed = [x for i, x in enumerate(got) if i == 0 or got[i - 1] != x]
        assert collapsed == list(range(1, n + 1))
        assert len(got) - len(collapsed) <= 1  # only a message whose answer was lost in flight
    finally:
        await cloud.stop()
