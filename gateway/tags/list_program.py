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
    capacity_16,
    capacity_201,
    configuration_keys_16,
    digest,
    get_variables_201,
    list_version,
    outcome_of,
    payload,
    plan,
    snapshot_body,
)

__all__ = ["End", "Planned", "ReadProgram", "SendProgram", "make_plan"]


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


def _stopped(reply: Reply) -> End | None:
    """How a CALL that got no usable answer ends its program (None: it got one)."""
    return {
        ReplyKind.GONE: End.GONE,
        ReplyKind.TIMEOUT: End.TIMEOUT,
        ReplyKind.QUEUE_FULL: End.QUEUE_FULL,
    }.get(reply.kind)


@dataclass(slots=True)
class ReadProgram:
    """What the charger holds: its capacity (1.6 GetConfiguration, 2.0.1 GetVariables; unknown
    if refused: the planner's defaults apply) and its list version (GetLocalListVersion; a
    refusal, or 1.6's -1, means it takes no list)."""

    version: str  # the charger's OCPP version
    end: End | None = None
    reason: str = ""
    capacity: Capacity = field(default_factory=Capacity)
    list_version: int = 0
    _sent: int = 0

    def next_request(self) -> Request | None:
        if self.end is not None:
            return None
        self._sent += 1
        if self._sent == 1 and self.version == "1.6":
            return Request("GetConfiguration", configuration_keys_16(), weight=0)
        if self._sent == 1:
            return Request("GetVariables", get_variables_201(), weight=0)
        if self._sent == 2:
            return Request("GetLocalListVersion", {}, weight=0)
        self.end = End.DONE
        return None

    def answered(self, request: Request, reply: Reply) -> None:
        stopped = _stopped(reply)
        if stopped is not None:
            self.end = stopped
        elif reply.kind is ReplyKind.INVALID:
            self.end, self.reason = End.SKIP, f"invalid {request.action} answer: {reply.error}"
        elif request.action != "GetLocalListVersion":
            if reply.ok:
                parse = capacity_16 if self.version == "1.6" else capacity_201
                self.capacity = parse(reply.payload)
        elif reply.kind is ReplyKind.ERROR:
            refused = outcome_of(reply.error, {}) is Outcome.NOT_SUPPORTED
            self.end = End.REFUSED if refused else End.SKIP
            self.reason = f"GetLocalListVersion answered CALLERROR {reply.error}"
        else:
            number = list_version(self.version, reply.payload)
            if number is None:
                self.end = End.REFUSED
                self.reason = "the charger reports no local authorization list (version -1)"
            else:
                self.list_version = number


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
        stopped = _stopped(reply)
        if stopped is not None:
            if stopped is not End.GONE:
                self.results.append(stopped.value)  # "timeout", "queue_full"
            self.end = stopped
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
