"""Bytes the gateway writes to storage: idle (no charger) per day, and per relayed frame.

A gateway process runs with its store on the file system of ``--dir`` (a disk, not a tmpfs:
``/proc/<pid>/io`` ``write_bytes`` counts only what reaches a block device) and the fast fake
cloud online. Idle: ``--idle`` seconds (default 90) with no charger after a 5 s settle (``--settle``); the bytes
written, scaled to a day. Load, S1-like but short: ``--chargers`` (default 50) 1.6 chargers each
send one CALL a second (StatusNotification, MeterValues, Heartbeat in turn) for ``--load``
seconds (default 30), all relayed to the cloud; the bytes written during that time divided by the
CALLs relayed.

The gateway makes a probe commit after 10 idle minutes (gateway.store.engine.PROBE_IDLE_S): the
default 90 s window shows the writes of everything else; ``--idle 640`` includes one probe commit.

``--baseline-src DIR`` runs the same against the gateway's code in DIR too (e.g. an export of an
earlier commit: ``git archive <commit> | tar -x -C DIR``), one after the other in the same run.

Run: ``python -m bench.bench_idle_writes`` (~2.5 min per gateway). Writes
``bench/results/idle-writes-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
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
from bench.procfs import write_bytes
from bench.targets import free_port

__all__ = ["BENCH_SUITE", "main"]

BENCH_SUITE = "idle-writes"
RESULTS = Path(__file__).resolve().parent / "results"
DAY_S = 86_400


def _write_config(tmp: Path, cloud_port: int) -> Path:
    config = tmp / "gateway.toml"
    config.write_text(
        f'[chargers]\nhost = "127.0.0.1"\nport = 0\n'
        f'[upstream]\nurl = "ws://127.0.0.1:{cloud_port}/ocpp"\n'
        f'[api]\nport = 0\n[store]\npath = "{tmp / "gateway.db"}"\n'
    )
    return config


def _frame(n: int, mid: str) -> list[Any]:
    kind = n % 3
    if kind == 0:
        status = {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
        return [2, mid, "StatusNotification", status]
    if kind == 1:
        return [2, mid, "MeterValues", meter_values(1, 7, n, "2026-11-21T12:00:00Z")]
    return [2, mid, "Heartbeat", {}]


async def _charger(port: int, charger_id: str, until: float) -> int:
    """One charger sending a CALL a second until ``until`` (monotonic); the CALLs answered."""
    answered = 0
    async with connect(
        f"ws://127.0.0.1:{port}/ocpp/{charger_id}",
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        compression=None,
        open_timeout=60,
    ) as ws:
        ids = itertools.count(1)
        boot = {"chargePointVendor": "B", "chargePointModel": "M"}
        await ws.send(orjson.dumps([2, "0", "BootNotification", boot]).decode())
        await asyncio.wait_for(ws.recv(), 60)
        next_at = time.monotonic()
        for n in itertools.count():
            next_at += 1.0
            if next_at > until:
                break
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            mid = str(next(ids))
            await ws.send(orjson.dumps(_frame(n, mid)).decode())
            answer = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
            if answer[0] != 3 or answer[1] != mid:
                raise RuntimeError(f"{charger_id}: unexpected answer {answer!r}")
            answered += 1
    return answered


async def _one(args: argparse.Namespace, src: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-idle-writes-", dir=args.dir) as tmpdir:
        cloud_port = free_port()
        server, stats = await start_fake_cloud("127.0.0.1", cloud_port)
        config = _write_config(Path(tmpdir), cloud_port)
        proc, port = await start_gateway(config, source=src)
        try:
            await asyncio.sleep(args.settle)
            before = write_bytes(proc.pid) or 0
            started = time.monotonic()
            await asyncio.sleep(args.idle)
            idle_bytes = (write_bytes(proc.pid) or 0) - before
            idle_s = time.monotonic() - started

            before = write_bytes(proc.pid) or 0
            until = time.monotonic() + args.load
            answered = await asyncio.gather(
                *(_charger(port, f"IW-{i:04d}", until) for i in range(args.chargers))
            )
            load_bytes = (write_bytes(proc.pid) or 0) - before
        finally:
            await stop_gateway(proc)
            server.close()
            await server.wait_closed()
    frames = sum(answered)
    return {
        "gateway": "baseline" if src else "this",
        "idleS": round(idle_s, 1),
        "idleBytes": idle_bytes,
        "idleBytesPerDay": round(idle_bytes / idle_s * DAY_S),
        "chargers": args.chargers,
        "loadS": args.load,
        "framesRelayed": frames,
        "cloudCalls": stats.calls,
        "loadBytes": load_bytes,
        "bytesPerFrame": round(load_bytes / frames, 1) if frames else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for src in [args.baseline_src, None] if args.baseline_src else [None]:
        result = await _one(args, src)
        print(json.dumps(result), file=sys.stderr)
        runs.append(result)
    return {"machine": describe_machine(), "runs": runs}


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "| gateway | idle (s) | idle bytes | idle per day | chargers x s | frames "
        "| bytes written | per frame |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['gateway']} | {r['idleS']} | {r['idleBytes']:,} "
            f"| {r['idleBytesPerDay'] / 1e6:.2f} MB | {r['chargers']} x {r['loadS']:g} "
            f"| {r['framesRelayed']:,} | {r['loadBytes']:,} | {r['bytesPerFrame']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=90.0, help="idle seconds measured")
    parser.add_argument("--chargers", type=int, default=50)
    parser.add_argument("--load", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--dir", default=None, help="where the store lives (a disk)")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after start-up")
    parser.add_argument("--baseline-src", default=None, help="also run the gateway in DIR")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{BENCH_SUITE}-latest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
