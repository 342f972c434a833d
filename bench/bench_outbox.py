"""Store-and-forward benchmark: durable enqueue rate, then replay of the backlog, peak RSS of each.

Phase 1 (enqueue): the gateway runs with its cloud unreachable; N chargers each send M CALLs in a
closed loop (3-phase MeterValues of ~600 bytes and StatusNotification, alternating). Every answer
the chargers receive was committed to disk first (synchronous=FULL, group commit), so answers/s is
the durable enqueue rate.

Phase 2 (replay): the gateway is stopped, the fast fake cloud started, and the gateway started again
on the same store: it opens one upstream link per charger with a backlog and drains each in order, one
CALL at a time. Replay rate = messages the cloud received / (last arrival - first arrival); the time
from process start to the first replayed message is reported apart (start-up with a full queue).

Run: ``python -m bench.bench_outbox --chargers 50 --per-charger 2000`` (100,000 messages).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect

from bench.fake_cloud import start_fake_cloud
from bench.gateway_proc import start_gateway, stop_gateway
from bench.loadgen import meter_values
from bench.machine import describe_machine
from bench.procfs import cpu_seconds, memory
from bench.report import emit
from bench.targets import free_port

BENCH_SUITE = "outbox"


def _config(tmp: Path, cloud_port: int) -> Path:
    path = tmp / "gateway.toml"
    path.write_text(
        f"""
[chargers]
host = "127.0.0.1"
port = 0
[upstream]
url = "ws://127.0.0.1:{cloud_port}/ocpp"
call_timeout_s = 10
[api]
port = 0
[store]
path = "{tmp / "gateway.db"}"
"""
    )
    return path


async def _start_gateway(config: Path) -> tuple[asyncio.subprocess.Process, int, float]:
    started = time.perf_counter()
    proc, port = await start_gateway(config)
    return proc, port, time.perf_counter() - started


async def _charger(port: int, index: int, count: int) -> int:
    ids = itertools.count(1)
    stamp = "2026-11-21T12:00:00Z"
    status = {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
    async with connect(
        f"ws://127.0.0.1:{port}/ocpp/BENCH-{index:04d}",
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        compression=None,
        max_queue=None,
    ) as ws:
        for n in range(count):
            mid = str(next(ids))
            if n % 2:
                frame = [2, mid, "StatusNotification", status]
            else:
                frame = [2, mid, "MeterValues", meter_values(1, 1000 + index, n, stamp)]
            await ws.send(orjson.dumps(frame).decode())
            answer = orjson.loads(await ws.recv())
            if answer[0] != 3 or answer[1] != mid:
                raise RuntimeError(f"unexpected answer {answer!r}")
    return count


async def run(chargers: int, per_charger: int) -> dict[str, Any]:
    total = chargers * per_charger
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmpdir:
        tmp = Path(tmpdir)
        cloud_port = free_port()
        config = _config(tmp, cloud_port)

        # Phase 1: cloud down, everything answered locally and queued durably.
        proc, port, _ = await _start_gateway(config)
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        sent = await asyncio.gather(*(_charger(port, i, per_charger) for i in range(chargers)))
        enqueue_s = time.perf_counter() - t0
        enqueue_cpu = cpu_seconds(proc.pid) - cpu0
        enqueue_mem = memory(proc.pid)
        await stop_gateway(proc)
        db_bytes = sum(os.path.getsize(f) for f in map(str, tmp.glob("gateway.db*")))  # noqa: ASYNC240

        # Phase 2: cloud up, restart on the same store, measure the drain.
        server, stats = await start_fake_cloud("127.0.0.1", cloud_port)
        proc, _port, startup_s = await _start_gateway(config)
        launched = time.perf_counter() - startup_s
        first = None
        cpu0 = cpu_seconds(proc.pid)
        deadline = time.perf_counter() + 600
        while stats.calls < total and time.perf_counter() < deadline:
            if first is None and stats.calls:
                first = time.perf_counter()
            await asyncio.sleep(0.01)
        last = time.perf_counter()
        replay_cpu = cpu_seconds(proc.pid) - cpu0
        replay_mem = memory(proc.pid)
        await stop_gateway(proc)
        server.close()
        await server.wait_closed()

    first = first or last
    return {
        "machine": describe_machine(),
        "chargers": chargers,
        "messages": total,
        "enqueue": {
            "acknowledged": sum(sent),
            "seconds": round(enqueue_s, 2),
            "messagesPerS": round(total / enqueue_s),
            "gatewayCpuUsPerMessage": round(enqueue_cpu * 1e6 / total, 1),
            "peakRssMb": round(enqueue_mem.hwm_kb / 1024, 1),
            "storeBytes": db_bytes,
        },
        "replay": {
            "delivered": stats.calls,
            "startupToFirstS": round(first - launched, 2),
            "seconds": round(last - first, 2),
            "messagesPerS": round(stats.calls / max(last - first, 1e-9)),
            "gatewayCpuUsPerMessage": round(replay_cpu * 1e6 / max(stats.calls, 1), 1),
            "peakRssMb": round(replay_mem.hwm_kb / 1024, 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chargers", type=int, default=50)
    parser.add_argument("--per-charger", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.chargers, args.per_charger))
    emit(result, args.json)
    ok = result["enqueue"]["acknowledged"] == result["messages"] == result["replay"]["delivered"]
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
