"""Running the real CLI as a subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
R = TypeVar("R")

LISTENING = re.compile(
    r"listening for chargers on wss?://[^:]+:(\d+)\S* .*API on http://[^:]+:(\d+)"
)


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def base_config(tmp_path: Path, extra: str = "", *, db: Path | None = None) -> Path:
    """``tmp_path/c.toml`` for a gateway process: chargers and API on free ports of 127.0.0.1, the
    store at ``db`` (``tmp_path/gw.db``); ``extra``: more tables (e.g. ``[upstream]``)."""
    return write_config(
        tmp_path / "c.toml",
        f"""
[chargers]
host = "127.0.0.1"
port = 0
[api]
port = 0
[store]
path = "{db or tmp_path / "gw.db"}"
{extra}
""",
    )


def prometheus_tool(name: str) -> str:
    """The path of Debian's ``promtool`` or ``prometheus``. Without it the test skips, except
    under ``.ci/run`` (``FLIPTURN_REQUIRE_PROMETHEUS=1``, which installs it), where it fails."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("FLIPTURN_REQUIRE_PROMETHEUS"):
            pytest.fail(f"{name} is missing (apt-get install prometheus)")
        pytest.skip(f"needs {name} (apt-get install prometheus)")
    return path


def side_by_side(run: Callable[[T], R], items: Iterable[T], workers: int = 4) -> list[R]:
    """``[run(item) for item in items]``, ``workers`` at a time: for independent CLI processes,
    whose start-up is most of a short command's time."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, items))


def cli(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "gateway", *args]


class GatewayProcess:
    """``flipturn-gateway --config PATH run`` in a subprocess; knows its ports from its log."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None
        self.charger_port = 0
        self.api_port = 0
        self.log: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 15) -> GatewayProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *cli("--config", str(self.config), "run"),
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                if not line:
                    raise AssertionError("gateway exited during start-up:\n" + "".join(self.log))
                self.log.append(line)
                match = LISTENING.search(line)
                if match:
                    self.charger_port, self.api_port = int(match[1]), int(match[2])
                    break
        self._drain = asyncio.create_task(self._read_rest())
        return self

    async def _read_rest(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode())

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 10) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._drain is not None:
            await self._drain
        return code

    async def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        await self.wait()

    async def __aenter__(self) -> GatewayProcess:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.signal(signal.SIGTERM)
            await self.wait()
