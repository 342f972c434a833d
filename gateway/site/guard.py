"""Engaged or released: the site guard's own state, as one table.

::

    DISABLED ──limit set──▶ RELEASED ───────DOWN_LONG──────▶ ENGAGED
    (max_current_a = 0)        ▲         (caps are set)          │
                               └────────────UP_LONG──────────────┘
                                  (Clear to every held cap)

    RELEASED stays on BETWEEN and UP_LONG; ENGAGED stays on BETWEEN and DOWN_LONG;
    every state goes to DISABLED when the limit is 0.

The condition is read from the connected chargers' cloud links (:func:`condition`):

- ``DOWN_LONG``: mode ``always``; or a connected charger's link has been down — or not yet up —
  for ``engage_after_s``.
- ``UP_LONG``: every connected charger's link has been up for ``release_after_s`` (also when no
  charger is connected: chargers disconnected from the gateway do not keep it engaged).
- ``BETWEEN``: neither; the state stays as it is (the two delays are the hysteresis).

Released → engaged: the allocation runs and caps are sent. Engaged → released: ``engaged`` turns
false at once and every charger holding the gateway's cap gets ``ClearChargingProfile``
(``sequencer.release``). OCPP 2.1 Part 2 K26 describes this role: the local part of a hybrid
EMS "acts as a fail-safe protection against overloading the local grid connection".
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["Condition", "GuardState", "Link", "condition", "step"]


class GuardState(enum.Enum):
    DISABLED = "disabled"  # site.max_current_a = 0
    RELEASED = "released"
    ENGAGED = "engaged"


class Condition(enum.Enum):
    DOWN_LONG = "down_long"
    UP_LONG = "up_long"
    BETWEEN = "between"


@dataclass(frozen=True, slots=True)
class Link:
    """One connected charger's cloud link: up or not, since when (the driver's clock)."""

    up: bool
    since: float  # when it went up, or down (or the charger connected without a link)


G, C = GuardState, Condition
_TABLE: Final[dict[tuple[GuardState, Condition], GuardState]] = {
    (G.RELEASED, C.DOWN_LONG): G.ENGAGED,
    (G.RELEASED, C.BETWEEN): G.RELEASED,
    (G.RELEASED, C.UP_LONG): G.RELEASED,
    (G.ENGAGED, C.DOWN_LONG): G.ENGAGED,
    (G.ENGAGED, C.BETWEEN): G.ENGAGED,
    (G.ENGAGED, C.UP_LONG): G.RELEASED,
}


def condition(
    links: Iterable[Link],
    now: float,
    *,
    mode: Literal["offline", "always"],
    engage_after_s: float,
    release_after_s: float,
) -> Condition:
    """The condition the connected chargers' links are in at ``now``."""
    if mode == "always":
        return C.DOWN_LONG
    every_up_long = True
    for link in links:
        if not link.up and now - link.since >= engage_after_s:
            return C.DOWN_LONG
        if not link.up or now - link.since < release_after_s:
            every_up_long = False
    return C.UP_LONG if every_up_long else C.BETWEEN


def step(state: GuardState, cond: Condition, *, max_current_a: int) -> GuardState:
    """The state after ``cond``; DISABLED whenever the limit is 0, RELEASED when it is set again."""
    if max_current_a <= 0:
        return G.DISABLED
    if state is G.DISABLED:
        state = G.RELEASED
    return _TABLE[(state, cond)]
