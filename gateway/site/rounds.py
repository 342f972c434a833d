"""One allocation round: the sequencer's slots, the chargers' transactions and lending in; the
changes to send out. Pure; the driver runs it at once after a transaction starts or stops or a
cap is answered, and at most once a second otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.site.allocation import Allocation, Station, Tx, allocate
from gateway.site.lending import Lend
from gateway.site.sequencer import Change, Slot, fixed_a, plan

__all__ = ["ROUND_EVERY_S", "Charger", "Round", "round_due", "run_round"]

ROUND_EVERY_S: Final = 1.0  # at most one round a second unless something urgent happened


@dataclass(frozen=True, slots=True)
class Charger:
    """A charger known to the site: its connection order, its transactions (key → start order),
    and the station maximum its cloud set, if any."""

    id: str
    connected: int
    transactions: Mapping[str, int]
    cloud_max_a: int | None = None


@dataclass(frozen=True, slots=True)
class Round:
    slots: dict[str, Slot]
    changes: list[Change]
    allocation: Allocation


def round_due(last_at: float | None, now: float, *, urgent: bool) -> bool:
    """Whether a round runs now: at once when ``urgent`` (a transaction started or stopped, a cap
    was answered), otherwise at most once every :data:`ROUND_EVERY_S`."""
    return urgent or last_at is None or now - last_at >= ROUND_EVERY_S


def run_round(
    slots: Mapping[str, Slot],
    chargers: Sequence[Charger],
    lending: Mapping[str, Lend],
    *,
    limit_a: int,
    min_a: int,
    now: float,
    engaged: bool,
) -> Round:
    """Allocate among the chargers the sequencer knows, then plan the changes to send."""
    stations = []
    for charger in chargers:
        slot = slots.get(charger.id)
        if slot is None:
            continue
        txs = tuple(
            Tx(key, started, lending[key].ceiling_a if key in lending else None)
            for key, started in sorted(charger.transactions.items(), key=lambda kv: kv[1])
        )
        stations.append(
            Station(
                id=charger.id,
                max_a=slot.max_a,
                connected=charger.connected,
                transactions=txs,
                fixed_a=fixed_a(slot, now),
                cloud_max_a=charger.cloud_max_a,
            )
        )
    known = {s.id for s in stations}
    # Chargers the site does not list (gone for good) still count at what they hold.
    stations += [
        Station(id=cid, max_a=s.max_a, connected=0, fixed_a=s.counted_a)
        for cid, s in slots.items()
        if cid not in known
    ]
    allocation = allocate(limit_a, min_a, stations)

    # Increases are tried in priority order: the earliest transaction first, idle chargers last.
    def priority(station: Station) -> tuple[int, int, int]:
        first = min((tx.started for tx in station.transactions), default=None)
        return (0, first, station.connected) if first is not None else (1, 0, station.connected)

    order = sorted((s for s in stations if s.id in allocation.targets), key=priority)
    targets = {s.id: allocation.targets[s.id] for s in order}
    new_slots, changes = plan(slots, targets, limit_a, now, engaged=engaged)
    return Round(slots=new_slots, changes=changes, allocation=allocation)
