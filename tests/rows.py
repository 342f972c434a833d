"""An outbox row as the store returns it, for tests that drive the relay core on values."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """Satisfies :class:`gateway.core.events.QueuedCall`; ``answer`` is the answer given locally."""

    seq: int
    message_id: str
    action: str
    payload: str
    version: str = "1.6"
    local_tx_id: int | None = None
    attempts: int = 0
    next_attempt_at: float = 0.0
    answer: str = ""
