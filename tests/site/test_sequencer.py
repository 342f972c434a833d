"""The sequencer: accounting, decreases before increases, answers, reconnects, release; and the
safety property over random sites and any interleaving of answers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.site.lending import Lend, observe
from gateway.site.rounds import Charger, round_due, run_round
from gateway.site.sequencer import (
    RETRY_S,
    Answer,
    Change,
    Clear,
    Slot,
    answered,
    connected,
    counted_sum,
    disconnected,
    engage,
    fixed_a,
    follow_cloud,
    plan,
    record,
    release,
    restore,
)


def slots_of(**accepted: int | None) -> dict[str, Slot]:
    return {cid: Slot(max_a=32, accepted_a=a) for cid, a in accepted.items()}


# --- accounting ---------------------------------------------------------------------------------


def test_counted_at_max_until_a_cap_is_accepted() -> None:
    slot = Slot(max_a=32)
    assert slot.counted_a == 32
    assert Slot(max_a=32, sent_a=10).counted_a == 32  # in flight: not accepted yet
    assert Slot(max_a=32, accepted_a=10).counted_a == 10
    assert Slot(max_a=32, accepted_a=10, sent_a=20).counted_a == 20  # may apply it before answering
    assert Slot(max_a=32, accepted_a=20, sent_a=10).counted_a == 20
    assert Slot(max_a=32, accepted_a=10, unmanaged_until=5.0).counted_a == 32


def test_disconnected_counts_at_its_last_accepted_cap_and_is_fixed() -> None:
    state = disconnected(slots_of(A=12), "A", now=0.0)
    assert state["A"].counted_a == 12 and not state["A"].connected
    assert fixed_a(state["A"], 0.0) == 12
    assert fixed_a(slots_of(A=12)["A"], 0.0) is None


# --- sequencing ---------------------------------------------------------------------------------


def test_first_caps_are_decreases_and_go_at_once() -> None:
    state = {"A": Slot(max_a=32), "B": Slot(max_a=32)}
    state, changes = plan(state, {"A": 20, "B": 20}, 40, 0.0, engaged=True)
    assert changes == [Change("A", 20), Change("B", 20)]
    assert counted_sum(state) == 64  # still at max until accepted
    state = answered(answered(state, "A", Answer.ACCEPTED, 1.0), "B", Answer.ACCEPTED, 1.0)
    assert counted_sum(state) == 40


def test_an_increase_waits_until_the_decrease_it_depends_on_is_accepted() -> None:
    state = slots_of(A=40, B=10)
    state, changes = plan(state, {"B": 25, "A": 25}, 50, 0.0, engaged=True)
    assert changes == [Change("A", 25)]  # B's increase would need A's 15 A first
    state, changes = plan(state, {"B": 25, "A": 25}, 50, 1.0, engaged=True)
    assert changes == []  # A's decrease in flight still counts at 40
    state = answered(state, "A", Answer.ACCEPTED, 2.0)
    state, changes = plan(state, {"B": 25, "A": 25}, 50, 2.0, engaged=True)
    assert changes == [Change("B", 25)]
    assert counted_sum(state) == 50


def test_a_refused_decrease_leaves_the_increase_waiting() -> None:
    state, _ = plan(slots_of(A=40, B=10), {"B": 25, "A": 25}, 50, 0.0, engaged=True)
    state = answered(state, "A", Answer.REJECTED, 1.0)
    assert state["A"].counted_a == 32  # unmanaged: its maximum
    state, changes = plan(state, {"B": 25, "A": 25}, 50, 2.0, engaged=True)
    assert changes == []  # 32 + 10 + 15 > 50


def test_one_call_at_a_time_per_charger() -> None:
    state, changes = plan(slots_of(A=20), {"A": 10}, 100, 0.0, engaged=True)
    assert changes == [Change("A", 10)]
    state, changes = plan(state, {"A": 6}, 100, 0.5, engaged=True)
    assert changes == []


def test_nothing_sent_when_the_cap_is_already_held() -> None:
    assert plan(slots_of(A=20), {"A": 20}, 100, 0.0, engaged=True)[1] == []


def test_rejected_and_timeout_make_it_unmanaged_asked_again_after_60_s() -> None:
    for answer in (Answer.REJECTED, Answer.TIMEOUT):
        state, _ = plan({"A": Slot(max_a=32)}, {"A": 16}, 100, 0.0, engaged=True)
        state = answered(state, "A", answer, 10.0)
        assert state["A"].unmanaged_until == 10.0 + RETRY_S
        assert fixed_a(state["A"], 69.0) == 32
        assert plan(state, {"A": 16}, 100, 69.0, engaged=True)[1] == []
        assert fixed_a(state["A"], 70.0) is None
        state, changes = plan(state, {"A": 16}, 100, 70.0, engaged=True)
        assert changes == [Change("A", 16)]
        state = answered(state, "A", Answer.ACCEPTED, 71.0)
        assert state["A"].unmanaged_until is None and state["A"].counted_a == 16


def test_an_unmanaged_charger_is_asked_again_on_reconnect() -> None:
    state, _ = plan({"A": Slot(max_a=32)}, {"A": 16}, 100, 0.0, engaged=True)
    state = disconnected(state, "A", 5.0)  # the CALL in flight gets no answer
    assert state["A"].unmanaged_until == 5.0 + RETRY_S and state["A"].counted_a == 32
    state = connected(state, "A", 32, 8.0)
    assert plan(state, {"A": 16}, 100, 8.0, engaged=True)[1] == [Change("A", 16)]


def test_a_reconnecting_charger_gets_its_cap_again_first() -> None:
    state = connected(disconnected(slots_of(A=12), "A", 0.0), "A", 32, 5.0)
    assert state["A"].resend
    # Its target rose meanwhile: first the cap it held, then (next round) the increase.
    state, changes = plan(state, {"A": 20}, 100, 5.0, engaged=True)
    assert changes == [Change("A", 12)]
    state = answered(state, "A", Answer.ACCEPTED, 6.0)
    assert plan(state, {"A": 20}, 100, 6.0, engaged=True)[1] == [Change("A", 20)]
    # Its target fell meanwhile: the lower cap at once.
    state = connected(disconnected(slots_of(A=12), "A", 0.0), "A", 32, 5.0)
    assert plan(state, {"A": 8}, 100, 5.0, engaged=True)[1] == [Change("A", 8)]


def test_a_cloud_profile_on_the_station_maximum_is_followed_by_the_cap_again() -> None:
    state = follow_cloud(slots_of(A=12), "A")
    assert plan(state, {"A": 12}, 100, 0.0, engaged=True)[1] == [Change("A", 12)]
    assert follow_cloud(slots_of(A=None), "A")["A"].resend is False  # no cap to send again


def test_release_clears_every_held_cap_and_a_refused_clear_waits_for_the_next_connect() -> None:
    state = slots_of(A=12, B=None, C=20)
    state["D"] = Slot(max_a=32, unmanaged_until=50.0)  # silent: may hold the cap
    state = disconnected(state, "C", 0.0)
    state = release(state)
    assert [c for c, s in state.items() if s.clear is Clear.DUE] == ["A", "C", "D"]
    state, changes = plan(state, {"A": 30}, 100, 1.0, engaged=False)
    assert changes == [Change("A", None), Change("D", None)]  # C is not connected: later
    state = answered(state, "A", Answer.ACCEPTED, 2.0)
    state = answered(state, "D", Answer.TIMEOUT, 2.0)
    assert state["A"].accepted_a is None and state["A"].clear is Clear.NONE
    assert state["D"].clear is Clear.ON_CONNECT
    assert plan(state, {}, 100, 100.0, engaged=False)[1] == []  # not resent while connected
    state = connected(disconnected(state, "D", 101.0), "D", 32, 102.0)
    state = connected(state, "C", 32, 102.0)
    assert plan(state, {}, 100, 102.0, engaged=False)[1] == [Change("C", None), Change("D", None)]


def test_engaging_again_drops_pending_clears() -> None:
    state = release(slots_of(A=12))
    state = engage(state)
    assert state["A"].clear is Clear.NONE
    assert plan(state, {"A": 12}, 100, 0.0, engaged=True)[1] == []


# --- rounds -------------------------------------------------------------------------------------


def test_a_round_from_transactions_to_changes() -> None:
    state = {cid: Slot(max_a=32) for cid in ("A", "B", "C")}
    chargers = [
        Charger("A", 1, {"a": 2}),
        Charger("B", 2, {"b": 1}),
        Charger("C", 3, {}),
    ]
    result = run_round(state, chargers, {}, limit_a=50, min_a=6, now=0.0, engaged=True)
    assert result.allocation.targets == {"A": 22, "B": 22, "C": 6}
    assert {c.charger: c.cap_a for c in result.changes} == {"A": 22, "B": 22, "C": 6}
    # B lends: A gets what B does not use.
    lending = {"b": Lend(low=2, ceiling_a=10)}
    result = run_round(state, chargers, lending, limit_a=50, min_a=6, now=0.0, engaged=True)
    assert result.allocation.targets == {"A": 32, "B": 10, "C": 6}


# --- properties ---------------------------------------------------------------------------------


@dataclass
class Site:
    """A pure model of the site: the sequencer's slots, transactions, lending, time."""

    limit: int
    min_a: int
    maxima: list[int]
    slots: dict[str, Slot] = field(default_factory=dict)
    txs: dict[str, dict[str, int]] = field(default_factory=dict)
    lending: dict[str, Lend] = field(default_factory=dict)
    shares: dict[str, int] = field(default_factory=dict)
    now: float = 0.0
    next_tx: int = 0
    sent: list[Change] = field(default_factory=list)

    def cid(self, i: int) -> str:
        return f"C{i % len(self.maxima)}"

    def chargers(self) -> list[Charger]:
        return [Charger(cid, int(cid[1:]), self.txs.get(cid, {})) for cid in self.slots]

    def round(self) -> list[Change]:
        result = run_round(
            self.slots,
            self.chargers(),
            self.lending,
            limit_a=self.limit,
            min_a=self.min_a,
            now=self.now,
            engaged=True,
        )
        self.slots = result.slots
        self.shares.update(result.allocation.shares)
        self.sent += result.changes
        return result.changes


OPS = st.tuples(
    st.sampled_from(
        [
            "round",
            "round",
            "round",
            "accept",
            "accept",
            "accept",
            "reject",
            "timeout",
            "connect",
            "disconnect",
            "tick",
            "start",
            "stop",
            "reading",
        ]
    ),
    st.integers(0, 10_000),
    st.floats(0, 40, allow_nan=False),
)
WORLD = {"reject", "timeout", "connect", "disconnect"}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Site, list[tuple[str, int, float]]]:
    count = draw(st.integers(1, 200))
    min_a = draw(st.integers(1, 10))
    maxima = draw(st.lists(st.integers(min_a, 64), min_size=count, max_size=count))
    limit = draw(st.integers(min_a, sum(maxima)))
    ops = draw(st.lists(OPS, min_size=1, max_size=120))
    return Site(limit, min_a, maxima), ops


def apply(site: Site, op: str, n: int, x: float) -> None:
    cid = site.cid(n)
    slot = site.slots.get(cid)
    if op == "round":
        site.round()
    elif op in ("accept", "reject", "timeout"):
        if slot is not None and slot.busy:
            answer = {
                "accept": Answer.ACCEPTED,
                "reject": Answer.REJECTED,
                "timeout": Answer.TIMEOUT,
            }
            site.slots = answered(site.slots, cid, answer[op], site.now)
    elif op == "connect":
        if slot is None or not slot.connected:
            site.slots = connected(site.slots, cid, site.maxima[n % len(site.maxima)], site.now)
    elif op == "disconnect":
        if slot is not None and slot.connected:
            site.slots = disconnected(site.slots, cid, site.now)
    elif op == "tick":
        site.now += x * 3
    elif op == "start":
        if slot is not None:
            site.next_tx += 1
            site.txs.setdefault(cid, {})[f"t{site.next_tx}"] = site.next_tx
    elif op == "stop":
        if site.txs.get(cid):
            key = min(site.txs[cid], key=site.txs[cid].__getitem__)
            del site.txs[cid][key]
            site.lending.pop(key, None)
    elif op == "reading":
        for key in site.txs.get(cid, {}):
            share = site.shares.get(key, 0)
            site.lending[key] = observe(site.lending.get(key, Lend()), x, share, site.min_a)


def settle(site: Site) -> None:
    """Every charger connects and answers yes; rounds until nothing is left to send."""
    for i in range(len(site.maxima)):
        apply(site, "connect", i, 0.0)
    for _ in range(50):
        site.now += RETRY_S + 1
        for cid, slot in list(site.slots.items()):
            if slot.busy:
                site.slots = answered(site.slots, cid, Answer.ACCEPTED, site.now)
        if not site.round() and not any(s.busy for s in site.slots.values()):
            return
    raise AssertionError("the site did not settle")


@settings(max_examples=120, deadline=None)
@given(scenarios())
def test_the_gateway_never_raises_the_counted_sum_over_the_limit(
    scenario: tuple[Site, list[tuple[str, int, float]]],
) -> None:
    site, ops = scenario
    for i in range(len(site.maxima)):
        apply(site, "connect", i, 0.0)
    for op, n, x in ops:
        before = counted_sum(site.slots)
        sent_before = len(site.sent)
        apply(site, op, n, x)
        after = counted_sum(site.slots)
        if op not in WORLD:
            # Sending, an accepted answer, a transaction or a reading never pushes the counted
            # sum over the limit, nor raises it while it is over (unmanaged chargers, first caps).
            assert after <= max(before, site.limit), (op, before, after)
        for change in site.sent[sent_before:]:
            assert change.cap_a is not None
            assert (
                change.cap_a == 0 or site.min_a <= change.cap_a <= site.slots[change.charger].max_a
            )
    settle(site)
    assert counted_sum(site.slots) <= site.limit
    assert all(s.unmanaged_until is None and s.accepted_a is not None for s in site.slots.values())


@settings(max_examples=80, deadline=None)
@given(scenarios())
def test_once_under_the_limit_it_stays_under_when_every_charger_answers_yes(
    scenario: tuple[Site, list[tuple[str, int, float]]],
) -> None:
    site, ops = scenario
    settle(site)
    assert counted_sum(site.slots) <= site.limit
    for op, n, x in ops:
        if op in WORLD:
            op = "round"
        apply(site, op, n, x)
        assert counted_sum(site.slots) <= site.limit, op
    settle(site)
    # Settled: shares equal within 1 A where maxima and loans allow, none between 0 and min_a.
    result = run_round(
        site.slots,
        site.chargers(),
        site.lending,
        limit_a=site.limit,
        min_a=site.min_a,
        now=site.now,
        engaged=True,
    )
    assert result.changes == []
    funded = {k: v for k, v in result.allocation.shares.items() if v > 0}
    for cid, slot in site.slots.items():
        assert slot.accepted_a == 0 or site.min_a <= (slot.accepted_a or 0) <= slot.max_a
        for key in site.txs.get(cid, {}):
            share = funded.get(key)
            if share is None:
                continue
            loan = site.lending.get(key, Lend()).ceiling_a
            held = share >= min(slot.max_a, loan or slot.max_a) or slot.accepted_a == slot.max_a
            assert held or share >= max(funded.values()) - 1, (key, share, funded)


def test_an_unmanaged_charger_counts_at_its_maximum_until_it_is_due_again() -> None:
    state = {"A": Slot(max_a=32, accepted_a=16, unmanaged_until=60.0), "B": Slot(max_a=32)}
    chargers = [Charger("A", 1, {"a": 1}), Charger("B", 2, {"b": 2})]
    before = run_round(state, chargers, {}, limit_a=48, min_a=6, now=30.0, engaged=True)
    # A is fixed at 32 and gets no target; B gets what is left.
    assert before.allocation.targets == {"B": 16}
    assert before.changes == [Change("B", 16)]
    due = run_round(state, chargers, {}, limit_a=48, min_a=6, now=60.0, engaged=True)
    # Due again: A takes part and is asked for its share (a decrease from 32, sent at once).
    assert due.allocation.targets == {"A": 24, "B": 24}
    assert Change("A", 24) in due.changes


def test_a_loan_ends_when_the_vehicle_draws_near_its_lowered_cap() -> None:
    state = {"A": Slot(max_a=32, accepted_a=24), "B": Slot(max_a=32, accepted_a=24)}
    chargers = [Charger("A", 1, {"a": 1}), Charger("B", 2, {"b": 2})]
    lend = Lend()
    for _ in range(2):
        lend = observe(lend, 7.2, 24, 6)  # A's vehicle draws 7.2 A of its 24
    result = run_round(state, chargers, {"a": lend}, limit_a=48, min_a=6, now=0.0, engaged=True)
    assert result.allocation.targets == {"A": 10, "B": 32}
    assert result.changes == [Change("A", 10)]  # B's increase waits for A's decrease
    state = answered(result.slots, "A", Answer.ACCEPTED, 1.0)
    result = run_round(state, chargers, {"a": lend}, limit_a=48, min_a=6, now=1.0, engaged=True)
    assert result.changes == [Change("B", 32)]
    state = answered(result.slots, "B", Answer.ACCEPTED, 2.0)
    lend = observe(lend, 9.5, 10, 6)  # within 1 A of its lowered cap: the loan ends
    assert lend == Lend()
    result = run_round(state, chargers, {"a": lend}, limit_a=48, min_a=6, now=3.0, engaged=True)
    assert result.allocation.targets == {"A": 24, "B": 24}
    assert result.changes == [Change("B", 24)]  # B gives back first; A's increase follows


# --- restart ------------------------------------------------------------------------------------


def test_caps_survive_a_restart() -> None:
    state = slots_of(A=12)
    state, _ = plan(state | {"B": Slot(max_a=16, accepted_a=10)}, {"B": 6}, 100, 0.0, engaged=True)
    state["C"] = Slot(max_a=32, accepted_a=20, clearing=True, clear=Clear.DUE)
    state["D"] = Slot(max_a=32, accepted_a=20, unmanaged_until=50.0)
    saved = json.loads(json.dumps({cid: record(slot) for cid, slot in state.items()}))
    back = {cid: restore(data) for cid, data in saved.items()}
    # Disconnected until they come back: A counts at the cap it accepted; B's cap in flight is
    # unknown, so B counts at its maximum and is asked again; C is owed its Clear.
    assert back["A"] == Slot(max_a=32, connected=False, accepted_a=12)
    assert back["B"].counted_a == 16 and back["B"].unmanaged_until is not None
    assert back["C"].clear is Clear.ON_CONNECT
    assert back["D"].counted_a == 32
    # On reconnect, A gets its cap again before anything else.
    again = connected(back, "A", 32, 100.0)
    assert plan(again, {"A": 20}, 100, 100.0, engaged=True)[1] == [Change("A", 12)]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"maxA": -1, "acceptedA": None, "unmanaged": False, "clear": "none"}, "maxA"),
        ({"maxA": True, "acceptedA": None, "unmanaged": False, "clear": "none"}, "maxA"),
        ({"maxA": 32, "acceptedA": "12", "unmanaged": False, "clear": "none"}, "acceptedA"),
        ({"maxA": 32, "acceptedA": 12, "unmanaged": "no", "clear": "none"}, "unmanaged"),
        ({"maxA": 32, "acceptedA": 12, "unmanaged": False, "clear": "later"}, "clear"),
        ({}, "maxA"),
    ],
)
def test_a_bad_record_is_refused_naming_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        restore(data)


def test_rounds_run_at_once_when_urgent_else_once_a_second() -> None:
    assert round_due(None, 0.0, urgent=False)
    assert not round_due(10.0, 10.5, urgent=False)
    assert round_due(10.0, 10.5, urgent=True)
    assert round_due(10.0, 11.0, urgent=False)
