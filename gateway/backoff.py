"""Exponential backoff with jitter, as a value: the driver asks for the next delay and sleeps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


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

    def reset(self) -> None:
        self.attempts = 0
