from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support import FakeCloud


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloud]:
    fake = await FakeCloud().start()
    try:
        yield fake
    finally:
        await fake.stop()
