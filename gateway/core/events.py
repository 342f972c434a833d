"""What the relay core asks its driver to do, and the stored row it replays: small frozen values.

The driver handles each event in order and reports back where the event says so (the core
waits for ``answered_locally``, ``resend_checked``, ``replay_rows`` or ``outcome_recorded``
before it goes on with that part of the work).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from gateway.core import offline
from gateway.core.limits import LogLimiter
from gateway.ocpp.frames import Call, CallError, CallResult

__all__ = [
    "AnswerLocally",
    "Answered",
    "BootDelivered",
    "ChargerAnswered",
    "ChargerCallFailed",
    "ChargerCallSeen",
    "CheckResend",
    "CloseLink",
    "CloudCallSeen",
    "DeadLetter",
    "Delivered",
    "Drained",
    "QueuedCall",
    "ReadBacklog",
    "RelayEvent",
    "RelayOutput",
    "RetryLater",
    "SaveBoot",
]


class QueuedCall(Protocol):
    """A stored charger CALL as the replay needs it (the store's outbox row)."""

    @property
    def seq(self) -> int: ...
    @property
    def version(self) -> str: ...
    @property
    def message_id(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def payload(self) -> str: ...
    @property
    def local_tx_id(self) -> int | None: ...
    @property
    def attempts(self) -> int: ...
    @property
    def next_attempt_at(self) -> float: ...


@dataclass(frozen=True, slots=True)
class AnswerLocally:
    """Answer ``call`` per the offline table: look up the tag, take a local transaction id, store
    the row (or the Boot) durably, then call ``answered_locally`` (or ``local_answer_failed``).
    The charger's later frames wait until then."""

    call: Call
    rule: offline.Rule


@dataclass(frozen=True, slots=True)
class CheckResend:
    """``call`` carries the id of a stored CALL: ask the store for the answer given the first
    time, then call ``resend_checked``. The charger's later frames wait until then."""

    call: Call


@dataclass(frozen=True, slots=True)
class SaveBoot:
    """A BootNotification relayed live: keep it as the charger's latest, delivered."""

    call: Call


@dataclass(frozen=True, slots=True)
class ChargerCallSeen:
    """A charger CALL of an observed action (before it is relayed or answered). ``at``: when
    it came (the relay's clock), for a sampled CALL shown later than that; None: just now."""

    call: Call
    at: float | None = None


@dataclass(frozen=True, slots=True)
class CloudCallSeen:
    """A cloud CALL of an observed action, shown before it is queued toward the charger."""

    call: Call


@dataclass(frozen=True, slots=True)
class Answered:
    """A charger CALL of an observed action got its CALLRESULT, from the cloud or locally."""

    call: Call
    result: dict[str, Any]
    by_cloud: bool


@dataclass(frozen=True, slots=True)
class ChargerAnswered:
    """The charger answered a CALL it had in its slot (every gateway CALL; observed cloud ones)."""

    call: Call
    answer: CallResult | CallError
    origin: Literal["cloud", "gateway"]


@dataclass(frozen=True, slots=True)
class ChargerCallFailed:
    """A gateway CALL will get no answer: the charger timed out or is gone."""

    message_id: str
    action: str
    reason: Literal["timeout", "not_connected"]


@dataclass(frozen=True, slots=True)
class CloseLink:
    """Close the upstream connection (a CALL timed out, or the backlog drained with no charger)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class ReadBacklog:
    """Read the charger's next queued rows (oldest first) and pass them to ``replay_rows``."""


@dataclass(frozen=True, slots=True)
class Delivered:
    """Record ``row`` as delivered (with ``tx`` = (local, cloud) for a 1.6 StartTransaction),
    then call ``outcome_recorded``."""

    row: QueuedCall
    call: Call  # as sent to the cloud
    result: dict[str, Any]
    tx: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Hold ``row`` for ``delay_s`` (its attempt counted), then call ``outcome_recorded``."""

    row: QueuedCall
    delay_s: float
    error: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Move ``row`` to the dead letters, then call ``outcome_recorded``."""

    row: QueuedCall
    code: str
    description: str


@dataclass(frozen=True, slots=True)
class BootDelivered:
    """Mark the stored BootNotification ``message_id`` delivered, then call ``outcome_recorded``."""

    message_id: str
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Drained:
    """The backlog is delivered: the link relays live now."""


RelayEvent = (
    AnswerLocally
    | CheckResend
    | SaveBoot
    | ChargerCallSeen
    | CloudCallSeen
    | Answered
    | ChargerAnswered
    | ChargerCallFailed
    | CloseLink
    | ReadBacklog
    | Delivered
    | RetryLater
    | DeadLetter
    | BootDelivered
    | Drained
)


@dataclass(frozen=True, slots=True)
class RelayOutput:
    """What a relay produced that its driver has not taken yet: the frames for each side, in
    order, and the events. The relay's parts append to the same three lists, which are never
    replaced (a part keeps them as attributes: one lookup per frame). Their repeated log lines
    go through ``log_limit``, one per gateway (at most one a minute per kind and charger)."""

    to_charger: list[str] = field(default_factory=list)
    to_cloud: list[str] = field(default_factory=list)
    events: list[RelayEvent] = field(default_factory=list)
    log_limit: LogLimiter = field(default_factory=LogLimiter)
