"""The charger's single inbound slot and the queue of CALLs waiting for it (part of
:class:`gateway.core.relay.ChargerRelay`)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final, Literal

from gateway.core.events import ChargerAnswered, ChargerCallFailed, RelayOutput
from gateway.core.limits import LimitedLog
from gateway.errors import ChargerQueueFull
from gateway.ocpp import frames
from gateway.ocpp.frames import Call, CallError, CallResult

__all__ = ["GATEWAY_ID_PREFIX", "ChargerSlot", "OutCall"]

log = logging.getLogger(__name__)

GATEWAY_ID_PREFIX: Final = "gw-"  # gateway-originated message ids; the cloud's never start so


@dataclass(slots=True)
class OutCall:
    """A CALL waiting for (or holding) the charger's slot."""

    call: Call
    text: str
    origin: Literal["cloud", "gateway"]
    timeout_s: float | None = None  # None: the slot's call_timeout_s
    deadline: float | None = None  # set when sent


class ChargerSlot:
    """The charger's single inbound slot and the queue of cloud and gateway CALLs waiting for it
    (OCPP-J 1.6 §4.1.1: one outstanding CALL), at most ``max_queued_calls`` of them. A CALL's
    ``call_timeout_s`` counts from when the charger got it, not from when it was queued.

    Nothing is queued while the charger is away: its relay queues only for a connected charger
    and calls ``fail_all`` when it goes."""

    __slots__ = (
        "_call_timeout_s",
        "_charger_id",
        "_errors",
        "_events",
        "_lines",
        "_max_queued",
        "_observed_answers",
        "_queue",
        "_to_charger",
        "current",
    )

    def __init__(
        self,
        charger_id: str,
        output: RelayOutput,
        *,
        max_queued_calls: int,
        call_timeout_s: float,
        observed_answers: frozenset[str] = frozenset(),
        errors: Counter[str],
    ) -> None:
        self._charger_id = charger_id
        self._max_queued = max_queued_calls
        self._call_timeout_s = call_timeout_s
        self._observed_answers = observed_answers  # cloud CALLs whose answer is an event
        self._errors = errors
        self._to_charger = output.to_charger
        self._events = output.events
        self._lines = LimitedLog(log, output.log_limit, charger_id)
        self.current: OutCall | None = None  # the CALL the charger holds, awaiting its answer
        # A list, not a deque: nearly always empty (an empty deque is ~740 bytes, a charger each),
        # and at most max_queued_calls long.
        self._queue: list[OutCall] = []

    @property
    def queued(self) -> int:
        """CALLs waiting for the slot (not counting the one in it)."""
        return len(self._queue)

    @property
    def deadline(self) -> float | None:
        """When the charger's time to answer the CALL in the slot runs out."""
        current = self.current
        return current.deadline if current is not None else None

    def enqueue(self, out: OutCall, now: float) -> bool:
        """Queue ``out`` (sent at once if the slot is free); False if the queue is full."""
        if self.current is not None and len(self._queue) >= self._max_queued:
            self._errors["charger_queue_full"] += 1
            return False
        self._queue.append(out)
        if self.current is None:
            self._pump(now)
        return True

    def call(
        self,
        message_id: str,
        action: str,
        payload: dict[str, Any],
        now: float,
        *,
        payload_text: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """Queue a gateway CALL; raise ChargerQueueFull if the queue is full."""
        text = (
            f'[{frames.CALL},"{message_id}",{frames.dumps(action)},{payload_text}]'
            if payload_text is not None
            else Call(message_id, action, payload).serialize()
        )
        out = OutCall(Call(message_id, action, payload), text, "gateway", timeout_s)
        if not self.enqueue(out, now):
            raise ChargerQueueFull(
                f"charger queue full: {len(self._queue)} CALLs already wait for {self._charger_id}"
            )

    def cancel(self, message_id: str) -> bool:
        """A CALL not yet sent is never sent; True if it was still queued."""
        for out in self._queue:
            if out.call.message_id == message_id:
                self._queue.remove(out)
                return True
        return False

    def answered(
        self, frame: CallResult | CallError, text: str, now: float, to_cloud: list[str] | None
    ) -> None:
        """A CALLRESULT or CALLERROR from the charger: the answer to the CALL in the slot frees it
        (a cloud CALL's answer goes on to ``to_cloud``, None while the cloud is away); any other
        is a late answer (after its timeout), passed on unchanged unless its id is the gateway's."""
        out = self.current
        if out is not None and out.call.message_id == frame.message_id:
            if out.origin == "gateway":
                self._events.append(ChargerAnswered(out.call, frame, "gateway"))
            else:
                if to_cloud is not None:
                    to_cloud.append(text)
                if out.call.action in self._observed_answers:
                    self._events.append(ChargerAnswered(out.call, frame, "cloud"))
            self.current = None
            self._pump(now)
        elif to_cloud is not None and not frame.message_id.startswith(GATEWAY_ID_PREFIX):
            to_cloud.append(text)

    def fail_all(self) -> None:
        """The charger's connection is gone: the slot and the queue are emptied, and each gateway
        CALL among them fails (a cloud CALL's answer simply never comes)."""
        outs = ([self.current] if self.current is not None else []) + list(self._queue)
        self.current = None
        self._queue.clear()
        for out in outs:
            if out.origin == "gateway":
                self._events.append(
                    ChargerCallFailed(out.call.message_id, out.call.action, "not_connected")
                )

    def tick(self, now: float) -> None:
        """Free the slot if the charger's time to answer ran out by ``now``."""
        out = self.current
        if out is not None and out.deadline is not None and out.deadline <= now:
            self.current = None
            self._errors["charger_call_timeout"] += 1
            call = out.call
            self._lines.warning(
                now, "no answer from charger", "%s %s", call.action, call.message_id
            )
            if out.origin == "gateway":
                self._events.append(
                    ChargerCallFailed(out.call.message_id, out.call.action, "timeout")
                )
            self._pump(now)

    def _pump(self, now: float) -> None:
        """Send the next queued CALL if the slot is free (one outstanding CALL)."""
        if self.current is not None or not self._queue:
            return
        out = self._queue.pop(0)
        # chargers.call_timeout_s counts from now, when the charger gets it, not from queueing.
        timeout_s = self._call_timeout_s if out.timeout_s is None else out.timeout_s
        out.deadline = now + timeout_s
        self.current = out
        self._to_charger.append(out.text)
