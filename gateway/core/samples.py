"""Observed charger CALLs shown at most once a second per key (part of
:class:`gateway.core.relay.ChargerRelay`).

A charger sends a meter reading every few seconds per connector, and statuses that often repeat;
the depot view needs only the latest of each (:func:`gateway.core.depot.sample_key`). Showing
every one costs an event, its dispatch and a fold per relayed frame. Here the first CALL of a key
is shown at once and a later one within ``every_s`` is held, replacing an older held one of its
key; held CALLs are shown by the next ``tick`` after that, before the next event the relay
produces for this charger (so the order of what is shown is the order the charger sent it), or
when the charger leaves. The last reading is never dropped, only shown up to ``every_s`` late,
with the time it came.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final

from gateway.core.depot import sample_key
from gateway.core.events import ChargerCallSeen, RelayEvent, RelayOutput
from gateway.ocpp.frames import Call, OcppVersion

__all__ = ["MAX_SAMPLE_KEYS", "SampledCalls"]

MAX_SAMPLE_KEYS: Final = 64  # per charger: (action, connector, transaction) keys rate-limited


class SampledCalls:
    """The held CALLs of one charger (the latest per key, oldest first, each with its time) and
    per key the time before which another one is held."""

    __slots__ = ("_due", "_events", "every_s", "held")

    def __init__(self, output: RelayOutput, *, every_s: float) -> None:
        self._events = output.events
        self.every_s = every_s
        self.held: dict[Hashable, tuple[list[Any], float]] = {}
        self._due: dict[Hashable, float] = {}  # never holds None: None is not sampled

    def add(self, version: OcppVersion, raw: list[Any], now: float) -> None:
        """A CALL of a sampled action (``[2, id, action, {payload}]``, checked)."""
        key = sample_key(version, raw[2], raw[3])
        due = self._due.get(key, 0.0)
        # Held only while no event waits: held CALLs are then older than every event the driver
        # has not taken, and ``take_before`` puts them first.
        if now < due and not self._events:
            held = self.held
            if key in held:
                del held[key]  # the newer one takes the older one's place at the end
            held[key] = (raw, now)
            return
        if key is not None:
            if due == 0.0 and len(self._due) >= MAX_SAMPLE_KEYS:
                self._due.clear()  # only a rate limit: forgetting it shows one more
            self._due[key] = now + self.every_s
        self._events.append(ChargerCallSeen(Call(raw[1], raw[2], raw[3])))

    def deadline(self) -> float | None:
        """When ``tick`` shows the held CALLs, if any are held."""
        if not self.held:
            return None
        return min(self._due.get(key, 0.0) for key in self.held)

    def tick(self, now: float) -> None:
        """Show the held CALLs once one of them is due (the next of their keys waits again)."""
        held = self.held
        if held and any(now >= self._due.get(key, 0.0) for key in held):
            for key in held:
                self._due[key] = now + self.every_s
            self._events[:0] = self.take()

    def take(self) -> list[RelayEvent]:
        """The held CALLs as events, oldest first; none is held after."""
        held = self.held
        taken: list[RelayEvent] = [
            ChargerCallSeen(Call(raw[1], raw[2], raw[3]), at) for raw, at in held.values()
        ]
        held.clear()
        return taken
