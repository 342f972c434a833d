"""Engaged/released: the table, the conditions from the links, and every pair of the table."""

from __future__ import annotations

import pytest

from gateway.site.guard import Condition, GuardState, Link, condition, step

G, C = GuardState, Condition
TIMES = {"engage_after_s": 10.0, "release_after_s": 60.0}


def cond(*links: Link, now: float = 1000.0, mode: str = "offline") -> Condition:
    return condition(links, now, mode=mode, **TIMES)  # type: ignore[arg-type]


def test_a_link_down_for_engage_after_s_engages() -> None:
    assert cond(Link(up=False, since=995.0)) is C.BETWEEN  # down 5 s
    assert cond(Link(up=False, since=990.0)) is C.DOWN_LONG  # down 10 s
    # One charger down long enough is enough, whatever the others do.
    assert cond(Link(up=True, since=0.0), Link(up=False, since=900.0)) is C.DOWN_LONG


def test_every_link_up_for_release_after_s_releases() -> None:
    assert cond(Link(up=True, since=940.0), Link(up=True, since=0.0)) is C.UP_LONG
    assert cond(Link(up=True, since=941.0), Link(up=True, since=0.0)) is C.BETWEEN
    assert cond(Link(up=True, since=0.0), Link(up=False, since=999.0)) is C.BETWEEN


def test_no_connected_charger_keeps_it_engaged() -> None:
    assert cond() is C.UP_LONG


def test_mode_always_is_engaged_whatever_the_links() -> None:
    assert cond(Link(up=True, since=0.0), mode="always") is C.DOWN_LONG
    assert step(G.RELEASED, cond(mode="always"), max_current_a=100) is G.ENGAGED


@pytest.mark.parametrize(
    ("state", "condition_", "after"),
    [
        (G.RELEASED, C.DOWN_LONG, G.ENGAGED),
        (G.RELEASED, C.BETWEEN, G.RELEASED),
        (G.RELEASED, C.UP_LONG, G.RELEASED),
        (G.ENGAGED, C.DOWN_LONG, G.ENGAGED),
        (G.ENGAGED, C.BETWEEN, G.ENGAGED),
        (G.ENGAGED, C.UP_LONG, G.RELEASED),
        (G.DISABLED, C.DOWN_LONG, G.ENGAGED),
        (G.DISABLED, C.UP_LONG, G.RELEASED),
    ],
)
def test_the_table(state: GuardState, condition_: Condition, after: GuardState) -> None:
    assert step(state, condition_, max_current_a=100) is after


@pytest.mark.parametrize("state", list(GuardState))
def test_limit_0_disables(state: GuardState) -> None:
    assert step(state, C.DOWN_LONG, max_current_a=0) is G.DISABLED


def test_an_outage_engages_then_a_recovery_releases_with_hysteresis() -> None:
    state = G.RELEASED
    timeline = []
    for t in range(0, 200, 5):
        # The cloud is unreachable from t=20 to t=80.
        up = not 20 <= t < 80
        since = 80.0 if t >= 80 else (20.0 if t >= 20 else 0.0)
        state = step(state, cond(Link(up=up, since=since), now=float(t)), max_current_a=100)
        timeline.append((t, state))
    engaged = [t for t, s in timeline if s is G.ENGAGED]
    assert engaged[0] == 30  # down 10 s
    assert engaged[-1] == 135  # up for 60 s releases at 140
    assert engaged == list(range(30, 140, 5))
