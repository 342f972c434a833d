"""Allocation: minimum first in start order, then equal shares up to each ceiling; properties."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.site.allocation import Station, Tx, allocate


def tx(key: str, started: int, ceiling: int | None = None) -> Tx:
    return Tx(key, started, ceiling)


def test_the_rest_is_shared_equally_and_idle_chargers_get_the_minimum() -> None:
    result = allocate(
        100,
        6,
        [
            Station("A", 32, 1, (tx("a", 1),)),
            Station("B", 32, 2, (tx("b", 2),)),
            Station("C", 32, 3, (tx("c", 3),)),
            Station("D", 32, 4),
        ],
    )
    # 100 - 6 (idle D) = 94 over three: 31 each and the ampere left to the earliest transaction.
    assert result.targets == {"A": 32, "B": 31, "C": 31, "D": 6}
    assert sum(result.targets.values()) == 100


def test_minimum_goes_in_start_order_then_idle_chargers_in_connection_order() -> None:
    stations = [
        Station("late", 32, 1, (tx("t3", 3),)),
        Station("early", 32, 2, (tx("t1", 1),)),
        Station("mid", 32, 3, (tx("t2", 2),)),
        Station("idle-2", 32, 9),
        Station("idle-1", 32, 5),
    ]
    assert allocate(12, 6, stations).targets == {
        "late": 0,
        "early": 6,
        "mid": 6,
        "idle-2": 0,
        "idle-1": 0,
    }
    assert allocate(24, 6, stations).targets == {
        "late": 6,
        "early": 6,
        "mid": 6,
        "idle-2": 0,
        "idle-1": 6,
    }
    # Below the minimum a vehicle gets nothing rather than a current it may not charge at.
    assert allocate(5, 6, stations).targets == dict.fromkeys(
        ("late", "early", "mid", "idle-2", "idle-1"), 0
    )


def test_a_charger_held_by_its_maximum_leaves_the_rest_to_others() -> None:
    result = allocate(
        60,
        6,
        [Station("small", 10, 1, (tx("a", 1),)), Station("big", 32, 2, (tx("b", 2),))],
    )
    assert result.targets == {"small": 10, "big": 32}
    result = allocate(
        70,
        6,
        [
            Station("small", 10, 1, (tx("a", 1),)),
            Station("big", 32, 2, (tx("b", 2),)),
            Station("big2", 32, 3, (tx("c", 3),)),
        ],
    )
    assert result.targets == {"small": 10, "big": 30, "big2": 30}


def test_a_lending_transaction_keeps_its_ceiling_and_the_rest_goes_to_others() -> None:
    result = allocate(
        40,
        6,
        [Station("A", 32, 1, (tx("a", 1, ceiling=9),)), Station("B", 32, 2, (tx("b", 2),))],
    )
    assert result.targets == {"A": 9, "B": 31}


def test_several_transactions_on_one_charger_share_its_maximum() -> None:
    # 2.0.1 multi-EVSE: the station-wide cap is for all EVSEs combined (K04.FR.05).
    result = allocate(
        100,
        6,
        [
            Station("dual", 32, 1, (tx("e1", 1), tx("e2", 3))),
            Station("single", 32, 2, (tx("s", 2),)),
        ],
    )
    assert result.shares == {"e1": 16, "e2": 16, "s": 32}
    assert result.targets == {"dual": 32, "single": 32}
    tight = allocate(30, 6, [Station("dual", 32, 1, (tx("e1", 1), tx("e2", 2)))])
    assert tight.shares == {"e1": 15, "e2": 15} and tight.targets == {"dual": 30}
    # A second transaction that does not fit beside the first's minimum gets nothing.
    small = allocate(30, 6, [Station("dual", 10, 1, (tx("e1", 1), tx("e2", 2)))])
    assert small.shares == {"e1": 10, "e2": 0} and small.targets == {"dual": 10}


def test_fixed_chargers_count_and_get_no_target() -> None:
    result = allocate(
        70,
        6,
        [
            Station("gone", 32, 1, (tx("g", 1),), fixed_a=20),
            Station("silent", 32, 2, fixed_a=32),
            Station("A", 32, 3, (tx("a", 2),)),
        ],
    )
    assert result.available_a == 18 and result.targets == {"A": 18}
    assert allocate(40, 6, [Station("x", 32, 1, fixed_a=50), Station("A", 32, 2)]).targets == {
        "A": 0
    }


def test_the_cloud_station_maximum_bounds_the_cap() -> None:
    result = allocate(100, 6, [Station("A", 32, 1, (tx("a", 1),), cloud_max_a=20)])
    assert result.targets == {"A": 20}
    # A cloud maximum under the minimum leaves the charger at 0 A, never at a current in between.
    assert allocate(100, 6, [Station("A", 32, 1, (tx("a", 1),), cloud_max_a=4)]).targets == {"A": 0}


# --- properties ---------------------------------------------------------------------------------


@st.composite
def sites(draw: st.DrawFn) -> tuple[int, int, list[Station]]:
    """1-200 chargers: maxima, 0-2 transactions in a random start order, ceilings, fixed ones."""
    min_a = draw(st.integers(1, 10))
    count = draw(st.integers(1, 200))
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, 70),  # max above the minimum
                st.sampled_from([0, 0, 1, 1, 1, 2]),  # transactions
                st.none() | st.integers(0, 70),  # a lending ceiling above the minimum
                st.sampled_from([None, None, None, 0, 0.5, 1]),  # fixed: share of its max
            ),
            min_size=count,
            max_size=count,
        )
    )
    rng = draw(st.randoms(use_true_random=False))
    starts = list(range(2 * len(rows)))
    rng.shuffle(starts)
    stations = []
    for i, (extra, ntx, ceiling, fixed) in enumerate(rows):
        max_a = min_a + extra
        txs = tuple(
            Tx(f"{i}.{j}", starts[2 * i + j], None if ceiling is None else min_a + ceiling)
            for j in range(ntx)
        )
        fixed_a = None if fixed is None else int(max_a * fixed)
        stations.append(Station(f"C{i}", max_a, i, txs, fixed_a=fixed_a))
    limit = draw(st.integers(0, 80 * len(rows)))
    return limit, min_a, stations


@settings(max_examples=100, deadline=None)
@given(sites())
def test_allocation_properties(site: tuple[int, int, list[Station]]) -> None:
    limit, min_a, stations = site
    result = allocate(limit, min_a, stations)
    fixed = sum(s.fixed_a or 0 for s in stations)
    live = [s for s in stations if s.fixed_a is None]
    assert set(result.targets) == {s.id for s in live}
    # Never over what is available, no cap between 0 and the minimum, none over a maximum.
    assert sum(result.targets.values()) <= max(0, limit - fixed)
    for station in live:
        target = result.targets[station.id]
        assert target == 0 or min_a <= target <= station.max_a
        assert target == sum(result.shares[t.key] for t in station.transactions) or (
            not station.transactions
        )
    # Equal shares within 1 A where ceilings allow: a transaction below another by more than 1 A
    # is held by its own ceiling or its charger's maximum.
    funded = [(t, s) for s in live for t in s.transactions if result.shares[t.key] > 0]
    if funded:
        top = max(result.shares[t.key] for t, _ in funded)
        for t, s in funded:
            share = result.shares[t.key]
            ceiling = s.max_a if t.ceiling_a is None else min(t.ceiling_a, s.max_a)
            held = share >= ceiling or result.targets[s.id] >= s.max_a
            assert share >= top - 1 or held, (t, share, top)
    # Nothing left unused while a funded transaction could take more.
    spare = max(0, limit - fixed) - sum(result.targets.values())
    if spare > 0:
        for t, s in funded:
            ceiling = s.max_a if t.ceiling_a is None else min(t.ceiling_a, s.max_a)
            assert result.shares[t.key] >= ceiling or result.targets[s.id] >= s.max_a
