"""Benchmark: what it would cost to make a learned answer durable before relaying it.

design.md "Cache learning": the cloud's idTagInfo / idTokenInfo must be the offline answer from
the moment the charger has it. Two ways: (a) commit the learned row before the answer goes to the
charger, or (b) hold the answer in memory until its row commits (what the gateway does,
:mod:`gateway.tags.learned`). (a) puts one durable commit on the relay path of every Authorize,
StartTransaction, StopTransaction and TransactionEvent with an idToken; (b) puts a dict update.

1. The fake cloud (:mod:`bench.fake_cloud`, in this process) answers Authorize ``Accepted``.
2. The real CLI (``python -m gateway --config <toml> run``, of ``--source`` if given) relays to it.
3. One OCPP 1.6 charger sends ``--calls`` Authorize (a new tag each) in a closed loop, alternating
   blocks of 100 with blocks of 100 relayed Heartbeats (which learn nothing); RTT is
   ``perf_counter_ns`` from before ``send`` to the CALLRESULT.
4. Then ``--commits`` single-row ``Store.learn_tag_rows`` commits, one after the other, on a store
   file beside the gateway's (same file system, ``synchronous=FULL``): what (a) would add to each
   of those answers at the least (more when other commits are in the same group).

Run: ``python -m bench.bench_learned [--source DIR]``; prints markdown. About 20 s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from bench.fake_cloud import start_fake_cloud
from bench.gateway_proc import start_gateway, stop_gateway
from bench.loadgen import percentile
from gateway.store.engine import Store

BLOCK = 100


def summary(name: str, samples_us: list[int]) -> str:
    ordered = sorted(samples_us)
    p = [percentile(ordered, q) for q in (50, 90, 99)]
    return f"| {name} | {len(ordered)} | {p[0]:,.0f} | {p[1]:,.0f} | {p[2]:,.0f} |"


async def relay_rtts(port: int, calls: int) -> tuple[list[int], list[int]]:
    ids = itertools.count(1)
    rtts: dict[str, list[int]] = {"Authorize": [], "Heartbeat": []}
    url = f"ws://127.0.0.1:{port}/ocpp/BENCH-1"
    async with connect(url, subprotocols=[Subprotocol("ocpp1.6")], compression=None) as ws:
        for block in range(2 * calls // BLOCK):
            action = "Authorize" if block % 2 == 0 else "Heartbeat"
            for _ in range(BLOCK):
                n = next(ids)
                payload = {"idTag": f"bench-{n}"} if action == "Authorize" else {}
                text = json.dumps([2, str(n), action, payload])
                start = time.perf_counter_ns()
                await ws.send(text)
                answer = json.loads(await ws.recv())
                elapsed = (time.perf_counter_ns() - start) // 1000
                assert answer[0] == 3 and answer[1] == str(n), answer
                if block >= 2:  # the first pair of blocks warms up
                    rtts[action].append(elapsed)
    return rtts["Authorize"], rtts["Heartbeat"]


async def commit_times(path: Path, commits: int) -> list[int]:
    store = await Store.open(path)
    try:
        times: list[int] = []
        for n in range(commits):
            row = (f"KEY-{n}", f"key-{n}", "Accepted", None, None, "2026-12-08T00:00:00Z")
            start = time.perf_counter_ns()
            await store.learn_tag_rows([row])
            times.append((time.perf_counter_ns() - start) // 1000)
        return times
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--source", help="run the gateway of this source tree")
    parser.add_argument("--calls", type=int, default=2000, help="Authorize CALLs (as many HB)")
    parser.add_argument("--commits", type=int, default=500)
    args = parser.parse_args()
    server, _stats = await start_fake_cloud()
    cloud_port = server.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        config = Path(tmp) / "c.toml"
        config.write_text(
            f'[chargers]\nhost = "127.0.0.1"\nport = 0\n[api]\nport = 0\n'
            f'[store]\npath = "{tmp}/gw.db"\n'
            f'[upstream]\nurl = "ws://127.0.0.1:{cloud_port}/ocpp"\n'
        )
        proc, port = await start_gateway(config, source=args.source)
        try:
            await asyncio.sleep(1.0)  # the gateway settles after start
            authorize, heartbeat = await relay_rtts(port, args.calls)
        finally:
            await stop_gateway(proc)
        commits = await commit_times(Path(tmp) / "commits.db", args.commits)
    server.close()
    print("| what | n | p50 µs | p90 µs | p99 µs |\n| --- | ---: | ---: | ---: | ---: |")
    print(summary("relayed Authorize RTT", authorize))
    print(summary("relayed Heartbeat RTT", heartbeat))
    print(summary("one learned-row commit", commits))


if __name__ == "__main__":
    asyncio.run(main())
