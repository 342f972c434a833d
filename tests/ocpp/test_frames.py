"""The OCPP-J frame codec on plain strings, plus a Hypothesis fuzz of the parser."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import FrameError, GatewayError
from gateway.ocpp.frames import (
    CALL,
    CALLERROR,
    CALLRESULT,
    CALLRESULTERROR,
    SEND,
    VERSIONS,
    Call,
    CallError,
    CallResult,
    CallResultError,
    Frame,
    OcppVersion,
    Send,
    as_version,
    dumps,
    error_code_for,
    loads,
    parse,
)

ID36 = "0123456789abcdef0123456789abcdef0123"  # a UUID's length: the longest id allowed


def frame_error(text: str | bytes, version: OcppVersion = "2.0.1") -> FrameError:
    with pytest.raises(FrameError) as info:
        parse(text, version)
    return info.value


# --- every frame kind --------------------------------------------------------------------------


def test_call() -> None:
    frame = parse('[2,"19223201","BootNotification",{"chargePointVendor":"VendorX"}]')
    assert frame == Call("19223201", "BootNotification", {"chargePointVendor": "VendorX"})


def test_call_result() -> None:
    frame = parse('[3, "19223201", {"currentTime": "2026-11-21T17:00:00Z", "interval": 300}]')
    assert frame == CallResult("19223201", {"currentTime": "2026-11-21T17:00:00Z", "interval": 300})


def test_call_error() -> None:
    frame = parse('[4,"162376037","NotSupported","SetDisplayMessage not supported",{"a":1}]')
    assert frame == CallError(
        "162376037", "NotSupported", "SetDisplayMessage not supported", {"a": 1}
    )


def test_call_error_with_empty_description_and_details() -> None:
    assert parse('[4,"x","GenericError","",{}]') == CallError("x", "GenericError")


def test_call_error_details_that_are_not_an_object_become_empty() -> None:
    # Some stacks send null here; the error itself is still worth relaying.
    assert parse('[4,"x","InternalError","boom",null]') == CallError("x", "InternalError", "boom")


def test_bytes_input() -> None:
    assert parse(b'[2,"a","Heartbeat",{}]') == Call("a", "Heartbeat", {})
    assert parse('[2,"é","Authorize",{"idTag":"Ünï"}]'.encode()) == Call(
        "é", "Authorize", {"idTag": "Ünï"}
    )


def test_message_type_constants() -> None:
    assert (CALL, CALLRESULT, CALLERROR) == (2, 3, 4)


def test_serialize_each_kind() -> None:
    assert Call("1", "Heartbeat", {}).serialize() == '[2,"1","Heartbeat",{}]'
    assert CallResult("1", {"status": "Accepted"}).serialize() == '[3,"1",{"status":"Accepted"}]'
    assert CallError("1", "NotSupported").serialize() == '[4,"1","NotSupported","",{}]'
    assert CallError("1", "X", "why", {"k": [1]}).serialize() == '[4,"1","X","why",{"k":[1]}]'


def test_serialize_keeps_non_ascii_text() -> None:
    text = Call("1", "DataTransfer", {"data": "Ladesäule ⚡"}).serialize()
    assert "Ladesäule ⚡" in text
    assert json.loads(text) == [2, "1", "DataTransfer", {"data": "Ladesäule ⚡"}]


def test_frames_are_immutable() -> None:
    frame = Call("1", "Heartbeat", {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.action = "Authorize"  # type: ignore[misc]


def test_loads_and_dumps_are_json() -> None:
    assert loads('{"a":[1,2.5,null,true]}') == {"a": [1, 2.5, None, True]}
    assert json.loads(dumps({"b": "ü"})) == {"b": "ü"}


# --- message ids -------------------------------------------------------------------------------


def test_id_of_36_characters_is_accepted() -> None:
    assert len(ID36) == 36
    assert parse(f'[2,"{ID36}","Heartbeat",{{}}]').message_id == ID36


def test_id_of_37_characters_is_rejected_with_id_minus_one() -> None:
    error = frame_error(f'[2,"{ID36}x","Heartbeat",{{}}]')
    assert (error.code, error.message_id) == ("FormatViolation", "-1")
    assert "36" in error.description


@pytest.mark.parametrize(
    "text",
    [
        "[2]",
        '[2,"",  "Heartbeat", {}]',
        '[2, 17, "Heartbeat", {}]',
        '[2, null, "Heartbeat", {}]',
        '[3, ["id"], {}]',
        '[4, {"id": 1}, "GenericError", "", {}]',
    ],
)
def test_unreadable_id_answers_with_minus_one(text: str) -> None:
    error = frame_error(text)
    assert (error.code, error.message_id) == ("FormatViolation", "-1")
    assert "message id" in error.description


# --- malformed shapes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ("", "not valid JSON"),
        ('[2,"1","Heartbeat",{}', "not valid JSON"),
        ("[2,'1','Heartbeat',{}]", "not valid JSON"),
        ("[NaN]", "not valid JSON"),
        ('{"messageTypeId": 2}', "not a JSON array"),
        ('"hello"', "not a JSON array"),
        ("2", "not a JSON array"),
        ("null", "not a JSON array"),
        ("[]", "not a JSON array"),
    ],
)
def test_not_a_frame_at_all(text: str, description: str) -> None:
    error = frame_error(text)
    assert (error.code, error.message_id) == ("FormatViolation", "-1")
    assert description in error.description


@pytest.mark.parametrize("data", [b"\xff\xfe[2]", b'[2,"\xc3\x28","A",{}]'])
def test_invalid_utf8(data: bytes) -> None:
    error = frame_error(data)
    assert (error.code, error.message_id) == ("FormatViolation", "-1")


def test_lone_surrogate_in_text() -> None:
    # A str from a websocket library can hold one; it is not valid UTF-8 and not valid JSON text.
    error = frame_error('[2,"m1","DataTransfer",{"data":"\ud800"}]')
    assert (error.code, error.message_id) == ("FormatViolation", "-1")


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ('[2,"m1","Heartbeat"]', "CALL must have 4 elements"),
        ('[2,"m1","Heartbeat",{},{}]', "CALL must have 4 elements"),
        ('[2,"m1",7,{}]', "action must be a non-empty string"),
        ('[2,"m1","",{}]', "action must be a non-empty string"),
        ('[2,"m1","Heartbeat",[]]', "payload must be a JSON object"),
        ('[2,"m1","Heartbeat",null]', "payload must be a JSON object"),
        ('[2,"m1","Heartbeat","{}"]', "payload must be a JSON object"),
        ('[3,"m1"]', "CALLRESULT must be"),
        ('[3,"m1",{},{}]', "CALLRESULT must be"),
        ('[3,"m1",[]]', "CALLRESULT must be"),
        ('[3,"m1",null]', "CALLRESULT must be"),
        ('[4,"m1","GenericError",""]', "CALLERROR must be"),
        ('[4,"m1","GenericError","",{},{}]', "CALLERROR must be"),
        ('[4,"m1",500,"",{}]', "CALLERROR must be"),
        ('[4,"m1","GenericError",null,{}]', "CALLERROR must be"),
    ],
)
def test_wrong_shape_keeps_the_message_id(text: str, description: str) -> None:
    error = frame_error(text)
    assert (error.code, error.message_id) == ("FormatViolation", "m1")
    assert description in error.description


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
@pytest.mark.parametrize("kind", [0, 1, 5, 6, 7, -2, 99])
def test_unknown_message_type(kind: int, version: OcppVersion) -> None:
    # 1.6 and 2.0.1 have no CALLRESULTERROR (5) or SEND (6): MessageTypeNotSupported, which the
    # session answers (2.0.1) or ignores (1.6).
    error = frame_error(f'[{kind},"m1","Heartbeat",{{}}]', version)
    assert (error.code, error.message_id) == ("MessageTypeNotSupported", "m1")
    assert str(kind) in error.description
    assert error.answer


@pytest.mark.parametrize("kind", [0, 1, 7, -2, 99])
def test_unknown_message_type_in_2_1(kind: int) -> None:
    error = frame_error(f'[{kind},"m1","Heartbeat",{{}}]', "2.1")
    assert (error.code, error.message_id) == ("MessageTypeNotSupported", "m1")


def test_5_and_6_are_errors_without_a_version_that_has_them() -> None:
    # The default is 2.0.1: a caller that forgets the version cannot let 2.1 types through.
    assert frame_error('[6,"m1","NotifyPeriodicEventStream",{}]').code == "MessageTypeNotSupported"
    assert frame_error('[5,"m1","FormatViolation","",{}]').code == "MessageTypeNotSupported"


# --- OCPP 2.1: CALLRESULTERROR and SEND ----------------------------------------------------------


def test_message_type_constants_2_1() -> None:
    # OCPP 2.1 Part 4 §4.1.3, Table 3.
    assert (CALLRESULTERROR, SEND) == (5, 6)
    assert VERSIONS == ("1.6", "2.0.1", "2.1")


def test_call_result_error_2_1() -> None:
    frame = parse('[5,"19223201","FormatViolation","interval is not an integer",{"f":1}]', "2.1")
    assert frame == CallResultError(
        "19223201", "FormatViolation", "interval is not an integer", {"f": 1}
    )
    assert parse('[5,"x","GenericError","",null]', "2.1") == CallResultError("x", "GenericError")


def test_send_2_1() -> None:
    # The example of OCPP 2.1 Part 4 §4.2.4.
    text = (
        '[6,"19223201","NotifyPeriodicEventStream",{"id":123,"pending":0,'
        '"data":[{"t":"2024-08-27T12:30:40Z","v":"230.4"}]}]'
    )
    frame = parse(text, "2.1")
    assert frame == Send(
        "19223201",
        "NotifyPeriodicEventStream",
        {"id": 123, "pending": 0, "data": [{"t": "2024-08-27T12:30:40Z", "v": "230.4"}]},
    )


def test_the_2_0_1_types_parse_the_same_in_2_1() -> None:
    for text in ('[2,"a","Heartbeat",{}]', '[3,"a",{}]', '[4,"a","NotSupported","",{}]'):
        assert parse(text, "2.1") == parse(text, "2.0.1") == parse(text, "1.6")


def test_serialize_2_1_kinds() -> None:
    assert CallResultError("1", "GenericError").serialize() == '[5,"1","GenericError","",{}]'
    assert Send("1", "NotifyPeriodicEventStream", {"id": 1}).serialize() == (
        '[6,"1","NotifyPeriodicEventStream",{"id":1}]'
    )


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ('[6,"m1","NotifyPeriodicEventStream"]', "SEND must have 4 elements"),
        ('[6,"m1","A",{},{}]', "SEND must have 4 elements"),
        ('[6,"m1","",{}]', "SEND action must be a non-empty string"),
        ('[6,"m1",6,{}]', "SEND action must be a non-empty string"),
        ('[6,"m1","A",[]]', "SEND payload must be a JSON object"),
    ],
)
def test_malformed_send_gets_no_answer(text: str, description: str) -> None:
    # §4.2.4: "The receiver SHALL NOT respond to a SEND message with a CALLRESULT or CALLERROR".
    error = frame_error(text, "2.1")
    assert (error.code, error.message_id, error.answer) == ("FormatViolation", "m1", False)
    assert description in error.description


@pytest.mark.parametrize(
    "text",
    ['[5,"m1","GenericError",""]', '[5,"m1",5,"",{}]', '[5,"m1","GenericError",null,{}]'],
)
def test_malformed_call_result_error_keeps_the_id(text: str) -> None:
    error = frame_error(text, "2.1")
    assert (error.code, error.message_id, error.answer) == ("FormatViolation", "m1", True)
    assert "CALLRESULTERROR must be" in error.description


def test_stored_version_strings() -> None:
    assert [as_version(v) for v in ("1.6", "2.0.1", "2.1", "2.0")] == [
        "1.6",
        "2.0.1",
        "2.1",
        "2.0.1",
    ]


@pytest.mark.parametrize("kind", ["true", "false", '"2"', "null", "[2]", "{}"])
def test_message_type_that_is_not_an_integer(kind: str) -> None:
    # A boolean is not a message type even though Python's True == 1.
    error = frame_error(f'[{kind},"m1","Heartbeat",{{}}]')
    assert (error.code, error.message_id) == ("FormatViolation", "m1")
    assert "must be an integer" in error.description


def test_frame_error_is_a_gateway_error() -> None:
    error = frame_error("nope")
    assert isinstance(error, GatewayError)
    assert str(error) == error.description


# --- error code spellings ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "v16"),
    [
        ("FormatViolation", "FormationViolation"),  # OCPP-J 1.6 §4.2.3 (sic)
        ("OccurrenceConstraintViolation", "OccurenceConstraintViolation"),  # (sic)
        ("MessageTypeNotSupported", "NotSupported"),  # no such code in 1.6
        ("RpcFrameworkError", "GenericError"),  # no such code in 1.6
        ("NotImplemented", "NotImplemented"),
        ("NotSupported", "NotSupported"),
        ("InternalError", "InternalError"),
        ("ProtocolError", "ProtocolError"),
        ("SecurityError", "SecurityError"),
        ("PropertyConstraintViolation", "PropertyConstraintViolation"),
        ("TypeConstraintViolation", "TypeConstraintViolation"),
        ("GenericError", "GenericError"),
    ],
)
def test_error_code_for(code: str, v16: str) -> None:
    assert error_code_for("1.6", code) == v16
    assert error_code_for("2.0.1", code) == code


def test_error_code_for_leaves_1_6_spellings_alone() -> None:
    assert error_code_for("1.6", "FormationViolation") == "FormationViolation"
    assert error_code_for("2.0.1", "OccurenceConstraintViolation") == "OccurenceConstraintViolation"


# --- fuzz --------------------------------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

json_scalars = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=20,
)
# Values orjson writes and reads back unchanged: finite floats, 64-bit integers.
exact_scalars = st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False)
exact_values = st.recursive(
    exact_scalars | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=15,
)
payloads = st.dictionaries(st.text(), exact_values, max_size=5)
message_ids = st.text(min_size=1, max_size=36)

# Lists that look like frames, so the fuzz reaches every branch past the JSON decoder.
frame_like = st.builds(
    lambda kind, mid, rest: [kind, mid, *rest],
    st.sampled_from([2, 3, 4, 5, 6, 7, 0, True, False, 2.0, "2", None]),
    message_ids | json_scalars,
    st.lists(json_values, max_size=5),
)

valid_frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(Call, message_ids, st.text(min_size=1), payloads),
    st.builds(CallResult, message_ids, payloads),
    st.builds(CallError, message_ids, st.text(), st.text(), payloads),
)
valid_frames_2_1: st.SearchStrategy[Frame] = valid_frames | st.one_of(
    st.builds(CallResultError, message_ids, st.text(), st.text(), payloads),
    st.builds(Send, message_ids, st.text(min_size=1), payloads),
)


def check(text: str | bytes) -> None:
    """For every version, parse() returns a well-formed frame of that version or raises
    FrameError, never anything else; types 5 and 6 come out of 2.1 only."""
    for version in VERSIONS:
        check_version(text, version)


def check_version(text: str | bytes, version: OcppVersion) -> None:
    try:
        frame = parse(text, version)
    except FrameError as error:
        assert error.code in ("FormatViolation", "MessageTypeNotSupported")
        assert error.message_id == "-1" or 1 <= len(error.message_id) <= 36
        if not error.answer:  # only a SEND goes unanswered, and only in 2.1
            assert version == "2.1" and loads(text)[0] == SEND
        return
    kinds = (Call, CallResult, CallError, CallResultError, Send)
    assert isinstance(frame, kinds if version == "2.1" else kinds[:3])
    assert isinstance(frame.message_id, str)
    assert 1 <= len(frame.message_id) <= 36
    if isinstance(frame, (Call, CallResult, Send)):
        assert isinstance(frame.payload, dict)
    else:
        assert isinstance(frame.details, dict)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_fuzz_text(text: str) -> None:
    check(text)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_fuzz_bytes(data: bytes) -> None:
    check(data)


@settings(max_examples=300, deadline=None)
@given(json_values | frame_like)
def test_fuzz_json_values(value: Any) -> None:
    text = json.dumps(value)  # may contain NaN/Infinity, which is not JSON: FrameError too
    check(text)
    check(text.encode())


@settings(max_examples=300, deadline=None)
@given(valid_frames)
def test_round_trip(frame: Frame) -> None:
    text = frame.serialize()
    parsed = parse(text)
    assert parsed == frame
    assert parsed.serialize() == text
    assert parse(text.encode()) == frame


@settings(max_examples=300, deadline=None)
@given(valid_frames_2_1)
def test_round_trip_2_1(frame: Frame) -> None:
    text = frame.serialize()
    assert parse(text, "2.1") == frame
    assert parse(text.encode(), "2.1").serialize() == text
    if isinstance(frame, (CallResultError, Send)):
        assert frame_error(text, "2.0.1").code == "MessageTypeNotSupported"
        assert frame_error(text, "1.6").code == "MessageTypeNotSupported"


@pytest.mark.parametrize("kind", ["2.0", "true", '"2"'])
def test_message_type_must_be_an_integer_not_a_lookalike(kind: str) -> None:
    with pytest.raises(FrameError) as info:
        parse(f'[{kind}, "abc", "Heartbeat", {{}}]')
    assert info.value.code == "FormatViolation"
    assert info.value.message_id == "abc"
