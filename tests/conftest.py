"""Fixtures shared by every layer of the tests: a fake cloud, a store on a real file, a certificate."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.store.engine import Store
from tests.support import FakeCloud


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist workers (``make test``), the tests marked ``first`` start first: the longest
    (~25 s) then runs beside the rest instead of keeping one worker busy after the other has run
    out of tests. One process keeps the files' order."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.get_closest_marker("first") is None)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """An empty store in a real SQLite file under ``tmp_path``."""
    opened = await Store.open(tmp_path / "gateway.db")
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloud]:
    fake = await FakeCloud().start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
def certificate(tmp_path: Any) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)
