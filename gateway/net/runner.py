"""The driver of gateway-originated CALL programs (:mod:`gateway.core.program`).

One :class:`CallRunner` moves any feature's :class:`~gateway.core.program.Planner` through a
charger's one CALL slot: each :class:`~gateway.core.program.Request` goes through
``ChargerSession.call_charger`` (the queue the cloud's CALLs and every other feature share; the
relay core times it out after ``chargers.call_timeout_s`` from when the charger got it), waits
its share of the runner's pacing budget first, and comes back as a
:class:`~gateway.core.program.Reply`: a CALLRESULT only once it is valid against the action's
response schema (``gateway.ocpp.validation``), so a planner never reads a malformed answer.
``after`` runs after each answer and before the next CALL: where a feature persists its
progress.

Ordering: a program's first CALL is queued in the first step of its task, before any await
(unless pacing makes it wait), so programs started one after another in the same loop turn queue
their first CALLs in that order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gateway.core.program import Planner, Reply, ReplyKind, Request
from gateway.errors import ChargerNotConnected, ChargerQueueFull, ChargerTimeout, FrameError
from gateway.ocpp.frames import CallError, CallResult, OcppVersion
from gateway.ocpp.validation import validate_result

__all__ = ["CallRunner", "CallTarget"]


class CallTarget(Protocol):
    """What the runner needs of a charger's session."""

    @property
    def charger_id(self) -> str: ...
    @property
    def version(self) -> OcppVersion: ...

    async def call_charger(
        self, action: str, payload: dict[str, Any], *, payload_text: str | None = None
    ) -> CallResult | CallError: ...


After = Callable[[Request, Reply], Awaitable[None]]


class CallRunner:
    """Sends programs' CALLs, paced by one budget of ``per_s`` request weights a second over
    every charger (None: unpaced)."""

    __slots__ = ("_clock", "_paced_until", "_per_s")

    def __init__(self, *, per_s: float | None = None, clock: Callable[[], float] | None = None):
        self._per_s = per_s
        self._clock = clock
        self._paced_until = 0.0  # the clock time the weights already sent are paid for

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def pace(self, weight: int) -> None:
        """Wait for ``weight``'s share of the budget."""
        if self._per_s is None or weight <= 0:
            return
        now = self._now()
        start = max(now, self._paced_until)
        self._paced_until = start + weight / self._per_s
        if start > now:
            await asyncio.sleep(start - now)

    async def answer(self, target: CallTarget, request: Request) -> CallResult | CallError:
        """Send one request (unpaced) and return its answer, a CALLRESULT only once it is valid
        against the action's response schema.

        Raises ChargerTimeout, ChargerNotConnected or ChargerQueueFull (see
        ``ChargerSession.call_charger``), and FrameError for an answer breaking the schema.
        """
        answer = await target.call_charger(
            request.action, request.payload, payload_text=request.text
        )
        if isinstance(answer, CallResult):
            validate_result(target.version, request.action, answer.payload, answer.message_id)
        return answer

    async def call(self, target: CallTarget, request: Request) -> Reply:
        """Send one request, paced, and return what became of it (never raises for the
        charger's part)."""
        await self.pace(request.weight)
        return await self.reply(target, request)

    async def reply(self, target: CallTarget, request: Request) -> Reply:
        """:meth:`call` without the pacing."""
        try:
            answer = await self.answer(target, request)
        except ChargerTimeout:
            return Reply(ReplyKind.TIMEOUT)
        except ChargerNotConnected:
            return Reply(ReplyKind.GONE)
        except ChargerQueueFull:
            return Reply(ReplyKind.QUEUE_FULL)
        except FrameError as exc:
            return Reply(ReplyKind.INVALID, error=exc.description)
        if isinstance(answer, CallError):
            return Reply(ReplyKind.ERROR, error=answer.code)
        return Reply(ReplyKind.RESULT, payload=answer.payload)

    async def run(
        self,
        target: CallTarget,
        planner: Planner,
        *,
        after: After | None = None,
        before: Callable[[Request], bool] | None = None,
    ) -> int:
        """Run ``planner`` to its end on ``target``; the number of CALLs sent.

        ``before`` is asked right before each CALL is queued (after its pacing), with no await
        between: False ends the program there, that CALL unsent.
        """
        sent = 0
        while (request := planner.next_request()) is not None:
            await self.pace(request.weight)
            if before is not None and not before(request):
                break
            reply = await self.reply(target, request)
            sent += reply.kind is not ReplyKind.QUEUE_FULL
            planner.answered(request, reply)
            if after is not None:
                await after(request, reply)
        return sent
