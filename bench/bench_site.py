"""The site power guard's figures: the simulated depot, and the real gateway with simulated chargers.

``python -m bench.bench_site sim`` runs :mod:`bench.site_depot` (the pure core on a fake clock,
one hour of outage, 50 chargers) and adds profile messages per charger per hour.

``python -m bench.bench_site live --chargers 100 --seconds 120`` runs the real gateway in this
process (standalone, ``mode = "always"``) with simulated 1.6 chargers over loopback WebSockets,
in real time. Each charger answers GetConfiguration, applies a SetChargingProfile's limit when it
receives it and answers Accepted; vehicles arrive at random (each wants 16 or 32 A), start a
transaction, draw the lower of what they want and the charger's cap, report it in MeterValues
every ``--meter-every`` seconds, and leave after a random time. Sampled every second: the site's
draw against the limit (seconds over it), utilisation while the vehicles want more than the
limit, the time from each StartTransaction to its charger's first cap change after it, and the
SetChargingProfile/ClearChargingProfile messages per charger per hour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from bench import site_depot
from gateway.app import Gateway
from gateway.config import Settings

T = "2026-12-08T00:00:00Z"


def sim(args: argparse.Namespace) -> dict[str, Any]:
    figures = site_depot.run(
        chargers=args.chargers, limit_a=args.limit, outage_s=args.outage, seed=args.seed
    )
    hours = figures.seconds / 3600
    return {
        "run": "simulated depot (pure core, fake clock)",
        "chargers": args.chargers,
        "limitA": args.limit,
        "seconds": figures.seconds,
        "secondsOverLimitEngaged": figures.seconds_over_engaged,
        "secondsOverLimit": figures.seconds_over,
        "utilisation": round(figures.utilisation, 3),
        "profileMessagesPerChargerHour": round(figures.changes / args.chargers / hours, 1),
    }


@dataclass
class SimCharger:
    cid: str
    ws: ClientConnection | None = None
    cap_a: float | None = None  # the gateway's cap in force (None: none)
    want_a: float = 0.0  # the vehicle's demand (0: no vehicle)
    tx: int | None = None
    started_at: float | None = None
    first_change_s: float | None = None
    cap_at_start: float | None = None
    profile_messages: int = 0
    changes: list[float] = field(default_factory=list)  # every transaction's start → first change
    starts: int = 0
    pending: dict[str, asyncio.Future[Any]] = field(default_factory=dict)
    ids: int = 0

    @property
    def draw_a(self) -> float:
        if not self.want_a:
            return 0.0
        return self.want_a if self.cap_a is None else min(self.want_a, self.cap_a)

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        assert self.ws is not None
        self.ids += 1
        mid = f"{self.cid}-{self.ids}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[mid] = future
        await self.ws.send(json.dumps([2, mid, action, payload]))
        return await asyncio.wait_for(future, 30)

    async def serve(self) -> None:
        assert self.ws is not None
        async for text in self.ws:
            frame = json.loads(text)
            if frame[0] != 2:
                future = self.pending.pop(frame[1], None)
                if future is not None and not future.done():
                    future.set_result(frame[2] if frame[0] == 3 else None)
                continue
            action, body = frame[2], frame[3]
            answer: dict[str, Any] = {}
            if action == "SetChargingProfile":
                self.profile_messages += 1
                period = body["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"]
                self.set_cap(float(period[0]["limit"]))
                answer = {"status": "Accepted"}
            elif action == "ClearChargingProfile":
                self.profile_messages += 1
                self.set_cap(None)
                answer = {"status": "Accepted"}
            await self.ws.send(json.dumps([3, frame[1], answer]))

    def set_cap(self, cap: float | None) -> None:
        if self.started_at is not None and self.first_change_s is None and cap != self.cap_a:
            self.first_change_s = time.monotonic() - self.started_at
            self.changes.append(self.first_change_s)
        self.cap_a = cap


async def vehicle_loop(c: SimCharger, rng: random.Random, args: argparse.Namespace) -> None:
    await asyncio.sleep(rng.uniform(0, args.arrivals_over))
    while True:
        c.want_a = float(rng.choice((16, 32)))
        c.started_at, c.first_change_s, c.cap_at_start = time.monotonic(), None, c.cap_a
        c.starts += 1
        result = await c.call(
            "StartTransaction",
            {"connectorId": 1, "idTag": "BENCH", "meterStart": 0, "timestamp": T},
        )
        c.tx = result["transactionId"]
        stay = rng.uniform(args.seconds / 3, args.seconds)
        end = time.monotonic() + stay
        while time.monotonic() < end:
            await asyncio.sleep(args.meter_every)
            sample = {"value": f"{c.draw_a:.1f}", "measurand": "Current.Import", "unit": "A"}
            await c.call(
                "MeterValues",
                {
                    "connectorId": 1,
                    "transactionId": c.tx,
                    "meterValue": [{"timestamp": T, "sampledValue": [{**sample, "phase": "L1"}]}],
                },
            )
        await c.call("StopTransaction", {"transactionId": c.tx, "meterStop": 1, "timestamp": T})
        c.want_a, c.tx, c.started_at = 0.0, None, None
        await asyncio.sleep(rng.uniform(5, 20))


async def live(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            chargers={"host": "127.0.0.1", "port": 0},
            api={"host": "127.0.0.1", "port": 0},
            store={"path": str(Path(tmp) / "gateway.db")},
            offline={"unknown_tags": "accept"},
            site={"max_current_a": args.limit, "mode": "always"},
        )
        gw = Gateway(settings)
        await gw.start()
        chargers = [SimCharger(f"CP{n:03d}") for n in range(args.chargers)]
        tasks = []
        try:
            for c in chargers:
                c.ws = await connect(
                    f"ws://127.0.0.1:{gw.charger_port}/ocpp/{c.cid}",
                    subprotocols=[Subprotocol("ocpp1.6")],
                )
                tasks.append(asyncio.create_task(c.serve()))
            tasks += [asyncio.create_task(vehicle_loop(c, rng, args)) for c in chargers]
            over, short, used, samples, worst = 0, 0, [], 0, 0.0
            started = time.monotonic()
            for _ in range(args.seconds):
                await asyncio.sleep(1.0)
                draw = sum(c.draw_a for c in chargers)
                want = sum(c.want_a for c in chargers)
                samples += 1
                if draw > args.limit + 1e-6:
                    over += 1
                    worst = max(worst, draw - args.limit)
                if want > args.limit:
                    short += 1
                    used.append(draw / args.limit)
            elapsed = time.monotonic() - started
            changes = [s for c in chargers for s in c.changes]
            starts = sum(c.starts for c in chargers)
            messages = sum(c.profile_messages for c in chargers)
            at_start = [c.cap_at_start for c in chargers if c.started_at is not None]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in chargers:
                if c.ws is not None:
                    await c.ws.close()
            await gw.stop()
    return {
        "run": "real gateway, simulated 1.6 chargers over loopback, real time",
        "chargers": args.chargers,
        "limitA": args.limit,
        "seconds": samples,
        "secondsOverLimit": over,
        "worstOverA": round(worst, 1),
        "secondsDemandOverLimit": short,
        "utilisation": round(statistics.fmean(used), 3) if used else None,
        "startToFirstCapChangeS": {
            "transactions": starts,
            "n": len(changes),
            "median": round(statistics.median(changes), 2) if changes else None,
            "max": round(max(changes), 2) if changes else None,
        },
        "capInForceAtStartA": sorted({a for a in at_start if a is not None})[:5],
        "profileMessagesPerChargerHour": round(messages / args.chargers / (elapsed / 3600), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["sim", "live"])
    parser.add_argument("--chargers", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--outage", type=int, default=3600)
    parser.add_argument("--seconds", type=int, default=120)
    parser.add_argument("--meter-every", type=float, default=10.0)
    parser.add_argument("--arrivals-over", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.what == "sim":
        args.chargers = args.chargers or 50
        args.limit = args.limit or 400
        print(json.dumps(sim(args), indent=2))
    else:
        args.chargers = args.chargers or 100
        args.limit = args.limit or 1000
        print(json.dumps(asyncio.run(live(args)), indent=2))


if __name__ == "__main__":
    main()
