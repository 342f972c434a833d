"""The site guard's CALL program for one change of one charger: its cap (SetChargingProfile) or
the Clear of it, and the read of what the charger takes (``profiles.capability_request``)
when the gateway does not know it yet, or has not read it during this connection. Pure: a
:class:`~gateway.core.program.Planner` run by :class:`gateway.net.runner.CallRunner`.

Order: a charger whose capabilities the gateway knows (read before, kept in the store) gets its
cap first and the read after it, so a reconnecting charger's first CALL from the gateway is its
cap; an unknown one is read first, as the cap's unit and stack level depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from gateway.core.program import Reply, ReplyKind, Request
from gateway.site.profiles import (
    Capabilities,
    Version,
    capabilities,
    capability_request,
    clear_cap,
    set_cap,
)
from gateway.site.profiles import answer as profile_answer
from gateway.site.sequencer import Answer, Change

__all__ = ["CapProgram", "Result"]

# The flipturn_gateway_site_profile_changes_total{result} label of a profile CALL's end.
Result = Literal["accepted", "rejected", "timeout", "invalid"]

_READ: Final = "read"
_PROFILE: Final = "profile"


@dataclass(slots=True)
class CapProgram:
    """One :class:`Change` for one charger, with the capability read it needs."""

    version: Version
    change: Change
    known: Capabilities | None  # what the gateway knows the charger takes (None: never read)
    read: bool  # read the capabilities during this program
    now: float  # unix time the profile is built at (its start is backdated a day)
    voltage_v: float = 230.0
    phases: int | None = None
    answer: Answer = Answer.TIMEOUT  # the profile CALL's end, for the sequencer
    result: Result | None = None  # the same for the metric; None: the profile CALL was not sent
    caps: Capabilities | None = None  # what the charger said it takes, when it answered the read
    _steps: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.change.cap_a is None:
            self._steps = [_PROFILE]
        elif self.known is None:
            self._steps = [_READ, _PROFILE]
        else:
            self._steps = [_PROFILE, _READ] if self.read else [_PROFILE]

    def next_request(self) -> Request | None:
        if not self._steps:
            return None
        step = self._steps.pop(0)
        if step == _READ:
            action, payload = capability_request(self.version)
            return Request(action, payload, tag=_READ)
        cap = self.change.cap_a
        if cap is None:
            action, payload = clear_cap(self.version)
        else:
            action, payload = set_cap(
                self.version,
                cap,
                now=self.now,
                caps=self.caps or self.known or Capabilities(),
                voltage_v=self.voltage_v,
                phases=self.phases,
            )
        return Request(action, payload, tag=_PROFILE)

    def answered(self, request: Request, reply: Reply) -> None:
        if request.tag == _READ:
            if reply.ok:
                self.caps = capabilities(self.version, reply.payload)
            elif reply.kind in (ReplyKind.ERROR, ReplyKind.INVALID):
                self.caps = Capabilities()  # it does not say: the defaults (docs/site-power.md)
            elif self._steps:  # silent or gone before its cap: the cap is not sent
                self._steps.clear()
            return
        if reply.kind is ReplyKind.QUEUE_FULL:
            return  # not sent: counted as unanswered, asked again later
        if reply.ok:
            self.answer = profile_answer(reply.payload)
            self.result = "accepted" if self.answer is Answer.ACCEPTED else "rejected"
        elif reply.kind is ReplyKind.ERROR:
            self.answer, self.result = Answer.REJECTED, "rejected"
        elif reply.kind is ReplyKind.INVALID:
            self.answer, self.result = Answer.REJECTED, "invalid"
        else:
            self.answer, self.result = Answer.TIMEOUT, "timeout"
