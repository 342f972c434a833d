"""Outage recovery: how soon after the cloud returns is every link back and every backlog drained.

For each cloud (``--clouds``: ``fast`` answers handshakes at once, ``slow`` after 0.3 s,
``refusing`` answers every other one with HTTP 503; default ``fast``) and charger count
(``--chargers``, default 10, 100, 1,000) the gateway runs with its defaults (``reconnect_max_s =
60``, no rate cap: at most K handshakes in flight) and its cloud down (nothing listens on the
port: each attempt is refused at once). N chargers connect and each sends ``--per-charger``
messages (BootNotification, then StatusNotification and MeterValues), all answered locally and
queued. The cloud stays down ``--outage`` seconds (default 70: a link's 7th attempt, the first with
the 60 s cap, comes at most 63 s after its first failure), then the fast fake cloud starts on the
port. Measured from that moment: when the cloud has one connection per charger (``linksBackS``),
when it has received every queued message (``drainedS``), the busiest second of new handshakes
it saw (``peakConnectsPerS``), the most handshakes it had open at once
(``maxHandshakesInFlight``) and those it refused. The contract's bound is 5 s + chargers / 50.
``--links-timeout`` (default 300 s) ends a run that has not got every link back by then.

``--baseline-src DIR`` runs the same against the gateway's code in DIR too (e.g. an export of an
earlier commit: ``git archive <commit> | tar -x -C DIR``), interleaved, in the same run.

Run: ``python -m bench.bench_recovery`` (~5 min). Writes ``bench/results/recovery-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.fake_cloud import start_fake_cloud
from bench.gateway_proc import start_gateway, stop_gateway
from bench.loadgen import meter_values
from bench.machine import describe_machine
from bench.targets import free_port

__all__ = ["BENCH_SUITE", "main"]

BENCH_SUITE = "recovery"
RESULTS = Path(__file__).resolve().parent / "results"


def _write_config(tmp: Path, cloud_port: int) -> Path:
    config = tmp / "gateway.toml"
    config.write_text(
        f'[chargers]\nhost = "127.0.0.1"\nport = 0\n'
        f'[upstream]\nurl = "ws://127.0.0.1:{cloud_port}/ocpp"\n'
        f'[api]\nport = 0\n[store]\npath = "{tmp / "gateway.db"}"\n'
    )
    return config


async def _charger(port: int, charger_id: str, count: int) -> ClientConnection:
    ws = await connect(
        f"ws://127.0.0.1:{port}/ocpp/{charger_id}",
        subprotocols=["ocpp1.6"],  # type: ignore[list-item]
        compression=None,
        open_timeout=60,
    )
    ids = itertools.count(1)
    stamp = "2026-11-21T12:00:00Z"
    for n in range(count):
        mid = str(next(ids))
        if n == 0:
            frame = [
                2,
                mid,
                "BootNotification",
                {"chargePointVendor": "B", "chargePointModel": "M"},
            ]
        elif n % 2:
            frame = [2, mid, "StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                                    "status": "Charging"}]  # fmt: skip
        else:
            frame = [2, mid, "MeterValues", meter_values(1, 7, n, stamp)]
        await ws.send(orjson.dumps(frame).decode())
        answer = orjson.loads(await asyncio.wait_for(ws.recv(), 60))
        if answer[0] != 3 or answer[1] != mid:
            raise RuntimeError(f"{charger_id}: unexpected answer {answer!r}")
    return ws


CLOUDS = {"fast": (0.0, False), "slow": (0.3, False), "refusing": (0.0, True)}


async def _one(
    chargers: int,
    per_charger: int,
    outage_s: float,
    src: str | None,
    cloud: str = "fast",
    links_timeout_s: float = 300.0,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmpdir:
        cloud_port = free_port()
        config = _write_config(Path(tmpdir), cloud_port)
        proc, port = await start_gateway(config, source=src)
        down_at = time.monotonic()
        gate = asyncio.Semaphore(100)

        async def one(i: int) -> ClientConnection:
            async with gate:
                return await _charger(port, f"REC-{chargers}-{i:05d}", per_charger)

        conns = await asyncio.gather(*(one(i) for i in range(chargers)))
        queued_s = time.monotonic() - down_at
        await asyncio.sleep(max(0.0, outage_s - queued_s))
        delay, refuse = CLOUDS[cloud]
        server, stats = await start_fake_cloud(
            "127.0.0.1", cloud_port, handshake_delay_s=delay, refuse_every_other=refuse
        )
        up = time.monotonic()
        total = chargers * per_charger
        links_back = links_back_99 = drained = None
        deadline = up + links_timeout_s
        while time.monotonic() < deadline and (links_back is None or drained is None):
            now = time.monotonic()
            if links_back_99 is None and stats.connections >= 0.99 * chargers:
                links_back_99 = now - up
            if links_back is None and stats.connections >= chargers:
                links_back = now - up
            if drained is None and stats.calls >= total:
                drained = now - up
            await asyncio.sleep(0.02)
        outage = up - down_at
        linked = stats.connections
        load = os.getloadavg()[0]
        await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
        await stop_gateway(proc)
        server.close()
        await server.wait_closed()
    return {
        "gateway": "baseline" if src else "this",
        "cloud": cloud,
        "chargers": chargers,
        "messages": total,
        "outageS": round(outage, 1),
        "linksBack99S": None if links_back_99 is None else round(links_back_99, 2),
        "linksBackS": None if links_back is None else round(links_back, 2),
        "linksBack": linked,
        "drainedS": None if drained is None else round(drained, 2),
        "delivered": stats.calls,
        "boundS": round(5.0 + chargers / 50.0, 1),
        "peakConnectsPerS": stats.peak_handshakes_per_s,
        "maxHandshakesInFlight": stats.max_in_flight,
        "refused": stats.refused,
        "loadAverage": round(load, 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    sources: list[str | None] = [None] if not args.baseline_src else [args.baseline_src, None]
    for cloud in args.clouds:
        for chargers in args.chargers:
            for src in sources:
                result = await _one(
                    chargers, args.per_charger, args.outage, src, cloud, args.links_timeout
                )
                print(json.dumps(result), file=sys.stderr)
                runs.append(result)
    return {"machine": describe_machine(), "runs": runs}


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "| cloud | gateway | chargers | messages | outage (s) | 99% / all links back (s) "
        "| drained (s) | bound (s) | max handshakes in flight | peak connects/s | refused "
        "| load avg |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["runs"]:
        back = r["linksBackS"] if r["linksBackS"] is not None else f"{r['linksBack']:,} back"
        lines.append(
            f"| {r['cloud']} | {r['gateway']} | {r['chargers']:,} | {r['messages']:,} "
            f"| {r['outageS']} | {r['linksBack99S']} / {back} | {r['drainedS']} | {r['boundS']} "
            f"| {r['maxHandshakesInFlight']} | {r['peakConnectsPerS']} | {r['refused']} "
            f"| {r['loadAverage']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--chargers", type=lambda t: [int(x) for x in t.split(",")], default=[10, 100, 1000]
    )
    parser.add_argument("--per-charger", type=int, default=5)
    parser.add_argument("--outage", type=float, default=70.0)
    parser.add_argument("--baseline-src", help="also run the gateway's code from this directory")
    parser.add_argument(
        "--clouds",
        type=lambda t: t.split(","),
        default=["fast"],
        help="fast (0 s handshakes), slow (0.3 s), refusing (every other one refused with 503)",
    )
    parser.add_argument("--links-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recovery-latest.json").write_text(json.dumps(result, indent=2))
    text = _markdown(result)
    print(text)
    ok = all(r["drainedS"] is not None and r["delivered"] >= r["messages"] for r in result["runs"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
