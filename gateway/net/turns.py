"""The hub's handshake turns: links queue for a place among the handshakes in flight.

The pure :class:`~gateway.core.pacer.HandshakePacer` decides who may start and when; this driver
keeps the queue of waiting links (futures), hands out turns in arrival order when the pacer
allows (a timer under a rate cap), and frees the places of turns whose end was reported, or
whose lease ran out.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable

from gateway.core.backoff import Recovery
from gateway.core.pacer import HandshakePacer, Outcome

__all__ = ["HandshakeTurns"]

log = logging.getLogger(__name__)


class HandshakeTurns:
    """Turns to start an upstream handshake, shared by every link of one gateway."""

    def __init__(
        self, pacer: HandshakePacer, recovery: Recovery, loop_time: Callable[[], float]
    ) -> None:
        self.pacer = pacer
        self._recovery = recovery
        self._loop_time = loop_time
        self._turns: deque[asyncio.Future[None]] = deque()  # links waiting to start a handshake
        self._granted: dict[asyncio.Future[None], int] = {}  # turns in their handshake -> ticket
        self._turn_timer: asyncio.TimerHandle | None = None

    def eta_s(self) -> float:
        """How long a link asking for its handshake turn now would wait for it."""
        return self.pacer.wait_estimate_s(len(self._turns), self._loop_time())

    def book(self) -> tuple[asyncio.Future[None], float]:
        """Queue a link for its turn to start a handshake (first come, first served): the future
        that resolves at its turn, and the seconds it is expected to wait.

        Whoever books a turn reports its end with :meth:`ended`, also when it gives up
        before or during the handshake (its place among the K in flight is freed then).
        """
        eta = self.eta_s()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._turns.append(turn)
        self._hand_out_turns()
        return turn, eta

    def ended(self, turn: asyncio.Future[None], outcome: Outcome) -> None:
        """The handshake of ``turn`` ended with ``outcome`` (ERROR for one given up): its place
        is free. A turn not yet given is withdrawn; a second report of the same turn is ignored."""
        ticket = self._granted.pop(turn, None)
        if ticket is None:
            turn.cancel()  # still queued (a no-op if it was given and its lease expired)
            return
        self.pacer.finish(ticket, outcome, self._loop_time())
        self._hand_out_turns()

    def _hand_out_turns(self) -> None:
        """Give turns to the links at the head of the queue while the pacer allows a start now.

        At K handshakes in flight the next end hands out the next turn; under a rate cap
        (``upstream.max_connects_per_s``, or 50 a second while handshakes fail) one timer fires
        when the next start is allowed, and turns are taken when it fires: if the loop was busy,
        turns that came due meanwhile do not all start at once.
        """
        if self._turn_timer is not None:
            self._turn_timer.cancel()
            self._turn_timer = None
        turns = self._turns
        now = self._loop_time()
        while turns:
            if turns[0].done():  # its link loop was cancelled
                turns.popleft()
                continue
            wait = self.pacer.start_in(now)
            if wait == math.inf:
                return
            if wait > 0:
                self._turn_timer = asyncio.get_running_loop().call_later(wait, self._hand_out_turns)
                return
            turn = turns.popleft()
            self._granted[turn] = self.pacer.start(now)
            self._recovery.attempt_started(now)
            turn.set_result(None)

    def expire(self, now: float) -> None:
        """Free the places of turns whose end was never reported (see PacerSettings.lease_s)."""
        if not self._granted:
            return
        lost = set(self.pacer.expire(now))
        if lost:
            lease_s = self.pacer.settings.lease_s
            log.warning("%d handshake turns were not ended within %.0fs", len(lost), lease_s)
            self._granted = {f: t for f, t in self._granted.items() if t not in lost}
            self._hand_out_turns()

    def close(self) -> None:
        """The gateway stops: no timer is left."""
        if self._turn_timer is not None:
            self._turn_timer.cancel()
            self._turn_timer = None
