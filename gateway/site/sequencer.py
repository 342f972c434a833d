"""The sequencer: targets → the cap changes to send now, so that the counted sum never exceeds the
limit. Pure: the state is a mapping of frozen :class:`Slot` values, time is passed in.

Accounting (what a charger *counts* at, :attr:`Slot.counted_a`):

- its maximum until it has accepted a cap, and while it is unmanaged (it refused a cap or did not
  answer within ``chargers.call_timeout_s``; asked again after :data:`RETRY_S` and on reconnect);
- the last cap it accepted otherwise, also while disconnected from the gateway (it still holds it:
  1.6 §3.13.6, 2.0.1 K01.FR.27 profiles persist);
- while a cap is in flight, the higher of that and the above (the charger may apply it before
  its answer arrives).

Sequencing (:func:`plan`): a change that does not raise a charger's count (a decrease, a first cap,
a cap sent again) goes at once; an increase goes only when the counted sum with it stays within
the limit, so every decrease it depends on has been *accepted* first (a decrease in flight still
counts at the old cap). Each charger has one CALL in flight at most (OCPP-J: one outstanding
CALL). Answers come back through :func:`answered`.

After release (``guard``) every charger holding a cap gets ``ClearChargingProfile``; one refused
or unanswered is sent again when that charger next connects.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

__all__ = [
    "RETRY_S",
    "Answer",
    "Change",
    "Clear",
    "Slot",
    "answered",
    "connected",
    "counted_sum",
    "disconnected",
    "engage",
    "fixed_a",
    "follow_cloud",
    "forget",
    "plan",
    "record",
    "release",
    "restore",
]

RETRY_S: Final = (
    60.0  # an unmanaged charger is asked again this long after it refused or was silent
)


class Answer(enum.Enum):
    ACCEPTED = "accepted"  # SetChargingProfile Accepted; ClearChargingProfile Accepted or Unknown
    REJECTED = "rejected"  # Rejected, NotSupported, a CALLERROR or an answer breaking the schema
    TIMEOUT = "timeout"  # no answer within chargers.call_timeout_s, or the charger went away


class Clear(enum.Enum):
    NONE = "none"
    DUE = "due"  # send when the charger is connected and its slot is free
    ON_CONNECT = "on_connect"  # refused or unanswered: send again when it next connects


@dataclass(frozen=True, slots=True)
class Slot:
    """What the gateway knows of one charger's station-wide cap."""

    max_a: int
    connected: bool = True
    accepted_a: int | None = None  # the cap it last accepted; None: none (or cleared)
    sent_a: int | None = None  # a cap in flight
    clearing: bool = False  # a Clear in flight
    unmanaged_until: float | None = None  # refused or silent: counted at max, asked again then
    resend: bool = False  # its cap again before anything else (reconnect, the cloud touched it)
    clear: Clear = Clear.NONE

    @property
    def busy(self) -> bool:
        return self.sent_a is not None or self.clearing

    @property
    def holds(self) -> bool:
        """It may hold the gateway's profile (accepted, in flight, or unknown after silence)."""
        return self.accepted_a is not None or self.busy or self.unmanaged_until is not None

    @property
    def counted_a(self) -> int:
        if self.unmanaged_until is not None or self.accepted_a is None:
            return self.max_a
        if self.sent_a is not None:
            return max(self.accepted_a, self.sent_a)
        return self.accepted_a


@dataclass(frozen=True, slots=True)
class Change:
    """One CALL to send: a cap (``cap_a``) or, when ``cap_a`` is None, the Clear of the cap."""

    charger: str
    cap_a: int | None


Slots = Mapping[str, Slot]


def counted_sum(slots: Slots) -> int:
    """The site's counted current: every charger the gateway knows, connected or not."""
    return sum(slot.counted_a for slot in slots.values())


def fixed_a(slot: Slot, now: float) -> int | None:
    """What a charger the gateway cannot change now counts at (for ``allocation.Station.fixed_a``).

    Disconnected, or unmanaged and not yet due to be asked again; otherwise None.
    """
    waiting = slot.unmanaged_until is not None and now < slot.unmanaged_until
    return slot.counted_a if not slot.connected or waiting else None


def plan(
    slots: Slots, targets: Mapping[str, int], limit_a: int, now: float, *, engaged: bool
) -> tuple[dict[str, Slot], list[Change]]:
    """The changes to send now, and the slots with them in flight.

    ``targets`` in priority order (increases are tried in that order). Released: only Clears.
    """
    state = dict(slots)
    changes: list[Change] = []
    free = [cid for cid, s in state.items() if s.connected and not s.busy]
    if not engaged:
        for cid in free:
            if state[cid].clear is Clear.DUE:
                state[cid] = replace(state[cid], clearing=True)
                changes.append(Change(cid, None))
        return state, changes
    total = counted_sum(state)
    increases: list[tuple[str, int]] = []
    for cid in targets:
        slot = state.get(cid)
        if slot is None or not slot.connected or slot.busy:
            continue
        if slot.unmanaged_until is not None and now < slot.unmanaged_until:
            continue
        cap = max(0, min(targets[cid], slot.max_a))
        if slot.resend and slot.accepted_a is not None:
            cap = min(cap, slot.accepted_a)  # its cap again first, never more than it held
        fresh = slot.accepted_a is None or slot.unmanaged_until is not None or slot.resend
        if cap == slot.accepted_a and not fresh:
            continue
        if cap <= slot.counted_a:
            state[cid] = replace(slot, sent_a=cap)  # counts unchanged until it is accepted
            changes.append(Change(cid, cap))
        else:
            increases.append((cid, cap))
    for cid, cap in increases:
        slot = state[cid]
        raised = cap - slot.counted_a
        if total + raised <= limit_a:
            total += raised
            state[cid] = replace(slot, sent_a=cap)
            changes.append(Change(cid, cap))
    return state, changes


def answered(slots: Slots, charger: str, answer: Answer, now: float) -> dict[str, Slot]:
    """The slots after the charger's answer to the change in flight (if any)."""
    state = dict(slots)
    slot = state.get(charger)
    if slot is None:
        return state
    if slot.clearing:
        if answer is Answer.ACCEPTED:
            state[charger] = replace(
                slot, clearing=False, accepted_a=None, unmanaged_until=None, clear=Clear.NONE
            )
        else:
            state[charger] = replace(slot, clearing=False, clear=Clear.ON_CONNECT)
    elif slot.sent_a is not None:
        if answer is Answer.ACCEPTED:
            state[charger] = replace(
                slot, accepted_a=slot.sent_a, sent_a=None, unmanaged_until=None, resend=False
            )
        else:
            state[charger] = replace(slot, sent_a=None, unmanaged_until=now + RETRY_S)
    return state


def connected(slots: Slots, charger: str, max_a: int, now: float) -> dict[str, Slot]:
    """A charger (re)connected: a new one counts at ``max_a``; a known one gets its cap again
    first, an unmanaged one is asked again at once, a pending Clear becomes due."""
    state = dict(slots)
    slot = state.get(charger)
    if slot is None:
        state[charger] = Slot(max_a=max_a)
        return state
    slot = replace(slot, connected=True, max_a=max_a, resend=slot.accepted_a is not None)
    if slot.unmanaged_until is not None:
        slot = replace(slot, unmanaged_until=now)
    if slot.clear is Clear.ON_CONNECT:
        slot = replace(slot, clear=Clear.DUE)
    state[charger] = slot
    return state


def disconnected(slots: Slots, charger: str, now: float) -> dict[str, Slot]:
    """A charger left: what was in flight gets no answer (a timeout)."""
    state = dict(slots)
    slot = state.get(charger)
    if slot is None:
        return state
    if slot.busy:
        state = answered(state, charger, Answer.TIMEOUT, now)
        slot = state[charger]
    state[charger] = replace(slot, connected=False)
    return state


def follow_cloud(slots: Slots, charger: str) -> dict[str, Slot]:
    """The cloud set or cleared a station maximum on this charger: send the gateway's cap again."""
    state = dict(slots)
    slot = state.get(charger)
    if slot is not None and slot.accepted_a is not None:
        state[charger] = replace(slot, resend=True)
    return state


def engage(slots: Slots) -> dict[str, Slot]:
    """Engaged: Clears not yet sent are dropped (the caps are set again)."""
    return {cid: replace(s, clear=Clear.NONE) for cid, s in slots.items()}


def release(slots: Slots) -> dict[str, Slot]:
    """Released: every charger that may hold the gateway's cap is due a Clear."""
    return {
        cid: replace(s, clear=Clear.DUE if s.holds else Clear.NONE, resend=False)
        for cid, s in slots.items()
    }


def forget(slots: Slots, chargers: Iterable[str]) -> dict[str, Slot]:
    """Drop chargers the gateway no longer tracks (no cap held, nothing due)."""
    gone = set(chargers)
    return {cid: s for cid, s in slots.items() if cid not in gone}


def record(slot: Slot) -> dict[str, Any]:
    """What survives a restart: the cap the charger holds and whether it is owed a Clear.

    A cap in flight is recorded as unanswered (the gateway cannot know whether it was applied).
    """
    return {
        "maxA": slot.max_a,
        "acceptedA": slot.accepted_a,
        "unmanaged": slot.unmanaged_until is not None or slot.sent_a is not None,
        # A Clear in flight is sent again when the charger connects.
        "clear": Clear.ON_CONNECT.value if slot.clearing else slot.clear.value,
    }


def restore(data: Mapping[str, Any]) -> Slot:
    """A :func:`record` read back after a restart: the charger not connected yet (it counts at
    the cap it accepted, or its maximum), an unmanaged one asked again when it connects.

    Raise ``ValueError`` naming the field for a record that is not one.
    """
    max_a, accepted, unmanaged = data.get("maxA"), data.get("acceptedA"), data.get("unmanaged")
    if isinstance(max_a, bool) or not isinstance(max_a, int) or max_a < 0:
        raise ValueError(f"maxA: not a current: {max_a!r}")
    if accepted is not None and (
        isinstance(accepted, bool) or not isinstance(accepted, int) or accepted < 0
    ):
        raise ValueError(f"acceptedA: not a current: {accepted!r}")
    if not isinstance(unmanaged, bool):
        raise ValueError(f"unmanaged: not a boolean: {unmanaged!r}")
    try:
        clear = Clear(data.get("clear"))
    except ValueError:
        raise ValueError(f"clear: unknown value {data.get('clear')!r}") from None
    return Slot(
        max_a=max_a,
        connected=False,
        accepted_a=accepted,
        unmanaged_until=0.0 if unmanaged else None,
        clear=clear,
    )
