"""Upstream handshakes in flight, as values: how many may run at once, and when the next may start.

The driver (the hub) tells :class:`HandshakePacer` each handshake's start and its end with an
:class:`Outcome`; the pacer says whether another may start now. Time is passed in.

The bound is a number of handshakes in flight, K, not a rate: a healthy cloud that completes a
handshake in 5 ms takes 1,000 links in a fraction of a second at K = 50, while a struggling one
that takes seconds never has more than K of them open at once. K adapts as TCP's congestion
window does (additive increase, multiplicative decrease; RFC 5681 §3.1), in the per-completion
form of Netflix concurrency-limits' ``AIMDLimit``::

    success within slow_s, with at least half of K in flight   K := min(ceiling, K + 1)
    refusal, timeout, or success slower than slow_s           K := max(floor, K · decrease)
    error (the cloud is not the cause: 4xx for one charger,   K unchanged
    a handshake given up by its link)

A burst of refusals counts once: only a handshake that started after the last decrease can cause
another (one reduction per window of data in flight, RFC 6582 §3.2), so K halves once when the
cloud goes down with 50 handshakes open, not 50 times. While all of K is in use and handshakes
complete fast, K can at most double per round of handshakes (each completion adds one).

Three more bounds:
- ``failing_per_s`` (50): while the last handshake to end was refused or timed out, starts are at
  least ``1 / failing_per_s`` apart. A cloud that is down refuses at once, so a bound on those in
  flight alone would let every link's retries through as fast as their backoffs allow (hundreds a
  second at the start of an outage): this keeps them to the old fixed rate until one succeeds,
  and keeps the links' backoffs from growing faster than they did under it.
- ``max_per_s`` (``upstream.max_connects_per_s``; 0 = none): starts at least ``1 / max_per_s``
  apart, always, for operators whose cloud asks for a rate.
- ``lease_s``: a handshake whose end is not reported within it is released (counted as an error),
  so a lost report cannot shrink the pool for good.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = ["HandshakePacer", "Outcome", "PacerSettings"]


class Outcome(enum.Enum):
    """How a handshake ended, as far as the cloud's load is concerned."""

    SUCCESS = "success"
    REFUSED = "refused"  # connection refused or reset, HTTP 5xx or 429: the cloud cannot take it
    TIMEOUT = "timeout"  # no answer within the open timeout: the cloud is too slow
    ERROR = "error"  # says nothing about the cloud's load (HTTP 4xx for one id, given up by us)


@dataclass(frozen=True, slots=True)
class PacerSettings:
    """The pacer's bounds; the defaults are the gateway's."""

    initial: int = 50
    ceiling: int = 200
    floor: int = 1
    # A successful handshake slower than this shows a struggling cloud: about twice a TLS handshake
    # over a cellular link (200-600 ms), so a healthy distant cloud still lets K grow.
    slow_s: float = 1.0
    decrease: float = 0.5
    max_per_s: float = 0.0  # 0: no rate cap
    failing_per_s: float = 50.0  # the rate cap while the last handshake failed
    lease_s: float = 60.0
    # Before any handshake completed, a wait estimate assumes this per handshake.
    first_estimate_s: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.floor <= self.initial <= self.ceiling:
            raise ValueError("need 1 <= floor <= initial <= ceiling")
        if not 0 < self.decrease < 1:
            raise ValueError("decrease must be in (0, 1)")
        if self.max_per_s < 0 or self.slow_s <= 0 or self.lease_s <= 0 or self.failing_per_s <= 0:
            raise ValueError("max_per_s must be >= 0; slow_s, lease_s and failing_per_s > 0")


class HandshakePacer:
    """At most K handshakes in flight, K adapting to how the cloud answers (module docstring)."""

    def __init__(self, settings: PacerSettings | None = None) -> None:
        self.settings = s = settings or PacerSettings()
        self._limit = float(s.initial)
        self._started: dict[int, float] = {}  # ticket -> start time, of handshakes in flight
        self._next_ticket = 0
        self._decrease_mark = 0  # tickets below this started before the last decrease
        self._interval_s = 1.0 / s.max_per_s if s.max_per_s else 0.0
        self._failing_interval_s = max(self._interval_s, 1.0 / s.failing_per_s)
        self._failing = False  # the last handshake to end was refused or timed out
        self._last_start = -math.inf
        self._duration_s = s.first_estimate_s  # moving average of successful handshakes

    @property
    def limit(self) -> int:
        """K: how many handshakes may be in flight now."""
        return max(self.settings.floor, int(self._limit))

    @property
    def in_flight(self) -> int:
        return len(self._started)

    @property
    def duration_s(self) -> float:
        """The moving average of successful handshakes' durations (the estimate before any)."""
        return self._duration_s

    def start_in(self, now: float) -> float:
        """0 if a handshake may start now; ``inf`` while K are in flight (wait for an end);
        otherwise the seconds until the rate cap allows the next start."""
        if len(self._started) >= self.limit:
            return math.inf
        return max(0.0, self._last_start + self._spacing_s() - now)

    def _spacing_s(self) -> float:
        return self._failing_interval_s if self._failing else self._interval_s

    def start(self, now: float) -> int:
        """A handshake starts now; returns its ticket for :meth:`finish`."""
        if self.start_in(now) > 0:
            raise ValueError("no handshake may start now")
        ticket = self._next_ticket
        self._next_ticket += 1
        self._started[ticket] = now
        self._last_start = now
        return ticket

    def finish(self, ticket: int, outcome: Outcome, now: float) -> bool:
        """The handshake ``ticket`` ended; False if it had already ended or expired."""
        started = self._started.pop(ticket, None)
        if started is None:
            return False
        s = self.settings
        duration = now - started
        if outcome is Outcome.SUCCESS:
            self._duration_s += 0.2 * (duration - self._duration_s)
        if outcome is Outcome.ERROR:
            return True
        self._failing = outcome is not Outcome.SUCCESS
        if outcome is Outcome.SUCCESS and duration <= s.slow_s:
            # The limit was in use (with fewer in flight, a larger K would change nothing).
            if (len(self._started) + 1) * 2 >= self._limit:
                self._limit = min(float(s.ceiling), self._limit + 1.0)
            return True
        if ticket >= self._decrease_mark:  # once per window: not for handshakes already open
            self._limit = max(float(s.floor), self._limit * s.decrease)
            self._decrease_mark = self._next_ticket
        return True

    def expire(self, now: float) -> list[int]:
        """Release the handshakes started ``lease_s`` ago or more; their tickets."""
        deadline = now - self.settings.lease_s
        lost = [t for t, started in self._started.items() if started <= deadline]
        for ticket in lost:
            del self._started[ticket]
        return lost

    def wait_estimate_s(self, ahead: int, now: float) -> float:
        """How long a handshake with ``ahead`` others queued before it would wait to start: the
        rounds of K handshakes before its turn, each as long as the average handshake, or the
        rate cap's spacing if that is longer."""
        free = self.limit - len(self._started)
        rounds = 0 if ahead < free else (ahead - free) // self.limit + 1
        wait = rounds * self._duration_s
        if spacing := self._spacing_s():
            wait = max(wait, max(0.0, self._last_start + spacing - now) + ahead * spacing)
        return wait
