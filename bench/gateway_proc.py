"""A gateway process for the asyncio benchmarks (recovery, outbox): ``python -m gateway run``
with a config, ready once it logs the port it listens on; its log is read and dropped meanwhile.
The relay benchmark's targets, which run under a synchronous harness, are in :mod:`bench.targets`.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

__all__ = ["LISTENING", "start_gateway", "stop_gateway"]

LISTENING = re.compile(r"listening for chargers on ws://[^:]+:(\d+)")
_DRAINS: set[asyncio.Task[None]] = set()


async def start_gateway(
    config: Path, *, source: str | None = None, timeout_s: float = 60.0
) -> tuple[asyncio.subprocess.Process, int]:
    """Start the gateway (of the package in ``source`` if given) and return it with its charger
    port, once it listens."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLIPTURN_GATEWAY_")}
    if source:
        env["PYTHONPATH"] = source
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(config),
        "run",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=source or None,
    )
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), timeout_s)).decode()
        if not line:
            raise RuntimeError("gateway exited during start-up")
        match = LISTENING.search(line)
        if match:
            break
    task = asyncio.create_task(_drain(proc))
    _DRAINS.add(task)
    task.add_done_callback(_DRAINS.discard)
    return proc, int(match[1])


async def stop_gateway(proc: asyncio.subprocess.Process, timeout_s: float = 30.0) -> None:
    """SIGTERM, and wait for the process to end."""
    proc.terminate()
    await asyncio.wait_for(proc.wait(), timeout_s)


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stderr is not None
    while await proc.stderr.readline():
        pass
