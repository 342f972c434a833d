"""The charger's CALLs forwarded live to the cloud and their deadlines (part of
:class:`gateway.core.relay.ChargerRelay`)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from gateway.core.events import Answered, RelayOutput, SaveBoot
from gateway.core.limits import LimitedLog
from gateway.ocpp.frames import CALLRESULT, Call

__all__ = ["PendingCalls"]

log = logging.getLogger(__name__)


class PendingCalls:
    """The charger's CALLs forwarded live to the cloud, each waiting for the cloud's answer until
    its deadline (``call_timeout_s`` after it was sent: upstream.call_timeout_s).

    Each is kept as the JSON array it came in (``[2, id, action, {payload}]``, from
    :func:`gateway.ocpp.frames.check`) with the time it was sent: the :class:`Call` value is
    made only for the few that need it (an answer shown, a timeout, a lost link)."""

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
        self._table: dict[str, tuple[list[Any], float]] = {}  # id → (CALL array, sent at)

    def __len__(self) -> int:
        return len(self._table)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(self._table)

    def deadlines(self) -> list[float]:
        timeout_s = self._timeout_s
        return [sent + timeout_s for _, sent in self._table.values()]

    def forward(self, call: list[Any], text: str, now: float) -> None:
        """Send ``call`` (``[2, id, action, {payload}]``) to the cloud; its answer is awaited
        until ``now + call_timeout_s``."""
        self._table[call[1]] = (call, now)
        if call[2] == "BootNotification":
            self._events.append(SaveBoot(Call(call[1], call[2], call[3])))
        self._to_cloud.append(text)

    def answered(self, answer: list[Any], text: str, now: float, charger_connected: bool) -> None:
        """The cloud's answer (a CALLRESULT or CALLERROR array) to a pending CALL goes to the
        charger if it is still there; an answer to an id not pending (e.g. after its timeout)
        is dropped."""
        pending = self._table.pop(answer[1], None)
        if pending is None:
            log.info("%s: dropping cloud answer to unknown id %s", self._charger_id, answer[1])
            return
        if charger_connected:
            self._to_charger.append(text)
        call, sent = pending
        if self._observe_answer_s is not None:
            self._observe_answer_s(now - sent)
        if answer[0] == CALLRESULT and call[2] in self._observed_answers:
            self._events.append(Answered(Call(call[1], call[2], call[3]), answer[2], by_cloud=True))

    def expire(self, now: float) -> list[Call]:
        """The CALLs whose deadline passed by ``now``, in the order they were sent; they are no
        longer pending (the relay answers them locally)."""
        table = self._table
        if not table:
            return []
        timeout_s = self._timeout_s
        expired = [call for call, sent in table.values() if sent + timeout_s <= now]
        for call in expired:
            del table[call[1]]
            self._errors["cloud_call_timeout"] += 1
            self._lines.warning(
                now, "cloud did not answer in time", "%s %s; answered locally", call[2], call[1]
            )
        return [Call(c[1], c[2], c[3]) for c in expired]

    def take_all(self) -> list[Call]:
        """Every pending CALL, in the order they were sent (the link is gone: none is pending)."""
        table, self._table = self._table, {}
        return [Call(c[1], c[2], c[3]) for c, _ in table.values()]
