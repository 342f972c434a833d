"""The pair tier runs on an event loop with a fake monotonic clock (tests/pair/harness.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from tests.pair.harness import FakeClockLoop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], Any]]:
    return {"fake_clock": FakeClockLoop}
