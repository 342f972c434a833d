"""The charger's CALLs forwarded live to the cloud and their deadlines (part of
:class:`gateway.core.relay.ChargerRelay`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from gateway.core.events import Answered, RelayOutput, SaveBoot
from gateway.core.limits import LimitedLog
from gateway.ocpp.frames import Call, CallError, CallResult

__all__ = ["PendingCalls"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    call: Call
    deadline: float


class PendingCalls:
    """The charger's CALLs forwarded live to the cloud, each waiting for the cloud's answer until
    its deadline (``call_timeout_s`` after it was sent: upstream.call_timeout_s)."""

    __slots__ = (
        "_charger_id",
        "_errors",
        "_events",
        "_lines",
        "_observe_answer_s",
        "_observed_answers",
        "_table",
        "_timeout_s",
        "_to_charger",
        "_to_cloud",
    )

    def __init__(
        self,
        charger_id: str,
        output: RelayOutput,
        *,
        call_timeout_s: float,
        observed_answers: frozenset[str] = frozenset(),
        observe_answer_s: Callable[[float], None] | None = None,
        errors: Counter[str],
    ) -> None:
        self._charger_id = charger_id
        self._to_charger = output.to_charger
        self._to_cloud = output.to_cloud
        self._events = output.events
        self._lines = LimitedLog(log, output.log_limit, charger_id)
        self._timeout_s = call_timeout_s
        self._observed_answers = observed_answers  # charger CALLs whose CALLRESULT is an event
        # Told how long the cloud took to answer each live CALL (a histogram's observe).
        self._observe_answer_s = observe_answer_s
        self._errors = errors
        self._table: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._table)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._table)

    def deadlines(self) -> list[float]:
        return [p.deadline for p in self._table.values()]

    def forward(self, call: Call, text: str, now: float) -> None:
        """Send ``call`` to the cloud; its answer is awaited until ``now + call_timeout_s``."""
        self._table[call.message_id] = _Pending(call, now + self._timeout_s)
        if call.action == "BootNotification":
            self._events.append(SaveBoot(call))
        self._to_cloud.append(text)

    def answered(
        self, frame: CallResult | CallError, text: str, now: float, charger_connected: bool
    ) -> None:
        """The cloud's answer to a pending CALL goes to the charger if it is still there; an
        answer to an id not pending (e.g. after its timeout) is dropped."""
        pending = self._table.pop(frame.message_id, None)
        if pending is None:
            log.info(
                "%s: dropping cloud answer to unknown id %s", self._charger_id, frame.message_id
            )
            return
        if charger_connected:
            self._to_charger.append(text)
        if self._observe_answer_s is not None:
            self._observe_answer_s(now - pending.deadline + self._timeout_s)
        if type(frame) is CallResult and pending.call.action in self._observed_answers:
            self._events.append(Answered(pending.call, frame.payload, by_cloud=True))

    def expire(self, now: float) -> list[Call]:
        """The CALLs whose deadline passed by ``now``, in the order they were sent; they are no
        longer pending (the relay answers them locally)."""
        table = self._table
        if not table:
            return []
        expired = [p for p in table.values() if p.deadline <= now]
        for pending in expired:
            del table[pending.call.message_id]
            self._errors["cloud_call_timeout"] += 1
            call = pending.call
            self._lines.warning(
                now,
                "cloud did not answer in time",
                "%s %s; answered locally",
                call.action,
                call.message_id,
            )
        return [p.call for p in expired]

    def take_all(self) -> list[Call]:
        """Every pending CALL, in the order they were sent (the link is gone: none is pending)."""
        table, self._table = self._table, {}
        return [p.call for p in table.values()]
