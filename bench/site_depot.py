"""A depot on a fake clock: simulated chargers and vehicles under the site guard's pure core.

The depot (:class:`Depot`) knows nothing of the gateway: chargers hold profiles and honour the
lowest of them (1.6 §3.13.3: the composite is the minimum), answer a SetChargingProfile after a
latency, apply an increase when they receive it and a decrease only when they answer (the worst
case for the site), and some refuse every profile. Vehicles arrive and leave at random, draw up to
their own maximum, taper near full, and stop below 6 A (IEC 61851-1). The cloud's TxProfiles set
before the outage stay on the running transactions (1.6 §3.13.6).

:class:`PureGuard` drives the depot with the core (``gateway.site``): the guard table, one round a
second, lending from the MeterValues. A later driver test can put the real gateway in its place:
the depot only takes :meth:`Depot.send` and hands back :meth:`Depot.answers` and
:meth:`Depot.meter_values`.

``python -m bench.site_depot`` runs one hour of outage with 50 chargers and prints the figures:
seconds over the limit, and utilisation (site draw / limit) while the vehicles' demand exceeds it.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.site import guard as guard_table
from gateway.site.lending import Lend, observe, reading
from gateway.site.rounds import Charger as RoundCharger
from gateway.site.rounds import run_round
from gateway.site.sequencer import (
    Answer,
    Change,
    Slot,
    answered,
    connected,
    counted_sum,
    engage,
    release,
)

PILOT_MIN_A = 6  # IEC 61851-1: a vehicle does not charge under a 6 A pilot
METER_EVERY_S = 10  # MeterValues interval of every charger


@dataclass
class Vehicle:
    max_a: float
    capacity_wh: float
    soc: float  # 0..1
    leaves_at: float
    phases: int = 3

    def wants_a(self) -> float:
        """What it would draw unconstrained: its maximum, tapering from 80 % to 10 % at full."""
        if self.soc >= 1.0:
            return 0.0
        if self.soc <= 0.8:
            return self.max_a
        return self.max_a * max(0.1, 1.0 - (self.soc - 0.8) / 0.2 * 0.9)


@dataclass
class SimCharger:
    id: str
    max_a: int
    refuses: bool = False
    latency_s: float = 1.0
    cloud_tx_a: float | None = None  # the cloud's TxProfile on the running transaction
    gateway_cap_a: float | None = None  # the profile the charger holds from the gateway
    vehicle: Vehicle | None = None
    draw_a: float = 0.0
    tx: str | None = None
    pending: list[tuple[float, Change]] = field(default_factory=list)  # answers due

    def offered_a(self) -> float:
        """The lowest of its profiles and its own maximum."""
        limits = [float(self.max_a)]
        if self.gateway_cap_a is not None:
            limits.append(self.gateway_cap_a)
        if self.cloud_tx_a is not None:
            limits.append(self.cloud_tx_a)
        return min(limits)


@dataclass
class Depot:
    """The chargers and the vehicles; time advances one second per :meth:`step`."""

    limit_a: int
    chargers: dict[str, SimCharger]
    rng: random.Random
    arrival_per_s: float = 1 / 60
    voltage_v: float = 230.0
    now: float = 0.0
    tx_counter: int = 0
    ended: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)

    def send(self, change: Change) -> None:
        charger = self.chargers[change.charger]
        if change.cap_a is not None and not charger.refuses:
            held = charger.gateway_cap_a
            if held is None or change.cap_a > held:
                charger.gateway_cap_a = float(change.cap_a)  # an increase: applied on receipt
        charger.pending.append((self.now + charger.latency_s, change))

    def answers(self) -> list[tuple[str, Answer]]:
        """The answers due now; a decrease (or a Clear) takes effect as it is answered."""
        out = []
        for charger in self.chargers.values():
            due = [p for p in charger.pending if p[0] <= self.now]
            charger.pending = [p for p in charger.pending if p[0] > self.now]
            for _, change in due:
                if charger.refuses:
                    out.append((charger.id, Answer.REJECTED))
                    continue
                charger.gateway_cap_a = None if change.cap_a is None else float(change.cap_a)
                out.append((charger.id, Answer.ACCEPTED))
        return out

    def meter_values(self) -> list[tuple[str, str, list[dict[str, Any]]]]:
        """(charger, transaction, meterValue list) of the chargers whose interval falls now."""
        out = []
        for index, charger in enumerate(self.chargers.values()):
            if charger.tx is None or (int(self.now) + index) % METER_EVERY_S:
                continue
            phases = charger.vehicle.phases if charger.vehicle else 3
            samples = [
                {
                    "measurand": "Current.Import",
                    "phase": f"L{p + 1}",
                    "value": f"{charger.draw_a:.1f}",
                }
                for p in range(phases)
            ]
            out.append((charger.id, charger.tx, [{"timestamp": "", "sampledValue": samples}]))
        return out

    def arrive(self, charger: SimCharger) -> None:
        self.tx_counter += 1
        charger.vehicle = Vehicle(
            max_a=self.rng.choice([16.0, 32.0, 32.0]),
            capacity_wh=self.rng.choice([60_000.0, 80_000.0, 100_000.0]),
            soc=self.rng.uniform(0.1, 0.7),
            leaves_at=self.now + self.rng.uniform(1800, 6 * 3600),
            phases=self.rng.choice([3, 3, 3, 1]),
        )
        charger.tx = f"T{self.tx_counter}"
        self.started.append(charger.id)

    def step(self) -> tuple[float, float]:
        """One second: arrivals, departures, the vehicles' draw. Returns (site draw, demand)."""
        self.now += 1.0
        free = [c for c in self.chargers.values() if c.vehicle is None]
        if free and self.rng.random() < self.arrival_per_s:
            self.arrive(self.rng.choice(free))
        site = demand = 0.0
        for charger in self.chargers.values():
            vehicle = charger.vehicle
            if vehicle is None:
                charger.draw_a = 0.0
                continue
            if self.now >= vehicle.leaves_at:
                charger.vehicle, charger.tx, charger.cloud_tx_a = None, None, None
                charger.draw_a = 0.0
                self.ended.append(charger.id)
                continue
            # What it would draw under no guard: its own taper, the charger's maximum, and the
            # cloud's TxProfile (the cloud's constraint is not the guard's to lift).
            wants = min(vehicle.wants_a(), charger.max_a, charger.cloud_tx_a or charger.max_a)
            offered = charger.offered_a()
            charger.draw_a = min(wants, offered) if offered >= PILOT_MIN_A else 0.0
            vehicle.soc = min(
                1.0,
                vehicle.soc
                + charger.draw_a * self.voltage_v * vehicle.phases / 3600 / vehicle.capacity_wh,
            )
            # Per phase: every vehicle draws on L1, which is the phase the limit binds.
            site += charger.draw_a
            demand += wants
        return site, demand


@dataclass
class PureGuard:
    """The site guard's pure core driving a :class:`Depot` once a second."""

    depot: Depot
    min_a: int = 6
    engage_after_s: float = 10.0
    mode: Literal["offline", "always"] = "offline"
    release_after_s: float = 60.0
    slots: dict[str, Slot] = field(default_factory=dict)
    lending: dict[str, Lend] = field(default_factory=dict)
    shares: dict[str, int] = field(default_factory=dict)
    state: guard_table.GuardState = guard_table.GuardState.RELEASED
    order: dict[str, int] = field(default_factory=dict)
    changes: int = 0

    def __post_init__(self) -> None:
        for index, charger in enumerate(self.depot.chargers.values()):
            self.slots = connected(self.slots, charger.id, charger.max_a, self.depot.now)
            self.order[charger.id] = index

    def tick(self, cloud_up_since: float | None, cloud_down_since: float) -> None:
        depot = self.depot
        for cid, answer in depot.answers():
            self.slots = answered(self.slots, cid, answer, depot.now)
        for cid, tx, meter in depot.meter_values():
            found = reading(meter, depot.voltage_v)
            if found is None:
                continue
            slot = self.slots[cid]
            in_force = slot.accepted_a if slot.accepted_a is not None else slot.max_a
            self.lending[tx] = observe(
                self.lending.get(tx, Lend()), found.draw_a, in_force, self.min_a
            )
        live = {c.tx for c in depot.chargers.values() if c.tx}
        self.lending = {k: v for k, v in self.lending.items() if k in live}
        up = cloud_up_since is not None
        since = cloud_down_since if cloud_up_since is None else cloud_up_since
        links = [guard_table.Link(up=up, since=since) for _ in depot.chargers]
        cond = guard_table.condition(
            links,
            depot.now,
            mode=self.mode,
            engage_after_s=self.engage_after_s,
            release_after_s=self.release_after_s,
        )
        before = self.state
        self.state = guard_table.step(self.state, cond, max_current_a=depot.limit_a)
        engaged = self.state is guard_table.GuardState.ENGAGED
        if engaged and before is not guard_table.GuardState.ENGAGED:
            self.slots = engage(self.slots)
        elif before is guard_table.GuardState.ENGAGED and not engaged:
            self.slots = release(self.slots)
        chargers = [
            RoundCharger(c.id, self.order[c.id], {c.tx: int(c.tx[1:])} if c.tx else {})
            for c in depot.chargers.values()
        ]
        result = run_round(
            self.slots,
            chargers,
            self.lending,
            limit_a=depot.limit_a,
            min_a=self.min_a,
            now=depot.now,
            engaged=engaged,
        )
        self.slots = result.slots
        for change in result.changes:
            depot.send(change)
            self.changes += 1


@dataclass
class Figures:
    seconds: int
    seconds_over: int
    seconds_over_engaged: int
    worst_over_a: float
    short_seconds: int  # seconds the vehicles' demand exceeded the limit
    utilisation: float  # mean site draw / limit over those seconds
    counted_over_engaged: int  # seconds the counted sum exceeded the limit once settled
    changes: int
    sessions: int
    caps_left: int  # chargers still holding the gateway's cap at the end (after release)


def run(
    *,
    chargers: int = 50,
    limit_a: int = 400,
    outage_s: int = 3600,
    refusing: int = 0,
    mode: Literal["offline", "always"] = "offline",
    seed: int = 1,
    occupied: float = 0.7,
) -> Figures:
    """One outage of ``outage_s`` seconds; the cloud comes back at its end and the run goes on
    until the guard has released and cleared (``release_after_s`` later, plus the answers)."""
    rng = random.Random(seed)
    sims = {
        f"CP-{i:03d}": SimCharger(
            id=f"CP-{i:03d}",
            max_a=rng.choice([16, 32, 32, 32]),
            refuses=i < refusing,
            latency_s=rng.choice([1.0, 1.0, 2.0, 3.0]),
        )
        for i in range(chargers)
    }
    depot = Depot(limit_a=limit_a, chargers=sims, rng=rng)
    for charger in sims.values():
        if rng.random() < occupied:
            depot.arrive(charger)
    # Before the outage the cloud shared the limit with TxProfiles, which stay on the running
    # transactions while it is unreachable; its own allocation is the guard's.
    running = [c for c in sims.values() if c.tx]
    share = limit_a // max(1, len(running))
    for charger in running:
        charger.cloud_tx_a = float(
            max(PILOT_MIN_A, min(charger.max_a, share)) if share >= PILOT_MIN_A else 0
        )
    guard = PureGuard(depot, mode=mode)
    figures = Figures(0, 0, 0, 0.0, 0, 0.0, 0, 0, 0, 0)
    utilisation_sum = 0.0
    settled_at: float | None = None
    end = outage_s + guard.release_after_s + 15
    while depot.now < end:
        # The second's draw is measured against the state the guard was in during that second.
        engaged = guard.state is guard_table.GuardState.ENGAGED
        site, demand = depot.step()
        cloud_up_since = float(outage_s) if depot.now >= outage_s else None
        guard.tick(cloud_up_since, 0.0)
        if depot.now > outage_s and not engaged:
            continue  # released: the cloud's smart charging is back in charge
        figures.seconds += 1
        if site > limit_a + 1e-9:
            figures.seconds_over += 1
            figures.worst_over_a = max(figures.worst_over_a, site - limit_a)
            if engaged:
                figures.seconds_over_engaged += 1
        if (
            engaged
            and settled_at is None
            and all(
                s.accepted_a is not None or s.unmanaged_until is not None
                for s in guard.slots.values()
            )
        ):
            settled_at = depot.now
        if engaged and settled_at is not None and counted_sum(guard.slots) > limit_a:
            figures.counted_over_engaged += 1
        if engaged and demand > limit_a:
            figures.short_seconds += 1
            utilisation_sum += site / limit_a
    figures.utilisation = utilisation_sum / figures.short_seconds if figures.short_seconds else 1.0
    figures.changes = guard.changes
    figures.sessions = depot.tx_counter
    figures.caps_left = sum(1 for c in sims.values() if c.gateway_cap_a is not None)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chargers", type=int, default=50)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--outage", type=int, default=3600)
    parser.add_argument("--refusing", type=int, default=0)
    parser.add_argument("--mode", choices=["offline", "always"], default="offline")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    figures = run(
        chargers=args.chargers,
        limit_a=args.limit,
        outage_s=args.outage,
        refusing=args.refusing,
        mode=args.mode,
        seed=args.seed,
    )
    print(json.dumps(figures.__dict__, indent=2))


if __name__ == "__main__":
    main()
