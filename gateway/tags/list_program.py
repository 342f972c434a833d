"""The local list push's plan as it is sent (:class:`Planned`: payloads serialized once for every
charger it fits) and its CALL program: the plan's SendLocalList steps, one after the other, and
what each answer means. Pure: a :class:`~gateway.core.program.Planner` run by
:class:`gateway.net.runner.CallRunner` (which paces each step by its entries and validates the
answers); :mod:`gateway.tags.local_list_push` acts on its :class:`End`.

A step that is not accepted ends the program: NotSupported, or Failed of a Full update (or of
the retried list), leaves the charger alone; a Differential update refused otherwise asks for
the whole list in full (1.6 §5.15, 2.0.1 D01); any other answer skips this round.
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.core.program import Reply, ReplyKind, Request
from gateway.ocpp.frames import dumps
from gateway.tags.local_list import (
    Capacity,
    Entry,
    Outcome,
    Plan,
    Sent,
    Step,
    digest,
    outcome_of,
    payload,
    plan,
    snapshot_body,
)

__all__ = ["End", "Planned", "SendProgram", "make_plan"]


@dataclass(frozen=True, slots=True)
class Planned:
    """A plan with what sending and recording it need, computed once for every charger it fits."""

    plan: Plan
    payloads: tuple[dict[str, Any], ...]  # one SendLocalList payload per step
    texts: tuple[str, ...]  # the same serialized, once for every charger
    entries: frozenset[Entry]
    digest: str
    body: bytes  # the stored snapshot (zlib)


def make_plan(
    family: str,
    desired: tuple[Entry, ...],
    capacity: Capacity,
    charger_version: int,
    last: Sent | None,
    max_entries: int,
) -> Planned:
    """The plan for a charger (``local_list.plan``), its payloads serialized once."""
    result = plan(
        desired,
        capacity=capacity,
        charger_version=charger_version,
        last=last,
        max_entries=max_entries,
    )
    entries = frozenset(result.entries)
    payloads = tuple(payload(family, step) for step in result.steps)
    return Planned(
        result,
        payloads,
        tuple(dumps(body) for body in payloads),
        entries,
        digest(entries),
        zlib.compress(snapshot_body(result.entries)),
    )


class End(enum.Enum):
    DONE = "done"  # every step accepted
    FULL = "full"  # a Differential update refused: send the list in full
    REFUSED = "refused"  # the charger does not take a list from the gateway
    SKIP = "skip"  # an odd answer: not this round
    TIMEOUT = "timeout"  # no answer in time
    QUEUE_FULL = "queue_full"  # not sent: the charger's queue was full
    GONE = "gone"  # the charger went away


@dataclass(slots=True)
class SendProgram:
    """Send ``steps`` (with their payloads, serialized once in ``texts``)."""

    steps: Sequence[Step]
    payloads: Sequence[dict[str, Any]]
    texts: Sequence[str]
    retried: bool = False  # this is already the list in full after a refused Differential
    end: End | None = None  # None: not ended (or stopped before a step)
    reason: str = ""
    results: list[str] = field(default_factory=list)  # each answer's metric label, in order
    _next: int = 0

    def next_request(self) -> Request | None:
        if self.end is not None:
            return None
        if self._next >= len(self.steps):
            self.end = End.DONE
            return None
        i = self._next
        step = self.steps[i]
        weight = len(step.add) + len(step.remove)
        return Request("SendLocalList", self.payloads[i], weight=weight, text=self.texts[i], tag=i)

    def answered(self, request: Request, reply: Reply) -> None:
        step = self.steps[int(str(request.tag))]
        self._next += 1
        if reply.kind is ReplyKind.GONE:
            self.end = End.GONE
            return
        if reply.kind is ReplyKind.TIMEOUT:
            self.results.append("timeout")
            self.end = End.TIMEOUT
            return
        if reply.kind is ReplyKind.QUEUE_FULL:
            self.results.append("queue_full")
            self.end = End.QUEUE_FULL
            return
        if reply.kind is ReplyKind.INVALID:
            self.results.append("error")
            self.end, self.reason = End.SKIP, f"invalid SendLocalList answer: {reply.error}"
            return
        status = outcome_of(reply.error if reply.kind is ReplyKind.ERROR else None, reply.payload)
        self.results.append(status.value)
        if status is Outcome.ACCEPTED:
            return
        what = f"SendLocalList {step.update_type} version {step.version}"
        if status is Outcome.NOT_SUPPORTED:
            self.end, self.reason = End.REFUSED, f"{what} answered NotSupported"
        elif status is Outcome.FAILED and (step.update_type == "Full" or self.retried):
            self.end, self.reason = End.REFUSED, f"{what} answered Failed"
        elif step.update_type == "Differential" and not self.retried:
            self.end, self.reason = End.FULL, f"{what} answered {status.name}"
        else:
            self.end, self.reason = End.SKIP, f"{what} answered {status.name}"
