"""A CALL program: the CALLs a feature sends one charger, one at a time, and what it does with
their answers. Pure: a :class:`Planner` yields :class:`Request` values and consumes
:class:`Reply` values; :class:`gateway.net.runner.CallRunner` moves them through the charger's one
CALL slot (OCPP-J 1.6 §4.1.1, 2.0.1 Part 4 §4.1.1: one outstanding CALL per direction), with
``chargers.call_timeout_s``, pacing and the answers validated against the schemas.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Planner", "Reply", "ReplyKind", "Request", "run_pure"]


@dataclass(frozen=True, slots=True)
class Request:
    """One CALL to send. ``weight`` is its share of the runner's pacing budget (e.g. list
    entries); ``text``: ``payload`` already serialized (one large payload sent to many chargers
    is serialized once)."""

    action: str
    payload: dict[str, Any]
    weight: int = 1
    text: str | None = None
    tag: object = None  # the planner's own note of what this CALL is for


class ReplyKind(enum.Enum):
    RESULT = "result"  # a CALLRESULT valid against the action's response schema
    ERROR = "error"  # a CALLERROR
    INVALID = "invalid"  # a CALLRESULT breaking the schema
    TIMEOUT = "timeout"  # no answer within chargers.call_timeout_s
    GONE = "gone"  # the charger went away (or was not connected)
    QUEUE_FULL = "queue_full"  # chargers.max_queued_calls were waiting: not sent


@dataclass(frozen=True, slots=True)
class Reply:
    """What became of one :class:`Request`."""

    kind: ReplyKind
    payload: dict[str, Any] = field(default_factory=dict)  # RESULT: the answer
    error: str = ""  # ERROR: the code; INVALID: what broke the schema

    @property
    def ok(self) -> bool:
        return self.kind is ReplyKind.RESULT


class Planner(Protocol):
    """A feature's program for one charger: the next CALL, and what an answer changes."""

    def next_request(self) -> Request | None:
        """The next CALL to send, or None when the program is done."""
        ...

    def answered(self, request: Request, reply: Reply) -> None:
        """What became of ``request`` (the one :meth:`next_request` returned last)."""
        ...


def run_pure(planner: Planner, answer: Any) -> list[Request]:
    """Run ``planner`` to its end with ``answer(request) -> Reply`` (tests and simulations):
    the requests it made, in order."""
    sent: list[Request] = []
    while (request := planner.next_request()) is not None:
        sent.append(request)
        planner.answered(request, answer(request))
    return sent
