"""OCPP-J frames as small immutable values, with a cheap parse and serialize.

No I/O here. ``parse`` does the check every relayed frame gets (a JSON array of the right shape,
a readable message id); full schema validation is done only for what the gateway acts on.

Message types per version (OCPP 2.1 Part 4 §4.1.3): CALL 2, CALLRESULT 3 and CALLERROR 4 in
every version; CALLRESULTERROR 5 (an error answer to a CALLRESULT) and SEND 6 (a message that
gets no answer) only in 2.1. Any other type is :class:`FrameError` ``MessageTypeNotSupported``;
the session answers it (2.0.1, 2.1) or ignores it (1.6).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gateway.errors import FrameError

_loads: Callable[[str | bytes], Any]  # bound directly to the parser: no wrapper call per frame

try:  # orjson is ~3x faster on the relay path; the stdlib is the fallback where no wheel exists.
    import orjson

    _loads = orjson.loads

    def _dumps(value: Any) -> str:
        return orjson.dumps(value).decode()

except ImportError:  # pragma: no cover - exercised on machines without the wheel
    _loads = json.loads

    def _dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


__all__ = [
    "CALL",
    "CALLERROR",
    "CALLRESULT",
    "CALLRESULTERROR",
    "SEND",
    "VERSIONS",
    "Call",
    "CallError",
    "CallResult",
    "CallResultError",
    "Frame",
    "OcppVersion",
    "Send",
    "as_version",
    "check",
    "describe",
    "dumps",
    "error_code_for",
    "error_text",
    "frame_of",
    "loads",
    "parse",
]

OcppVersion = Literal["1.6", "2.0.1", "2.1"]
VERSIONS: Final[tuple[OcppVersion, ...]] = ("1.6", "2.0.1", "2.1")

CALL: Final = 2
CALLRESULT: Final = 3
CALLERROR: Final = 4
CALLRESULTERROR: Final = 5  # OCPP 2.1
SEND: Final = 6  # OCPP 2.1

MAX_ID_LENGTH: Final = 36  # OCPP-J: message id is a string of at most 36 characters

loads = _loads
dumps = _dumps


@dataclass(frozen=True, slots=True)
class Call:
    message_id: str
    action: str
    payload: dict[str, Any]

    def serialize(self) -> str:
        return _dumps([CALL, self.message_id, self.action, self.payload])


@dataclass(frozen=True, slots=True)
class CallResult:
    message_id: str
    payload: dict[str, Any]

    def serialize(self) -> str:
        return _dumps([CALLRESULT, self.message_id, self.payload])


@dataclass(frozen=True, slots=True)
class CallError:
    message_id: str
    code: str
    description: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def serialize(self) -> str:
        return _dumps([CALLERROR, self.message_id, self.code, self.description, self.details])


@dataclass(frozen=True, slots=True)
class CallResultError:
    """OCPP 2.1: the receiver of the CALLRESULT with this id could not process it (§4.2.3)."""

    message_id: str
    code: str
    description: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def serialize(self) -> str:
        return _dumps([CALLRESULTERROR, self.message_id, self.code, self.description, self.details])


@dataclass(frozen=True, slots=True)
class Send:
    """OCPP 2.1: a message that gets no answer, e.g. NotifyPeriodicEventStream (§4.2.4)."""

    message_id: str
    action: str
    payload: dict[str, Any]

    def serialize(self) -> str:
        return _dumps([SEND, self.message_id, self.action, self.payload])


Frame = Call | CallResult | CallError | CallResultError | Send

# 1.6 spells two codes differently (OCPP-J 1.6 §4.2.3, sic); 2.0.1 has one code 1.6 lacks.
_V16_SPELLING: Final = {
    "FormatViolation": "FormationViolation",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
    "MessageTypeNotSupported": "NotSupported",
    "RpcFrameworkError": "GenericError",
}


def as_version(value: str) -> OcppVersion:
    """A stored version string as :data:`OcppVersion` (rows written before 2.1 hold 1.6/2.0.1)."""
    if value == "1.6":
        return "1.6"
    return "2.1" if value == "2.1" else "2.0.1"


def error_code_for(version: OcppVersion, code: str) -> str:
    """The error code as ``version`` spells it (codes are given in their 2.0.1 spelling)."""
    return _V16_SPELLING.get(code, code) if version == "1.6" else code


def error_text(version: OcppVersion, message_id: str, code: str, description: str) -> str:
    """A CALLERROR frame for ``message_id``, its code (2.0.1 spelling) as ``version`` spells it."""
    return CallError(message_id, error_code_for(version, code), description).serialize()


def _message_id(raw: list[Any]) -> str:
    if len(raw) < 2 or not isinstance(raw[1], str):
        raise FrameError("FormatViolation", "message id missing or not a string")
    mid: str = raw[1]
    if not mid or len(mid) > MAX_ID_LENGTH:
        raise FrameError("FormatViolation", f"message id must be 1 to {MAX_ID_LENGTH} characters")
    return mid


def parse(text: str | bytes, version: OcppVersion = "2.0.1") -> Frame:
    """Parse one OCPP-J message of ``version``; raise :class:`FrameError` carrying the id to answer.

    Types 5 and 6 exist only in 2.1: for 1.6 and 2.0.1 they are MessageTypeNotSupported.
    """
    return frame_of(check(text, version))


def check(text: str | bytes, version: OcppVersion = "2.0.1") -> list[Any]:
    """The message as its JSON array, after every check :func:`parse` makes, without building a
    frame value: ``[2, id, action, {payload}]``, ``[3, id, {payload}]``, ``[4, id, code, text,
    details]``, ... The relay path reads the type, id and action from it and makes a
    :class:`Call` only for a frame it keeps or shows (:func:`frame_of`)."""
    try:
        raw = _loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise FrameError("FormatViolation", "message is not valid JSON") from exc
    if type(raw) is not list or not raw:  # the parser makes exact lists, strs, dicts
        raise FrameError("FormatViolation", "message is not a JSON array")
    kind = raw[0]
    if type(kind) is not int:  # 2.0 or true must not pass for 2
        raise FrameError("FormatViolation", "message type must be an integer", _readable_id(raw))
    size = len(raw)
    if size < 2 or type(raw[1]) is not str or not 0 < len(raw[1]) <= MAX_ID_LENGTH:
        _message_id(raw)  # raises the error that says what is wrong
    mid: str = raw[1]
    if kind == CALL:  # inline, not via _action_and_payload: this is the relay path
        if size != 4:
            raise FrameError("FormatViolation", "CALL must have 4 elements", mid)
        action = raw[2]
        if type(action) is not str or not action:
            raise FrameError("FormatViolation", "CALL action must be a non-empty string", mid)
        if type(raw[3]) is not dict:
            raise FrameError("FormatViolation", "CALL payload must be a JSON object", mid)
        return raw
    if kind == CALLRESULT:
        if size != 3 or type(raw[2]) is not dict:
            raise FrameError("FormatViolation", "CALLRESULT must be [3, id, {payload}]", mid)
        return raw
    if kind == CALLERROR:
        if size != 5 or type(raw[2]) is not str or type(raw[3]) is not str:
            raise FrameError("FormatViolation", "CALLERROR must be [4, id, code, text, {}]", mid)
        return raw
    if version == "2.1":  # OCPP 2.1 Part 4 §4.1.3: types 5 and 6 are new in 2.1
        if kind == SEND:
            try:
                _action_and_payload(raw, "SEND", mid)
            except FrameError as exc:  # §4.2.4: a SEND gets no answer, not even an error
                raise FrameError(exc.code, exc.description, mid, answer=False) from None
            return raw
        if kind == CALLRESULTERROR:
            if size != 5 or type(raw[2]) is not str or type(raw[3]) is not str:
                raise FrameError(
                    "FormatViolation", "CALLRESULTERROR must be [5, id, code, text, {}]", mid
                )
            return raw
    raise FrameError("MessageTypeNotSupported", f"message type {kind} is not supported", mid)


def frame_of(raw: list[Any]) -> Frame:
    """The frame value of a message :func:`check` accepted."""
    kind = raw[0]
    if kind == CALL:
        return Call(raw[1], raw[2], raw[3])
    if kind == CALLRESULT:
        return CallResult(raw[1], raw[2])
    if kind == SEND:
        return Send(raw[1], raw[2], raw[3])
    details = raw[4] if type(raw[4]) is dict else {}
    if kind == CALLERROR:
        return CallError(raw[1], raw[2], raw[3], details)
    return CallResultError(raw[1], raw[2], raw[3], details)


def _action_and_payload(raw: list[Any], name: str, mid: str) -> tuple[str, dict[str, Any]]:
    if len(raw) != 4:
        raise FrameError("FormatViolation", f"{name} must have 4 elements", mid)
    action, payload = raw[2], raw[3]
    if not isinstance(action, str) or not action:
        raise FrameError("FormatViolation", f"{name} action must be a non-empty string", mid)
    if not isinstance(payload, dict):
        raise FrameError("FormatViolation", f"{name} payload must be a JSON object", mid)
    return action, payload


def _readable_id(raw: list[Any]) -> str:
    try:
        return _message_id(raw)
    except FrameError:
        return "-1"


_KIND_NAMES: Final = {
    CALL: "CALL",
    CALLRESULT: "CALLRESULT",
    CALLERROR: "CALLERROR",
    CALLRESULTERROR: "CALLRESULTERROR",
    SEND: "SEND",
}


def describe(message: str | bytes) -> tuple[str, str, str]:
    """(message type, action or "-", message id) of a frame, for a trace line; never raises."""
    try:
        value = _loads(message)
    except ValueError:
        return ("unparsable", "-", "-")
    if not isinstance(value, list) or len(value) < 2:
        return ("unparsable", "-", "-")
    kind = _KIND_NAMES.get(value[0], str(value[0])[:12]) if isinstance(value[0], int) else "?"
    action = value[2] if value[0] in (CALL, SEND) and len(value) > 2 else "-"
    return (kind, str(action)[:64], str(value[1])[:36])
