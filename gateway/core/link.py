"""The state of one charger's link to the cloud, as one table.

Everything that decides whether the gateway relays a charger's CALL or answers it itself lives here.

::

    OFFLINE ──connecting──▶ CONNECTING ──connected(backlog)──▶ REPLAYING ──drained──▶ ONLINE
       ▲                        │   └──connected(no backlog)──────────────────────────▶ │
       └──────failed────────────┘                                                       │
       ▲                                                                                │
       └──────────────lost / call_timeout (from REPLAYING or ONLINE)────────────────────┘

Only ONLINE relays charger CALLs live. CONNECTING (the handshake, or waiting for its turn at the
connect pacer) holds a CALL briefly, at most ``net.link.CONNECTING_HOLD_S``; OFFLINE and REPLAYING
answer locally so that live messages queue behind the backlog and order is kept.
"""

from __future__ import annotations

import enum
from typing import Final

from gateway.errors import InvalidTransition

__all__ = ["Event", "InvalidTransition", "LinkState", "transition"]


class LinkState(enum.Enum):
    OFFLINE = "offline"
    CONNECTING = "connecting"
    REPLAYING = "replaying"
    ONLINE = "online"


class Event(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED_WITH_BACKLOG = "connected_with_backlog"
    CONNECTED = "connected"
    DRAINED = "drained"
    BACKLOG = "backlog"  # something was queued while online (e.g. a stored local answer)
    FAILED = "failed"
    LOST = "lost"
    CALL_TIMEOUT = "call_timeout"


S, E = LinkState, Event
_TABLE: Final[dict[tuple[LinkState, Event], LinkState]] = {
    (S.OFFLINE, E.CONNECTING): S.CONNECTING,
    (S.CONNECTING, E.CONNECTED): S.ONLINE,
    (S.CONNECTING, E.CONNECTED_WITH_BACKLOG): S.REPLAYING,
    (S.CONNECTING, E.FAILED): S.OFFLINE,
    (S.CONNECTING, E.LOST): S.OFFLINE,
    (S.REPLAYING, E.DRAINED): S.ONLINE,
    (S.REPLAYING, E.BACKLOG): S.REPLAYING,
    (S.REPLAYING, E.LOST): S.OFFLINE,
    (S.REPLAYING, E.CALL_TIMEOUT): S.OFFLINE,
    (S.ONLINE, E.BACKLOG): S.REPLAYING,
    (S.ONLINE, E.DRAINED): S.ONLINE,
    (S.ONLINE, E.LOST): S.OFFLINE,
    (S.ONLINE, E.CALL_TIMEOUT): S.OFFLINE,
    (S.OFFLINE, E.LOST): S.OFFLINE,
    (S.OFFLINE, E.FAILED): S.OFFLINE,
    (S.OFFLINE, E.CALL_TIMEOUT): S.OFFLINE,
    (S.OFFLINE, E.BACKLOG): S.OFFLINE,
    (S.CONNECTING, E.BACKLOG): S.CONNECTING,
    (S.CONNECTING, E.CALL_TIMEOUT): S.CONNECTING,
}


def transition(state: LinkState, event: Event) -> LinkState:
    """The state after ``event``; raise :class:`InvalidTransition` for an impossible pair."""
    try:
        return _TABLE[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{event.value} in state {state.value}") from None
