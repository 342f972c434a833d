"""Authorize validation against the reference interpreter (jsonschema, as the ocpp package uses)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ocpp.messages import get_validator

from gateway.errors import FrameError
from gateway.ocpp.frames import CALL, OcppVersion
from gateway.ocpp.validation import validate_call


def schema_accepts(version: OcppVersion, payload: Any) -> bool:
    return bool(get_validator(CALL, "Authorize", version).is_valid(payload))


def gateway_accepts(version: OcppVersion, payload: Any) -> bool:
    try:
        validate_call(version, "Authorize", payload, "m1")
    except FrameError:
        return False
    return True


TOKEN = {"idToken": "RFID00000001", "type": "ISO14443"}


@pytest.mark.parametrize(
    ("version", "payload", "code"),
    [
        ("1.6", {"idTag": "A" * 20}, None),
        ("1.6", {"idTag": "é" * 20}, None),  # maxLength counts characters, not bytes
        ("1.6", {"idTag": "A" * 21}, "TypeConstraintViolation"),
        ("1.6", {"idTag": 5}, "TypeConstraintViolation"),
        ("1.6", {"idTag": "A", "extra": 1}, "FormatViolation"),
        ("1.6", {}, "OccurrenceConstraintViolation"),
        ("2.0.1", {"idToken": TOKEN}, None),
        ("2.0.1", {"idToken": {**TOKEN, "idToken": "x" * 36}}, None),
        ("2.0.1", {"idToken": {**TOKEN, "customData": {"vendorId": "v"}}}, None),
        ("2.0.1", {"idToken": TOKEN, "certificate": "PEM"}, None),
        ("2.0.1", {"idToken": {**TOKEN, "idToken": "x" * 37}}, "TypeConstraintViolation"),
        ("2.0.1", {"idToken": {**TOKEN, "type": "Badge"}}, "PropertyConstraintViolation"),
        ("2.0.1", {"idToken": {"idToken": "A"}}, "OccurrenceConstraintViolation"),
        ("2.0.1", {"idToken": {**TOKEN, "colour": "red"}}, "FormatViolation"),
        ("2.0.1", {"idToken": "RFID00000001"}, "TypeConstraintViolation"),
    ],
)
def test_authorize_errors_keep_their_codes(
    version: OcppVersion, payload: dict[str, Any], code: str | None
) -> None:
    assert gateway_accepts(version, payload) is schema_accepts(version, payload)
    if code is None:
        validate_call(version, "Authorize", payload, "m1")
        return
    with pytest.raises(FrameError) as info:
        validate_call(version, "Authorize", payload, "m1")
    assert (info.value.code, info.value.message_id) == (code, "m1")


_values = st.one_of(
    st.text(max_size=40),
    st.integers(),
    st.none(),
    st.sampled_from(["ISO14443", "MacAddress", "Central", "iso14443", ""]),
)
_token = st.dictionaries(st.sampled_from(["idToken", "type", "other"]), _values, max_size=3)
_payload = st.dictionaries(
    st.sampled_from(["idTag", "idToken", "other"]), st.one_of(_values, _token), max_size=2
)


@settings(max_examples=400, deadline=None)
@given(payload=_payload, version=st.sampled_from(["1.6", "2.0.1"]))
def test_authorize_accepts_exactly_what_the_schema_accepts(
    payload: dict[str, Any], version: OcppVersion
) -> None:
    assert gateway_accepts(version, payload) is schema_accepts(version, payload)
