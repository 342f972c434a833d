"""Retry timing for the cloud links, as values: the driver passes ``now`` in and sleeps itself.

- :class:`Backoff`: one link's delay before its next attempt (exponential, jittered, capped at
  ``upstream.reconnect_max_s``).
- :class:`Recovery`: when to try the cloud before a link's own backoff says so. A link that
  connects shows that the cloud is back: every link waiting in its backoff retries at once
  (through the handshake pacer, :mod:`gateway.core.pacer`). While no link is up, one waiting link is tried every ``probe_every_s``
  (the probe is a real handshake, the only test that the cloud accepts connections again), so
  the time to recover does not grow with the backoff, whatever the outage length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff", "BackoffPolicy", "Recovery"]


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How one link's delays grow: ``initial_s · factor^n``, capped by the caller's ``max_s``."""

    initial_s: float = 1.0
    factor: float = 2.0


@dataclass
class Backoff:
    """``initial_s · factor^n`` capped at ``max_s``, each delay scaled by a random factor in [0.5, 1]."""

    initial_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def next_delay(self) -> float:
        base = min(self.max_s, self.initial_s * self.factor**self.attempts)
        self.attempts += 1
        return base * self.rng.uniform(0.5, 1.0)

    @property
    def capped(self) -> bool:
        """The last delay given was at the cap (the link has failed for a while)."""
        return (
            self.attempts > 0 and self.initial_s * self.factor ** (self.attempts - 1) >= self.max_s
        )

    def reset(self) -> None:
        self.attempts = 0


class Recovery:
    """The hub-wide view of the links' retries: when to probe, whom to wake.

    The driver reports each attempt and its outcome and keeps the links that wait in their backoff;
    this decides when one of them is tried early (a probe) and whether a success ends an outage
    (then every waiting link is woken).
    """

    def __init__(self, probe_every_s: float) -> None:
        self.probe_every_s = probe_every_s
        self._last_attempt = float("-inf")
        self._failures_since_success = 0

    def attempt_started(self, now: float) -> None:
        self._last_attempt = now

    def failed(self) -> None:
        self._failures_since_success += 1

    def connected(self) -> bool:
        """A link is up; True if links failed since the last success (wake the waiting ones)."""
        ended_outage = self._failures_since_success > 0
        self._failures_since_success = 0
        return ended_outage

    def probe_due(self, now: float, *, waiting: int, links_up: int) -> bool:
        """Try one waiting link now? Only while none is up and none was tried for a while."""
        return waiting > 0 and links_up == 0 and now - self._last_attempt >= self.probe_every_s
