"""Allocation: the site's limit shared among its chargers, as one pure function.

The rules (docs/site-power.md "Allocation"):

1. Chargers the gateway cannot change now are *fixed*: they count at what they may draw (a
   disconnected charger at the last cap it accepted, an unmanaged one at its maximum until it is
   asked again) and get no target. The rest of the limit is *available*.
2. Transactions in start order, then idle chargers in connection order, each get ``min_a`` while
   the available current allows; the rest get 0 A. A vehicle is never offered less than ``min_a``
   and more than 0 (IEC 61851-1: below 6 A a vehicle may not charge at all, and some never resume
   from a current they cannot use), so 0 is where the limit runs out, not a default.
3. What remains is shared equally among the transactions that got ``min_a`` (water-filling): each
   up to its ceiling (its charger's maximum, or the lower cap it lends at, see ``lending``), so a
   transaction held by its ceiling leaves the rest to the others. Whole amperes; the amperes left
   by rounding go one each to the transactions in start order, so shares differ by at most 1 A
   where ceilings allow.
4. A charger's target is the sum of its transactions' shares (or ``min_a``/0 when idle), never
   above its maximum: the station-wide cap is for all its EVSEs combined (1.6 §3.13.3; 2.0.1
   K04.FR.05), so several transactions on one charger (2.0.1 multi-EVSE) share its maximum.

The caller passes every number in whole amperes per phase. Nothing here sends anything; the
sequencer (``sequencer``) turns targets into changes that keep the counted sum under the limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Allocation", "Station", "Tx", "allocate"]


@dataclass(frozen=True, slots=True)
class Tx:
    """One transaction: ``started`` orders the site's transactions (smaller started earlier)."""

    key: str
    started: int
    ceiling_a: int | None = None  # a lower cap it lends at (``lending``); None: its charger's max


@dataclass(frozen=True, slots=True)
class Station:
    """One charger as the allocation sees it.

    ``connected`` orders idle chargers (smaller connected earlier). ``fixed_a`` is set for a
    charger the gateway cannot change now; it then counts at that value and gets no target.
    ``cloud_max_a`` is the station maximum the cloud set, which the gateway's cap never exceeds.
    """

    id: str
    max_a: int
    connected: int
    transactions: tuple[Tx, ...] = ()
    fixed_a: int | None = None
    cloud_max_a: int | None = None

    @property
    def limit_a(self) -> int:
        """The most this charger may be given: its own maximum, or the cloud's if lower."""
        if self.cloud_max_a is None:
            return self.max_a
        return max(0, min(self.max_a, self.cloud_max_a))


@dataclass(frozen=True, slots=True)
class Allocation:
    """Targets per charger (A) and the share of each transaction in them (A)."""

    targets: dict[str, int] = field(default_factory=dict)
    shares: dict[str, int] = field(default_factory=dict)
    available_a: int = 0  # the limit less the fixed chargers


def allocate(limit_a: int, min_a: int, stations: Iterable[Station]) -> Allocation:
    """The target of every charger that is not fixed, under ``limit_a`` (see the module's rules)."""
    stations = list(stations)
    fixed = sum(s.fixed_a for s in stations if s.fixed_a is not None)
    available = max(0, limit_a - fixed)
    live = [s for s in stations if s.fixed_a is None]
    targets = {s.id: 0 for s in live}
    shares: dict[str, int] = {}

    # Rule 2: min_a each while it lasts, transactions first, then idle chargers.
    txs = sorted(
        ((tx, s) for s in live for tx in s.transactions), key=lambda p: (p[0].started, p[0].key)
    )
    left = available
    funded: list[tuple[Tx, Station]] = []
    for tx, station in txs:
        room = station.limit_a - targets[station.id]
        if left >= min_a and room >= min_a:
            left -= min_a
            targets[station.id] += min_a
            shares[tx.key] = min_a
            funded.append((tx, station))
        else:
            shares[tx.key] = 0
    for station in sorted(
        (s for s in live if not s.transactions), key=lambda s: (s.connected, s.id)
    ):
        if left >= min_a and station.limit_a >= min_a:
            left -= min_a
            targets[station.id] = min_a

    # Rule 3: the rest, equally among the funded transactions, each up to its ceiling.
    if funded:
        idle = sum(targets[s.id] for s in live if not s.transactions)
        _fill(funded, min_a, available - idle, shares)
        targets.update(_charger_sums(live, shares))
    return Allocation(targets=targets, shares=shares, available_a=available)


def _ceiling(tx: Tx, station: Station) -> int:
    return station.limit_a if tx.ceiling_a is None else min(tx.ceiling_a, station.limit_a)


def _fill(
    funded: Sequence[tuple[Tx, Station]], min_a: int, budget: int, shares: dict[str, int]
) -> None:
    """Share ``budget`` among ``funded`` by water-filling, each at least ``min_a``."""
    by_station: dict[str, list[Tx]] = {}
    station_of: dict[str, Station] = {}
    for tx, station in funded:
        by_station.setdefault(station.id, []).append(tx)
        station_of[station.id] = station
    ceilings = {
        sid: [max(min_a, _ceiling(tx, station_of[sid])) for tx in members]
        for sid, members in by_station.items()
    }

    def total_at(level: int) -> int:
        """The funded transactions' total at a water level; a charger gives at most its maximum."""
        return sum(
            min(station_of[sid].limit_a, sum(min(level, c) for c in tops))
            for sid, tops in ceilings.items()
        )

    def at_level(level: int) -> dict[str, int]:
        """Each transaction's share at a water level; a charger's maximum splits equally."""
        result: dict[str, int] = {}
        for sid, members in by_station.items():
            station = station_of[sid]
            wanted = {tx.key: max(min_a, min(level, _ceiling(tx, station))) for tx in members}
            if sum(wanted.values()) > station.limit_a:
                wanted = _split(members, station, min_a)
            result.update(wanted)
        return result

    low, high = min_a, max(max(max(tops) for tops in ceilings.values()), min_a)
    while low < high:  # the highest level whose total fits the budget
        mid = (low + high + 1) // 2
        if total_at(mid) <= budget:
            low = mid
        else:
            high = mid - 1
    level = at_level(low)
    # What rounding left: one ampere more each, in start order, where ceiling and charger allow.
    left = budget - sum(level.values())
    totals: dict[str, int] = {}
    for tx, station in funded:
        totals[station.id] = totals.get(station.id, 0) + level[tx.key]
    for tx, station in funded:
        if left <= 0:
            break
        if level[tx.key] < _ceiling(tx, station) and totals[station.id] < station.limit_a:
            level[tx.key] += 1
            totals[station.id] += 1
            left -= 1
    shares.update(level)


def _split(members: Sequence[Tx], station: Station, min_a: int) -> dict[str, int]:
    """A charger's maximum split equally among its transactions, each up to its ceiling."""
    budget = station.limit_a
    low, high = min_a, budget
    while low < high:
        mid = (low + high + 1) // 2
        if sum(min(mid, max(min_a, _ceiling(tx, station))) for tx in members) <= budget:
            low = mid
        else:
            high = mid - 1
    result = {tx.key: min(low, max(min_a, _ceiling(tx, station))) for tx in members}
    left = budget - sum(result.values())
    for tx in members:  # members are in start order
        if left <= 0:
            break
        if result[tx.key] < _ceiling(tx, station):
            result[tx.key] += 1
            left -= 1
    return result


def _charger_sums(live: Sequence[Station], shares: Mapping[str, int]) -> dict[str, int]:
    return {s.id: sum(shares[tx.key] for tx in s.transactions) for s in live if s.transactions}
