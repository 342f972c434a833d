"""A depot through a one-hour outage on a fake clock: 50 simulated chargers and their vehicles
under the site guard's pure core (bench/site_depot.py), the site draw sampled every second."""

from __future__ import annotations

from bench.site_depot import run


def test_an_hour_of_outage_stays_under_the_limit_and_uses_it() -> None:
    figures = run(chargers=50, limit_a=400, outage_s=3600, seed=1)
    assert figures.sessions > 50  # vehicles came and went during the hour
    assert figures.short_seconds > 3000  # the vehicles wanted more than the limit most of it
    assert figures.seconds_over_engaged == 0
    assert figures.counted_over_engaged == 0
    assert figures.utilisation >= 0.95
    assert figures.caps_left == 0  # released after the cloud came back: every cap cleared


def test_chargers_refusing_every_cap_are_counted_at_their_maximum_and_never_overload() -> None:
    figures = run(chargers=50, limit_a=400, outage_s=900, refusing=3, seed=2)
    assert figures.seconds_over_engaged == 0
    assert figures.caps_left == 0


def test_the_engage_delay_is_the_one_window_and_mode_always_closes_it() -> None:
    # Seed 1: a 32 A vehicle plugs in 2 s into the outage, before the guard engages (10 s).
    offline = run(chargers=50, limit_a=400, outage_s=600, seed=1)
    assert offline.seconds_over > 0 and offline.seconds_over_engaged == 0
    always = run(chargers=50, limit_a=400, outage_s=600, seed=1, mode="always")
    assert always.seconds_over == 0
