"""Lending: a transaction drawing well below its share lends the rest to the others. Pure.

- :func:`reading`: a transaction's draw in amperes from its MeterValues (1.6 ``MeterValues.req``,
  2.0.1/2.1 ``MeterValuesRequest`` or ``TransactionEventRequest.meterValue``): ``Current.Import``,
  the highest phase; else ``Power.Active.Import`` ÷ (voltage x phases).
- :func:`observe`: one reading folded into the transaction's :class:`Lend`, a frozen value. A
  draw more than 2 A below the cap in force for two consecutive readings lends: the transaction's
  ceiling becomes max(``min_a``, draw + 2 A) and the allocation gives the rest to the others. A
  reading within 1 A of the cap in force ends the loan: the full share comes back in the next
  round. Readings are compared with the cap in force when they arrive (the caller passes it), so
  a reading taken before a lower cap was accepted never counts against that cap.

A vehicle that tapers near full, or that charges on one phase of a three-phase charger, draws
less than its share; lending gives that current to vehicles that can use it, and a vehicle that
picks up again gets its share back within a round, at most 1 A plus the next MeterValues late.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "LOW_MARGIN_A",
    "LOW_READINGS",
    "RETURN_MARGIN_A",
    "Lend",
    "Reading",
    "ceilings",
    "observe",
    "reading",
]

LOW_MARGIN_A: Final = 2  # a draw this far below the cap in force counts as low
LOW_READINGS: Final = 2  # consecutive low readings before a transaction lends
RETURN_MARGIN_A: Final = 1  # a draw this close to the cap in force ends the loan

CURRENT: Final = "Current.Import"
POWER: Final = "Power.Active.Import"
_LINE_PHASES: Final = ("L1", "L2", "L3")


@dataclass(frozen=True, slots=True)
class Lend:
    """One transaction's lending state: its run of low readings and the ceiling it lends at."""

    low: int = 0
    ceiling_a: int | None = None  # None: its full share


@dataclass(frozen=True, slots=True)
class Reading:
    """A transaction's draw (A per phase) and the phases its meter reported (None: not said)."""

    draw_a: float
    phases: int | None


def observe(lend: Lend, draw_a: float, cap_a: int, min_a: int) -> Lend:
    """``lend`` after a reading of ``draw_a`` while the transaction's cap in force is ``cap_a``."""
    if cap_a <= 0:
        return lend  # given nothing: nothing to lend
    if lend.ceiling_a is not None and draw_a >= cap_a - RETURN_MARGIN_A:
        return Lend()
    if draw_a < cap_a - LOW_MARGIN_A:
        low = min(lend.low + 1, LOW_READINGS)
        if low < LOW_READINGS:
            return Lend(low=low, ceiling_a=lend.ceiling_a)
        return Lend(low=low, ceiling_a=max(min_a, math.ceil(draw_a + LOW_MARGIN_A)))
    return Lend(low=0, ceiling_a=lend.ceiling_a)


def ceilings(lending: Mapping[str, Lend]) -> dict[str, int]:
    """Transaction key → the ceiling it lends at, for those lending."""
    return {key: lend.ceiling_a for key, lend in lending.items() if lend.ceiling_a is not None}


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _value(sample: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """A sample's value scaled by its 2.0.1 multiplier, and its unit."""
    value = _number(sample.get("value"))
    unit = sample.get("unit")  # 1.6
    uom = sample.get("unitOfMeasure")  # 2.0.1/2.1: {unit, multiplier}
    if isinstance(uom, dict):
        unit = uom.get("unit", unit)
        multiplier = uom.get("multiplier")
        if value is not None and isinstance(multiplier, int) and -6 <= multiplier <= 6:
            value *= 10.0**multiplier
    return value, unit if isinstance(unit, str) else None


def _phase(sample: Mapping[str, Any]) -> str | None:
    phase = sample.get("phase")
    if not isinstance(phase, str):
        return None
    line = phase.split("-")[0]  # "L1-N" is L1's voltage
    return line if line in _LINE_PHASES else None


def _one(samples: list[Any], voltage_v: float) -> Reading | None:
    currents: list[float] = []
    power_total: float | None = None
    power_phases: list[float] = []
    phases: set[str] = set()
    for sample in samples:
        if not isinstance(sample, dict):
            continue
        phase = _phase(sample)
        if phase is not None:
            phases.add(phase)
        measurand = sample.get("measurand", "Energy.Active.Import.Register")
        if measurand not in (CURRENT, POWER):
            continue
        value, unit = _value(sample)
        if value is None:
            continue
        if measurand == CURRENT:
            if sample.get("phase") in (None, *_LINE_PHASES):  # not the neutral's
                currents.append(value)
        else:
            value *= 1000.0 if unit == "kW" else 1.0
            if sample.get("phase") is None:
                power_total = value
            elif phase is not None:
                power_phases.append(value)
    seen = len(phases) or None
    if currents:
        return Reading(max(0.0, max(currents)), seen)
    power = (
        power_total if power_total is not None else (sum(power_phases) if power_phases else None)
    )
    if power is None:
        return None
    return Reading(max(0.0, power / (voltage_v * (seen or 3))), seen)


def reading(meter_values: object, voltage_v: float) -> Reading | None:
    """The draw in the latest entry of a ``meterValue`` list that has one; None if none has."""
    if not isinstance(meter_values, list):
        return None
    for entry in reversed(meter_values):
        samples = entry.get("sampledValue") if isinstance(entry, dict) else None
        if isinstance(samples, list):
            found = _one(samples, voltage_v)
            if found is not None:
                return found
    return None
