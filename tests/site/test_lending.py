"""Lending: the draw read from MeterValues; two low readings lend, one near the cap ends it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.site.lending import Lend, Reading, ceilings, observe, reading


def sampled(*samples: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"timestamp": "2026-12-01T10:00:00Z", "sampledValue": list(samples)}]


def current(value: str | float, phase: str | None = None, **extra: Any) -> dict[str, Any]:
    sample: dict[str, Any] = {"value": value, "measurand": "Current.Import", **extra}
    if phase:
        sample["phase"] = phase
    return sample


def test_current_import_highest_phase() -> None:
    meter = sampled(
        current("12.5", "L1"), current("15.2", "L2"), current("9", "L3"), current("40", "N")
    )
    assert reading(meter, 230) == Reading(15.2, 3)


def test_current_import_without_phase_and_2_0_1_multiplier() -> None:
    meter = sampled(current(160, unitOfMeasure={"unit": "A", "multiplier": -1}))
    assert reading(meter, 230) == Reading(16.0, None)


def test_power_divided_by_voltage_and_the_phases_seen() -> None:
    total = sampled(
        {"value": "7.36", "measurand": "Power.Active.Import", "unit": "kW"},
        {"value": "230", "measurand": "Voltage", "phase": "L1-N"},
    )
    assert reading(total, 230) == Reading(32.0, 1)
    three = sampled({"value": "11040", "measurand": "Power.Active.Import"})
    assert reading(three, 230) == Reading(16.0, None)  # 3 phases when the meter does not say
    per_phase = sampled(
        *({"value": "2300", "measurand": "Power.Active.Import", "phase": p} for p in ("L1", "L2"))
    )
    assert reading(per_phase, 230) == Reading(10.0, 2)


def test_no_draw_in_the_reading() -> None:
    assert reading(sampled({"value": "1234", "unit": "Wh"}), 230) is None  # the register only
    assert reading(sampled(current("lots")), 230) is None
    assert reading("not a list", 230) is None
    assert reading([{"sampledValue": "x"}, 5], 230) is None


def test_the_latest_entry_with_a_draw_counts() -> None:
    meter = sampled(current("20")) + sampled(current("8")) + sampled({"value": "5", "unit": "Wh"})
    assert reading(meter, 230) == Reading(8.0, None)


def test_two_low_readings_lend_at_draw_plus_2() -> None:
    lend = observe(Lend(), 10.0, 32, 6)
    assert lend == Lend(low=1)  # one is not enough
    lend = observe(lend, 10.4, 32, 6)
    assert lend.ceiling_a == 13  # ceil(10.4 + 2)
    assert ceilings({"t": lend, "u": Lend()}) == {"t": 13}


def test_a_reading_near_the_cap_breaks_the_run() -> None:
    lend = observe(Lend(), 10.0, 32, 6)
    lend = observe(lend, 30.5, 32, 6)  # within 2 A: not low
    lend = observe(lend, 10.0, 32, 6)
    assert lend == Lend(low=1)


def test_lending_never_goes_below_the_minimum() -> None:
    lend = observe(observe(Lend(), 0.0, 32, 6), 0.0, 32, 6)
    assert lend.ceiling_a == 6


def test_within_1_a_of_the_lowered_cap_ends_the_loan() -> None:
    lend = Lend(low=2, ceiling_a=13)
    assert observe(lend, 11.5, 13, 6) == Lend(low=0, ceiling_a=13)  # 1.5 A below: keeps lending
    assert observe(lend, 12.0, 13, 6) == Lend()  # within 1 A: full share next round


def test_readings_compare_with_the_cap_in_force() -> None:
    # Lent at 13, but the charger still holds 32 (the lower cap not accepted yet): a reading of
    # 12 A is then more than 2 A under the cap in force, and keeps (or lowers) the loan.
    lend = Lend(low=2, ceiling_a=13)
    assert observe(lend, 12.0, 32, 6).ceiling_a == 14
    # A vehicle drawing the full 32 before the lower cap arrived ends the loan.
    assert observe(lend, 31.5, 32, 6) == Lend()


def test_a_steady_lender_stays_put() -> None:
    lend = observe(observe(Lend(), 8.0, 32, 6), 8.0, 32, 6)
    assert lend.ceiling_a == 10
    for _ in range(5):
        lend = observe(lend, 8.0, 10, 6)  # exactly 2 A under its lowered cap: neither low nor near
    assert lend.ceiling_a == 10


@pytest.mark.parametrize("cap", [0, -1])
def test_nothing_to_lend_at_0(cap: int) -> None:
    assert observe(Lend(), 0.0, cap, 6) == Lend()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 10),
    st.lists(st.tuples(st.floats(0, 80, allow_nan=False), st.integers(0, 80)), max_size=40),
)
def test_a_loan_is_never_below_the_minimum_nor_above_the_cap_it_was_taken_under(
    min_a: int, readings: list[tuple[float, int]]
) -> None:
    lend = Lend()
    for draw, cap in readings:
        after = observe(lend, draw, cap, min_a)
        if after.ceiling_a is not None and after != lend:
            assert min_a <= after.ceiling_a
            if after.ceiling_a != lend.ceiling_a:  # a new loan: taken under this cap
                assert after.ceiling_a <= max(min_a, cap)
                assert draw < cap - 2
        if lend.ceiling_a is not None and after.ceiling_a is None:
            assert draw >= cap - 1  # given back only near the cap in force
        lend = after
