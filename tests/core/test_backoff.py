"""Retry timing as values, on a fake clock: backoff, connect pacing, recovery, quiet logging."""

from __future__ import annotations

import heapq
import random
from collections import Counter

import pytest

from gateway.core.backoff import Backoff, ConnectPacer, Recovery


def test_backoff_grows_to_its_cap_and_resets() -> None:
    backoff = Backoff(initial_s=1.0, max_s=60.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    bases = [min(60.0, 2.0**n) for n in range(10)]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bases, strict=True))
    assert backoff.capped
    backoff.reset()
    assert not backoff.capped and backoff.next_delay() <= 1.0


def test_backoff_capped_only_once_the_cap_is_given() -> None:
    backoff = Backoff(initial_s=0.05, max_s=60.0, factor=40.0, rng=random.Random(2))
    backoff.next_delay()  # 0.05
    backoff.next_delay()  # 2
    assert not backoff.capped
    assert 30.0 <= backoff.next_delay() <= 60.0
    assert backoff.capped


def test_pacer_spaces_handshakes_evenly() -> None:
    pacer = ConnectPacer(50.0)
    waits = [pacer.reserve(100.0) for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    assert pacer.backlog_s(100.0) == pytest.approx(0.1)
    assert pacer.reserve(200.0) == 0.0  # idle again: no wait


def test_pacer_never_exceeds_its_rate_in_any_second() -> None:
    pacer = ConnectPacer(50.0)
    starts: list[float] = []
    now = 0.0
    rng = random.Random(3)
    for _ in range(2000):  # requests arrive in bursts, faster than the rate
        now += rng.expovariate(200.0)
        starts.append(now + pacer.reserve(now))
    starts.sort()
    left = 0
    for right, t in enumerate(starts):
        while starts[left] <= t - 1.0:
            left += 1
        assert right - left + 1 <= 51  # a window of 1 s holds at most rate + 1 starts


def test_pacer_refuses_a_rate_of_zero() -> None:
    with pytest.raises(ValueError):
        ConnectPacer(0.0)


def test_recovery_probes_only_while_no_link_is_up() -> None:
    recovery = Recovery(probe_every_s=3.0)
    assert recovery.probe_due(10.0, waiting=1, links_up=0)
    recovery.attempt_started(10.0)
    assert not recovery.probe_due(12.0, waiting=1, links_up=0)
    assert recovery.probe_due(13.0, waiting=1, links_up=0)
    assert not recovery.probe_due(13.0, waiting=1, links_up=1)  # the cloud is reachable
    assert not recovery.probe_due(13.0, waiting=0, links_up=0)  # nobody waits


def test_recovery_a_success_after_failures_ends_an_outage() -> None:
    recovery = Recovery(probe_every_s=3.0)
    assert not recovery.connected()  # nothing failed: no one to wake
    recovery.failed()
    recovery.failed()
    assert recovery.connected()
    assert not recovery.connected()


def _simulate(chargers: int, outage_s: float, rate: float, seed: int) -> tuple[float, int]:
    """The link loop's policy on a fake clock: every link fails while the cloud is down, backs off
    (cap 60 s), books handshake slots from the pacer; a success wakes the waiting links once per
    failure streak; while no link is up, one waiting link is probed every 3 s. Returns the time
    from the cloud's return until the last link is up, and the busiest second of handshakes."""
    rng = random.Random(seed)
    pacer, recovery = ConnectPacer(rate), Recovery(probe_every_s=3.0)
    backoffs = [Backoff(max_s=60.0, rng=rng) for _ in range(chargers)]
    woken = [False] * chargers
    up_at: dict[int, float] = {}
    events: list[tuple[float, int, str]] = []  # (time, link, "attempt" | "wake")
    waiting: dict[int, float] = {}  # link → when its backoff ends
    per_second: Counter[int] = Counter()

    def book(link: int, now: float) -> None:
        start = now + pacer.reserve(now)
        recovery.attempt_started(start)
        heapq.heappush(events, (start, link, "attempt"))

    for link in range(chargers):
        book(link, 0.0)
    now, tick = 0.0, 0.25
    next_sweep = tick
    while len(up_at) < chargers:
        if events and events[0][0] <= next_sweep:
            now, link, kind = heapq.heappop(events)
        else:
            now, next_sweep = next_sweep, next_sweep + tick
            if recovery.probe_due(now, waiting=len(waiting), links_up=len(up_at)):
                link = min(waiting, key=lambda k: waiting[k])
                recovery.attempt_started(now)
                del waiting[link]
                book(link, now)
            continue
        if kind == "wake":
            if waiting.get(link) == now:
                del waiting[link]
                book(link, now)
            continue
        per_second[int(now)] += 1
        if now < outage_s:
            recovery.failed()
            delay = backoffs[link].next_delay()
            waiting[link] = now + delay
            heapq.heappush(events, (now + delay, link, "wake"))
            continue
        up_at[link] = now
        if recovery.connected():
            for other in list(waiting):
                if not woken[other]:
                    woken[other] = True
                    del waiting[other]
                    book(other, now)
    return max(up_at.values()) - outage_s, max(per_second.values())


@pytest.mark.parametrize("chargers", [10, 100, 1000])
@pytest.mark.parametrize("outage_s", [65.0, 3600.0, 6 * 3600.0 + 17])
def test_every_link_back_within_the_bound_after_any_outage(chargers: int, outage_s: float) -> None:
    back_s, peak = _simulate(chargers, outage_s, rate=50.0, seed=chargers)
    assert back_s <= 5.0 + chargers / 50.0  # design.md: 5 s + chargers / max_connects_per_s
    assert peak <= 51
