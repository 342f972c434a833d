"""The charger's frames that cannot go on at once, and the answers the gateway gives itself (part
of :class:`gateway.core.relay.ChargerRelay`)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from gateway.core import offline
from gateway.core.events import Answered, AnswerLocally, CheckResend, RelayOutput
from gateway.errors import FrameError
from gateway.ocpp import frames
from gateway.ocpp.frames import Call, CallResult, OcppVersion
from gateway.ocpp.validation import validate_call

__all__ = ["LOCAL_ANSWERS_KEPT", "RECENT_IDS", "ChargerInbox", "Held"]

# Ids of the latest CALLs the gateway answered itself: a 2.1 CALLRESULTERROR for one of them is
# about the gateway's own answer and is not the cloud's business (OCPP 2.1 Part 4 §6.4).
LOCAL_ANSWERS_KEPT: Final = 16
# Message ids of a charger's latest stored CALLs, checked for resends on the online path.
RECENT_IDS: Final = 64


@dataclass(slots=True)
class Held:
    """A charger CALL waiting for a connecting link until ``deadline``."""

    call: Call
    text: str
    deadline: float


class ChargerInbox:
    """The charger's frames that cannot go on at once, and the answers the gateway gives itself.

    A charger CALL the cloud cannot answer now is answered per the offline table: what needs no
    I/O here (NotSupported, a schema violation), the rest by the driver (``AnswerLocally``). While
    the driver works on one — or a CALL waits for a connecting link, or a resend check runs —
    the inbox is ``busy`` and the charger's later frames wait in ``items``; the relay takes them
    out again in order once the one in front is done."""

    __slots__ = (
        "_errors",
        "_events",
        "_observed_answers",
        "_recent_order",
        "_to_charger",
        "answered_ids",
        "busy",
        "checking",
        "held",
        "items",
        "recent_ids",
    )

    def __init__(
        self, output: RelayOutput, *, errors: Counter[str], observed_answers: frozenset[str]
    ) -> None:
        self._to_charger = output.to_charger
        self._events = output.events
        self._errors = errors
        self._observed_answers = observed_answers
        # Charger frames behind one that awaits I/O; a Call item: answer it locally (its cloud
        # answer will not come).
        self.items: deque[str | Call] = deque()
        self.busy = False  # a charger frame awaits the driver (or a connecting link)
        self.checking: str | None = None  # the text of the CALL whose resend check runs
        self.held: Held | None = None
        self.answered_ids: deque[str] = deque(maxlen=LOCAL_ANSWERS_KEPT)
        self.recent_ids: set[str] = set()
        self._recent_order: deque[str] = deque()

    def hold(self, call: Call, text: str, deadline: float) -> None:
        """``call`` (and the frames after it) waits for a connecting link until ``deadline``."""
        self.busy = True
        self.held = Held(call, text, deadline)

    def take_held(self) -> Held | None:
        """The held CALL, if any, to be routed now; the frames after it may follow."""
        held = self.held
        if held is not None:
            self.held = None
            self.busy = False
        return held

    def check_resend(self, call: Call, text: str) -> None:
        """Ask the driver whether ``call`` was stored before; its answer: ``end_check``."""
        self.busy = True
        self.checking = text
        self._events.append(CheckResend(call))

    def end_check(self, call: Call) -> str:
        """The resend check of ``call`` is over (it is new): its text, to be routed."""
        text, self.checking = self.checking or call.serialize(), None
        self.busy = False
        return text

    def answer_locally(self, version: OcppVersion, call: Call) -> None:
        """Per the offline table; what needs no I/O is answered here, the rest by the driver."""
        rule = offline.rule_for(version, call.action)
        if rule.answer is offline.Answer.NOT_SUPPORTED:
            self._to_charger.append(
                frames.error_text(
                    version,
                    call.message_id,
                    "NotSupported",
                    f"{call.action} is not available offline",
                )
            )
            return
        try:
            validate_call(version, call.action, call.payload, call.message_id)
        except FrameError as exc:
            self._errors["schema_violation"] += 1
            self._to_charger.append(
                frames.error_text(version, exc.message_id, exc.code, exc.description)
            )
            return
        self.busy = True
        self._events.append(AnswerLocally(call, rule))

    def send_answer(self, call: Call, result: dict[str, Any], *, resend: bool) -> None:
        """The driver's answer to ``call`` goes to the charger; the inbox is free again."""
        self.answered_ids.append(call.message_id)
        self._to_charger.append(CallResult(call.message_id, result).serialize())
        if not resend and call.action in self._observed_answers:
            self._events.append(Answered(call, result, by_cloud=False))
        self.busy = False

    def send_failure(self, version: OcppVersion, call: Call) -> None:
        """The driver could not answer ``call``: InternalError; the inbox is free again."""
        self._to_charger.append(frames.error_text(version, call.message_id, "InternalError", ""))
        self.busy = False

    def answer_first(self, calls: list[Call]) -> None:
        """CALLs whose cloud answer will not come are answered locally, in the order they came,
        before the frames waiting in the inbox."""
        self.items.extendleft(reversed(calls))

    def remember_stored(self, message_ids: Iterable[str]) -> None:
        """Note message ids of CALLs stored for replay (the latest RECENT_IDS are kept)."""
        for message_id in message_ids:
            if message_id in self.recent_ids:
                continue
            self.recent_ids.add(message_id)
            self._recent_order.append(message_id)
            if len(self._recent_order) > RECENT_IDS:
                self.recent_ids.discard(self._recent_order.popleft())
