"""The handshake pacer as values, and driven by a small discrete-event simulation on a fake clock.

The simulation plays the hub and 1,000 link loops against a modelled cloud: links queue for a
turn (first come, first served), start when the pacer allows, end with the cloud's outcome; a
failed link waits its own backoff (cap 60 s), a success after failures wakes the waiting links
once per failure streak, and while no link is up one waiting link is probed every 3 s, as
:mod:`gateway.net.hub` and :mod:`gateway.net.link` do. Every start is checked against the
pacer's K at that moment.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from gateway.core.backoff import Backoff, Recovery
from gateway.core.pacer import HandshakePacer, Outcome, PacerSettings

# --- the pacer on values -----------------------------------------------------------------------


def test_at_most_k_in_flight_and_an_end_frees_a_place() -> None:
    pacer = HandshakePacer(PacerSettings(initial=3, ceiling=10))
    tickets = [pacer.start(0.0) for _ in range(3)]
    assert pacer.start_in(0.0) == math.inf
    with pytest.raises(ValueError):
        pacer.start(0.0)
    assert pacer.finish(tickets[0], Outcome.ERROR, 0.1)
    assert pacer.start_in(0.1) == 0.0 and pacer.limit == 3  # an error leaves K alone
    assert not pacer.finish(tickets[0], Outcome.SUCCESS, 0.2)  # already ended: ignored


def test_fast_successes_raise_k_at_most_twofold_a_round_up_to_the_ceiling() -> None:
    pacer = HandshakePacer(PacerSettings(initial=4, ceiling=20))
    limits = [pacer.limit]
    for n in range(5):  # rounds of K handshakes started together, all fast
        tickets = [pacer.start(float(n)) for _ in range(pacer.limit)]
        for ticket in tickets:
            pacer.finish(ticket, Outcome.SUCCESS, n + 0.01)
        limits.append(pacer.limit)
    assert limits == [4, 6, 9, 13, 18, 20]  # the last half of a round finds K not in use


def test_k_grows_only_while_it_is_in_use() -> None:
    pacer = HandshakePacer(PacerSettings(initial=10))
    for n in range(100):  # one handshake at a time: a larger K would change nothing
        pacer.finish(pacer.start(float(n)), Outcome.SUCCESS, n + 0.01)
    assert pacer.limit == 10


def test_a_burst_of_refusals_halves_k_once() -> None:
    pacer = HandshakePacer(PacerSettings(initial=40))
    tickets = [pacer.start(0.0) for _ in range(40)]
    for ticket in tickets:  # the cloud went down with 40 handshakes open
        pacer.finish(ticket, Outcome.REFUSED, 0.01)
    assert pacer.limit == 20
    # Started after the decrease (50 a second while the cloud refuses): may decrease again.
    late = [pacer.start(1.0 + n / 32) for n in range(20)]
    pacer.finish(late[0], Outcome.TIMEOUT, 11.0)
    assert pacer.limit == 10
    for ticket in late[1:]:
        pacer.finish(ticket, Outcome.TIMEOUT, 11.0)
    assert pacer.limit == 10


def test_a_slow_success_counts_as_a_struggling_cloud() -> None:
    pacer = HandshakePacer(PacerSettings(initial=8, slow_s=1.0))
    pacer.finish(pacer.start(0.0), Outcome.SUCCESS, 1.5)
    assert pacer.limit == 4
    assert pacer.duration_s == pytest.approx(0.5 + 0.2 * (1.5 - 0.5))


def test_k_never_falls_below_the_floor() -> None:
    pacer = HandshakePacer(PacerSettings(initial=8, floor=2))
    for n in range(10):
        pacer.finish(pacer.start(float(n)), Outcome.REFUSED, n + 0.001)
    assert pacer.limit == 2


def test_the_rate_cap_spaces_starts() -> None:
    pacer = HandshakePacer(PacerSettings(max_per_s=50.0))
    pacer.start(100.0)
    assert pacer.start_in(100.0) == pytest.approx(0.02)
    assert pacer.start_in(100.02) == 0.0
    pacer.start(100.03)
    assert pacer.start_in(100.04) == pytest.approx(0.01)
    assert pacer.wait_estimate_s(4, 100.04) == pytest.approx(0.01 + 4 * 0.02)


def test_while_handshakes_fail_starts_are_spaced_until_one_succeeds() -> None:
    """A cloud that is down refuses at once: K alone would not slow the retries down."""
    pacer = HandshakePacer(PacerSettings(initial=10, failing_per_s=50.0))
    pacer.finish(pacer.start(0.0), Outcome.REFUSED, 0.001)
    assert pacer.start_in(0.001) == pytest.approx(0.019)
    assert pacer.wait_estimate_s(3, 0.001) == pytest.approx(0.019 + 3 * 0.02)
    pacer.finish(pacer.start(0.02), Outcome.SUCCESS, 0.021)
    assert pacer.start_in(0.021) == 0.0  # the cloud answers again: no spacing
    pacer.finish(pacer.start(0.021), Outcome.ERROR, 0.022)
    assert pacer.start_in(0.022) == 0.0  # an error says nothing about the cloud


def test_a_handshake_never_reported_is_released_after_its_lease() -> None:
    pacer = HandshakePacer(PacerSettings(initial=2, lease_s=30.0))
    lost = pacer.start(0.0)
    kept = pacer.start(20.0)
    assert pacer.expire(29.9) == []
    assert pacer.expire(30.0) == [lost] and pacer.in_flight == 1
    assert pacer.limit == 2  # a lost report says nothing about the cloud
    assert not pacer.finish(lost, Outcome.SUCCESS, 31.0)
    assert pacer.finish(kept, Outcome.SUCCESS, 31.0)


def test_the_wait_estimate_counts_rounds_of_k() -> None:
    pacer = HandshakePacer(PacerSettings(initial=10, first_estimate_s=0.5))
    for _ in range(4):
        pacer.start(0.0)
    assert pacer.wait_estimate_s(5, 0.0) == 0.0  # 6 places free
    assert pacer.wait_estimate_s(6, 0.0) == 0.5
    assert pacer.wait_estimate_s(16, 0.0) == 1.0  # 6 now, 10 in the first round, then it
    assert pacer.wait_estimate_s(26, 0.0) == 1.5


@pytest.mark.parametrize(
    "settings",
    [
        {"floor": 0},
        {"initial": 300},
        {"decrease": 1.0},
        {"max_per_s": -1.0},
        {"lease_s": 0.0},
        {"failing_per_s": 0.0},
    ],
)
def test_settings_out_of_bounds_are_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PacerSettings(**settings)  # type: ignore[arg-type]


# --- the simulation ----------------------------------------------------------------------------

OPEN_TIMEOUT_S = 10.0  # upstream.call_timeout_s: the handshake's open timeout
SWEEP_S = 0.25  # the hub's sweep: the probe and the lease


@dataclass
class Cloud:
    """How the modelled cloud answers the n-th handshake started at ``now`` with ``open_`` in
    flight at it: (outcome, duration). ``up(now)`` says whether it is up (links drop when not)."""

    answer: Callable[[int, float, int], tuple[Outcome, float]]
    up: Callable[[float], bool] = lambda now: True
    in_flight: int = 0


def fast(n: int, now: float, open_: int) -> tuple[Outcome, float]:
    return Outcome.SUCCESS, 0.005


def slow(n: int, now: float, open_: int) -> tuple[Outcome, float]:
    return Outcome.SUCCESS, 0.3


def refusing_half(n: int, now: float, open_: int) -> tuple[Outcome, float]:
    return (Outcome.REFUSED, 0.005) if n % 2 else (Outcome.SUCCESS, 0.005)


def loaded(n: int, now: float, open_: int) -> tuple[Outcome, float]:
    """A cloud whose handshake time grows with the handshakes it has open (20 ms each)."""
    duration = 0.02 * open_
    if duration > OPEN_TIMEOUT_S:
        return Outcome.TIMEOUT, OPEN_TIMEOUT_S
    return Outcome.SUCCESS, duration


def down_until(back_at: float, answer: Callable[[int, float, int], tuple[Outcome, float]]) -> Cloud:
    """Refuses every handshake at once (nothing listens) until ``back_at``, then ``answer``."""

    def at(n: int, now: float, open_: int) -> tuple[Outcome, float]:
        return (Outcome.REFUSED, 0.001) if now < back_at else answer(n, now, open_)

    return Cloud(at, up=lambda now: now >= back_at)


def flapping(until: float) -> Cloud:
    """Up 2 s, down 3 s, ... until ``until``, then up for good; 50 ms handshakes while up."""

    def up(now: float) -> bool:
        return now >= until or now % 5.0 < 2.0

    def at(n: int, now: float, open_: int) -> tuple[Outcome, float]:
        return (Outcome.SUCCESS, 0.05) if up(now) else (Outcome.REFUSED, 0.001)

    return Cloud(at, up=up)


@dataclass
class Result:
    up_at: dict[int, float]
    attempts: list[int]
    peak_in_flight: int
    peak_limit: int
    limits: list[int] = field(default_factory=list)  # K at each start
    starts: list[float] = field(default_factory=list)  # when each handshake started


def simulate(
    cloud: Cloud,
    *,
    chargers: int = 1000,
    settings: PacerSettings | None = None,
    until: float = 600.0,
    stable_from: float = 0.0,
    seed: int = 1,
) -> Result:
    """Every link wants its cloud link from t = 0; run until all are up once the cloud stays up
    (from ``stable_from``), or ``until``."""
    rng = random.Random(seed)
    pacer, recovery = HandshakePacer(settings), Recovery(probe_every_s=3.0)
    backoffs = [Backoff(max_s=60.0, rng=rng) for _ in range(chargers)]
    woken = [False] * chargers
    queue: list[int] = list(range(chargers))  # waiting for a turn, first come first served
    head = 0
    waiting: dict[int, float] = {}  # link -> when its backoff ends
    up: dict[int, float] = {}
    attempts = [0] * chargers
    result = Result(up_at={}, attempts=attempts, peak_in_flight=0, peak_limit=pacer.limit)
    seq = itertools.count()
    events: list[tuple[float, int, str, int, int, Outcome]] = []
    started = 0
    pace_at = math.inf

    def push(at: float, kind: str, link: int = -1, ticket: int = -1) -> None:
        heapq.heappush(events, (at, next(seq), kind, link, ticket, Outcome.ERROR))

    def hand_out(now: float) -> None:
        nonlocal head, started, pace_at
        while head < len(queue):
            wait = pacer.start_in(now)
            if wait == math.inf:
                return
            if wait > 0:
                if pace_at > now + wait:
                    pace_at = now + wait
                    push(pace_at, "pace")
                return
            link = queue[head]
            head += 1
            ticket = pacer.start(now)
            recovery.attempt_started(now)
            attempts[link] += 1
            cloud.in_flight += 1
            # The invariant: a handshake starts only with fewer than K in flight.
            assert pacer.in_flight <= pacer.limit <= pacer.settings.ceiling
            assert cloud.in_flight <= pacer.settings.ceiling
            result.peak_in_flight = max(result.peak_in_flight, cloud.in_flight)
            result.peak_limit = max(result.peak_limit, pacer.limit)
            result.limits.append(pacer.limit)
            result.starts.append(now)
            outcome, duration = cloud.answer(started, now, cloud.in_flight)
            started += 1
            heapq.heappush(events, (now + duration, next(seq), "end", link, ticket, outcome))

    def fail(link: int, now: float) -> None:
        recovery.failed()
        delay = backoffs[link].next_delay()
        waiting[link] = now + delay
        push(now + delay, "wake", link)

    def book(link: int) -> None:
        del waiting[link]
        queue.append(link)

    push(SWEEP_S, "sweep")
    was_up = True
    hand_out(0.0)
    while events:
        now, _, kind, link, ticket, outcome = heapq.heappop(events)
        if now > until:
            break
        if kind == "end":
            cloud.in_flight -= 1
            pacer.finish(ticket, outcome, now)
            if outcome is Outcome.SUCCESS and cloud.up(now):
                up[link] = now
                result.up_at[link] = now
                backoffs[link].reset()
                woken[link] = False
                if recovery.connected():
                    for other in list(waiting):
                        if not woken[other]:
                            woken[other] = True
                            book(other)
            else:
                fail(link, now)
        elif kind == "wake":
            if waiting.get(link) == now:
                book(link)
        elif kind == "pace":
            pace_at = math.inf
        elif kind == "sweep":
            push(now + SWEEP_S, "sweep")
            pacer.expire(now)
            if cloud.up(now) != was_up:
                was_up = not was_up
                if not was_up:  # the cloud went down: every open link drops
                    for dropped in list(up):
                        del up[dropped]
                        result.up_at.pop(dropped)
                        fail(dropped, now)
            if waiting and recovery.probe_due(now, waiting=len(waiting), links_up=len(up)):
                recovery.attempt_started(now)
                book(min(waiting, key=lambda k: waiting[k]))
        hand_out(now)
        if len(up) == chargers and now >= stable_from:
            break
    return result


def test_a_fast_cloud_links_everyone_in_well_under_a_second() -> None:
    result = simulate(Cloud(fast))
    assert len(result.up_at) == 1000
    assert max(result.up_at.values()) <= 0.5
    assert result.peak_in_flight <= result.peak_limit <= 200
    assert max(result.attempts) == 1


def test_a_slow_cloud_gets_at_most_k_and_everyone_within_3_s() -> None:
    """300 ms handshakes: K grows as they succeed (50, then 100, 200 in flight)."""
    result = simulate(Cloud(slow))
    assert len(result.up_at) == 1000
    assert max(result.up_at.values()) <= 3.0
    assert result.peak_limit == 200 and result.peak_in_flight <= 200
    assert result.limits[0] == 50


def test_a_cloud_slowed_by_load_is_given_fewer_at_once() -> None:
    """Each open handshake adds 20 ms: past ~50 in flight a handshake takes over 1 s (slow_s) and
    K comes down, instead of growing to the ceiling and making every handshake take 4 s."""
    result = simulate(Cloud(loaded))
    assert len(result.up_at) == 1000
    assert result.peak_in_flight <= result.peak_limit <= 110  # a sawtooth of 50-100, not 200
    assert max(result.up_at.values()) <= 5.0 + 1000 / 50


def test_a_cloud_refusing_every_other_handshake_starves_no_one() -> None:
    """Refused links wait their own backoff (the first success after refusals wakes each
    once per streak); K stays bounded and every link gets through, none later than its own
    backoff says: the turns add less than a second to the delays between its attempts."""
    result = simulate(Cloud(refusing_half))
    assert len(result.up_at) == 1000
    assert result.peak_in_flight <= result.peak_limit <= 200
    ups = sorted(result.up_at.values())
    assert ups[499] <= 0.5  # the first pass links half of them at once
    for link, up_at in result.up_at.items():
        refusals = result.attempts[link] - 1
        backoff_s = sum(min(60.0, 2.0**n) for n in range(refusals))
        assert up_at <= backoff_s + 1.0, (link, refusals)


@pytest.mark.parametrize("outage_s", [65.0, 3600.0])
@pytest.mark.parametrize("answer", [fast, slow], ids=["fast", "slow"])
def test_after_an_outage_everyone_is_back_within_the_bound(
    outage_s: float, answer: Callable[[int, float, int], tuple[Outcome, float]]
) -> None:
    """Down long enough for every backoff to reach its cap (K halved down to 1 by the refusals),
    then back: the probe finds it within 3 s, the success wakes every link, K regrows."""
    result = simulate(down_until(outage_s, answer), until=outage_s + 120.0, stable_from=outage_s)
    assert len(result.up_at) == 1000
    assert max(result.up_at.values()) - outage_s <= 5.0 + 1000 / 50
    assert result.peak_in_flight <= 200
    # While the cloud refuses everything, the retries come at most 50 a second (one more at the
    # edges of a second), not as fast as a thousand backoffs end; only the first K start at once.
    assert max_in_one_second([t for t in result.starts if t < 1.0]) <= 50 + 51
    assert max_in_one_second([t for t in result.starts if 1.0 <= t < outage_s]) <= 51


def max_in_one_second(times: list[float]) -> int:
    left, most = 0, 0
    for right, t in enumerate(times):  # in order already
        while times[left] <= t - 1.0:
            left += 1
        most = max(most, right - left + 1)
    return most


def test_a_refusing_cloud_after_an_outage_links_nearly_everyone_within_the_bound() -> None:
    """Down 20 s, then refusing every other handshake: the first pass links half at once; the
    refused ones retry after their backoffs (grown by at most 50 attempts a second during the
    outage), 90% linked within the bound, the last ones after their own capped backoffs."""
    result = simulate(down_until(20.0, refusing_half), until=20.0 + 600.0, stable_from=20.0)
    ups = sorted(t - 20.0 for t in result.up_at.values())
    assert len(ups) == 1000
    assert ups[499] <= 5.0
    assert ups[899] <= 5.0 + 1000 / 50


def test_with_a_rate_cap_the_outage_bound_holds_and_starts_are_spaced() -> None:
    settings = PacerSettings(max_per_s=50.0)
    result = simulate(down_until(65.0, fast), settings=settings, until=200.0, stable_from=65.0)
    assert max(result.up_at.values()) - 65.0 <= 5.0 + 1000 / 50
    assert max_in_one_second(result.starts) <= 51


def test_a_flapping_cloud_keeps_k_bounded_and_everyone_links_once_it_stays() -> None:
    result = simulate(flapping(until=30.0), until=200.0, stable_from=30.0)
    assert len(result.up_at) == 1000
    assert result.peak_in_flight <= result.peak_limit <= 200
    assert max(result.up_at.values()) - 30.0 <= 5.0 + 1000 / 50
