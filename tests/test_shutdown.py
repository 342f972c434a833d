"""Shutdown ends background loops even when a cancellation is lost inside them."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.app import cancel_and_wait


async def test_a_loop_that_swallows_one_cancellation_is_cancelled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    swallowed = 0
    forever = asyncio.Event()

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await forever.wait()
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # as a library timeout scope can turn a cancel into its own

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # let it reach its first wait
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        await asyncio.wait_for(cancel_and_wait(task, "test loop", every_s=0.05), 5)
    assert task.cancelled()
    assert swallowed == 1
    assert "test loop ignored its cancellation" in caplog.text


async def test_a_loop_that_failed_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("boom")

    task = asyncio.create_task(broken())
    await asyncio.wait([task])
    with caplog.at_level(logging.ERROR, logger="gateway.app"):
        await cancel_and_wait(task, "broken loop")
    assert "broken loop failed" in caplog.text
