"""The gateway's own CALLs to one charger: a future per CALL, settled by the core's events.

The relay core queues a gateway-originated CALL behind the charger's single slot (OCPP-J 1.6
§4.1.1: one outstanding CALL), times it out and reports its end: ``ChargerAnswered`` with origin
``"gateway"``, or ``ChargerCallFailed`` (timeout, charger gone). This driver keeps the awaiting
caller's future for each and settles it; a caller that gives up cancels a CALL not yet sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from gateway.core import events as ev
from gateway.core.relay import ChargerRelay
from gateway.errors import ChargerNotConnected, ChargerQueueFull, ChargerTimeout
from gateway.ocpp.frames import CallError, CallResult

__all__ = ["CallsOwner", "ChargerCalls"]


class CallsOwner(Protocol):
    """What this driver needs from its session."""

    @property
    def connected(self) -> bool: ...

    def flush(self) -> None:
        """Send what the core produced and carry out its events."""
        ...


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # the outcome is the awaiting code's; never "never retrieved"


class ChargerCalls:
    """The futures of one charger's gateway-originated CALLs, by message id."""

    __slots__ = (
        "_futures",
        "_now",
        "_owner",
        "_relay",
    )

    def __init__(
        self, owner: CallsOwner, relay: ChargerRelay, *, clock: Callable[[], float]
    ) -> None:
        self._owner = owner
        self._relay = relay
        self._now = clock  # monotonic: the core's deadlines
        self._futures: dict[str, asyncio.Future[CallResult | CallError]] = {}

    async def call(
        self, action: str, payload: dict[str, Any], *, payload_text: str | None = None
    ) -> CallResult | CallError:
        """See :meth:`gateway.net.session.ChargerSession.call_charger`."""
        relay = self._relay
        if not self._owner.connected:
            raise ChargerNotConnected(relay.charger_id)
        try:
            message_id = relay.call_charger(action, payload, self._now(), payload_text=payload_text)
        except ChargerQueueFull:
            self._owner.flush()
            raise
        future: asyncio.Future[CallResult | CallError] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._futures[message_id] = future
        try:
            self._owner.flush()
            return await future
        except asyncio.CancelledError:  # the caller gave up (e.g. the HTTP client went away)
            relay.cancel_charger_call(message_id)  # not sent yet: never send it
            raise
        finally:
            del self._futures[message_id]

    def answered(self, event: ev.ChargerAnswered) -> None:
        """The charger answered one of the gateway's CALLs."""
        future = self._futures.get(event.call.message_id)
        if future is not None and not future.done():
            future.set_result(event.answer)

    def failed(self, event: ev.ChargerCallFailed) -> None:
        """One of the gateway's CALLs timed out or the charger went away."""
        future = self._futures.get(event.message_id)
        if future is not None and not future.done():
            charger_id = self._relay.charger_id
            future.set_exception(
                ChargerTimeout(f"{charger_id} did not answer {event.action}")
                if event.reason == "timeout"
                else ChargerNotConnected(charger_id)
            )
