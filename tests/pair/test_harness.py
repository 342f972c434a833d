"""The pair harness itself: the fake clock drives every timer, settling waits for the store's
thread and for ``asyncio.to_thread`` work, and the in-memory connection behaves as the gateway
expects of a WebSocket (order, held reading, the closing handshake, a drop)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

from tests.pair.harness import Close, Link, running


async def test_timers_follow_the_fake_clock_not_the_real_one(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        fired: list[float] = []
        loop = asyncio.get_running_loop()
        for delay in (0.5, 30.0, 90.0):
            loop.call_later(delay, lambda: fired.append(loop.time()))
        start, real = pair.now, time.monotonic()
        await pair.advance(29.9)
        assert fired == [start + 0.5]
        await pair.advance(61)
        assert fired == [start + 0.5, start + 30.0, start + 90.0]  # each at its own time
        assert time.monotonic() - real < 30  # 90 s of the gateway's time, not of ours


async def test_settling_waits_for_the_store_and_for_threads(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        gate = threading.Event()
        done: list[str] = []

        async def slow_work() -> None:
            await asyncio.to_thread(gate.wait, 5)
            await pair.store.write([("CREATE TABLE probe (x)", ())])
            done.append("written")

        task = asyncio.ensure_future(slow_work())
        threading.Timer(0.05, gate.set).start()  # another thread ends its work a bit later
        await pair.settle()
        assert done == ["written"] and task.done()


async def test_the_in_memory_connection_keeps_order_holds_and_closes(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        link = Link("ocpp1.6")
        got: list[str] = []
        link.near.send("early")  # before the far end reads: it waits
        link.far.on_message = lambda m: got.append(str(m))
        await pair.settle()
        assert got == ["early"]
        link.far.hold_reading("busy")
        for n in range(3):
            assert link.near.send(json.dumps(n))
        await pair.settle()
        assert got == ["early"]
        link.far.release_reading("busy")
        await pair.settle()
        assert got == ["early", "0", "1", "2"]
        link.near.close(1000, "bye")
        assert not link.near.send("after close")
        await pair.settle()
        assert link.far.close_rcvd == Close(1000, "bye") == link.near.close_rcvd
        assert link.near.closed.done() and link.far.closed.done()

        dropped = Link("ocpp1.6")
        dropped.drop()
        assert dropped.near.close_rcvd is None and dropped.near.closed.done()
