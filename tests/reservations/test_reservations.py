"""The pure reservation rules: request validation, payloads, answers, recording, offline gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ocpp.exceptions import TypeConstraintViolationError
from ocpp.messages import Call, validate_payload

from gateway.config import PortMapping
from gateway.errors import ChargerBadAnswer, InvalidReservationRequest, UnknownPort
from gateway.reservations.gate import (
    Refusal,
    decide_gate,
    gate_target,
    parent_of,
    refusal_status,
    refused_info,
)
from gateway.reservations.rules import (
    CANCEL_STATUSES,
    ID_TOKEN_TYPES,
    RESERVE_STATUSES,
    Closing,
    Reservation,
    ReserveRequest,
    apply_cancel,
    apply_closing,
    apply_reserve,
    cancel_payload,
    cancel_status,
    check_for_version,
    closing_of,
    format_time,
    is_active,
    new_reservation,
    parse_cancel_request,
    parse_reserve_call,
    parse_reserve_request,
    parse_time,
    reservation_from_row,
    reservation_json,
    reserve_now_payload,
    reserve_status,
    resolve_port,
    split_expired,
)

NOW = datetime(2026, 11, 21, 18, 0, tzinfo=UTC)
LATER = "2026-11-21T19:30:00Z"


def body(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "portId": 101,
        "expiryDate": LATER,
        "idTag": "04A2B3C4D5",
        "reservationId": 42,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def error_of(raw: Any) -> InvalidReservationRequest:
    with pytest.raises(InvalidReservationRequest) as info:
        parse_reserve_request(raw, NOW)
    return info.value


# --- request validation ---------------------------------------------------------------------


def test_valid_body_is_parsed_with_utc_expiry() -> None:
    request = parse_reserve_request(
        body(parentIdTag="GROUP1", idTokenType="ISO14443", expiryDate="2026-11-21T20:30:00+01:00"),
        NOW,
    )
    assert request.port_id == 101
    assert request.reservation_id == 42
    assert request.id_tag == "04A2B3C4D5"
    assert request.parent_id_tag == "GROUP1"
    assert request.id_token_type == "ISO14443"
    assert request.expiry_date == datetime(2026, 11, 21, 19, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"idTag": "X" * 21}, "idTag", "at most 20 characters"),
        ({"idTag": ""}, "idTag", "must not be empty"),
        ({"idTag": "   "}, "idTag", "blank"),
        ({"idTag": 1234}, "idTag", "must be a string"),
        ({"expiryDate": "tomorrow"}, "expiryDate", "ISO 8601"),
        ({"expiryDate": "2026-11-22"}, "expiryDate", "ISO 8601"),
        ({"expiryDate": "2026-13-01T00:00:00Z"}, "expiryDate", "expiryDate"),
        ({"expiryDate": 1795000000}, "expiryDate", "ISO 8601"),
        ({"expiryDate": "2026-11-21T17:59:59Z"}, "expiryDate", "in the future"),
        ({"expiryDate": "2026-11-21T18:00:00Z"}, "expiryDate", "in the future"),
        ({"reservationId": "42"}, "reservationId", "must be an integer"),
        ({"reservationId": 4.5}, "reservationId", "must be an integer"),
        ({"reservationId": True}, "reservationId", "must be an integer"),
        ({"reservationId": -1}, "reservationId", "between 0 and"),
        ({"reservationId": 2**31}, "reservationId", "between 0 and"),
        ({"portId": "101"}, "portId", "must be an integer"),
        ({"idTokenType": "NoAuthorization"}, "idTokenType", "one of Central, eMAID"),
        ({"idTokenType": "central"}, "idTokenType", "one of"),
        ({"parentIdTag": "P" * 21}, "parentIdTag", "at most 20 characters"),
        ({"colour": "red"}, "colour", "not a known field"),
    ],
)
def test_invalid_field_is_named(changes: dict[str, Any], field: str, fragment: str) -> None:
    error = error_of(body(**changes))
    assert error.field == field
    assert str(error).startswith(field)
    assert fragment in str(error)


@pytest.mark.parametrize("missing", ["portId", "expiryDate", "idTag", "reservationId"])
def test_missing_required_field_is_named(missing: str) -> None:
    raw = body()
    del raw[missing]
    error = error_of(raw)
    assert error.field == missing
    assert str(error) == f"{missing} is required"


@pytest.mark.parametrize("raw", [[], "x", None, 3])
def test_body_must_be_an_object(raw: Any) -> None:
    assert error_of(raw).field == "body"


def test_several_errors_are_all_named() -> None:
    error = error_of(body(idTag="X" * 30, reservationId="x"))
    assert "idTag" in str(error) and "reservationId" in str(error)


def test_every_documented_id_token_type_is_accepted() -> None:
    assert ID_TOKEN_TYPES == (
        "Central",
        "eMAID",
        "ISO14443",
        "ISO15693",
        "KeyCode",
        "Local",
        "MacAddress",
    )
    for kind in ID_TOKEN_TYPES:
        assert parse_reserve_request(body(idTokenType=kind), NOW).id_token_type == kind


def test_cancel_body() -> None:
    assert parse_cancel_request({"portId": 101, "reservationId": 7}).reservation_id == 7
    with pytest.raises(InvalidReservationRequest) as info:
        parse_cancel_request({"portId": 101})
    assert info.value.field == "reservationId"
    with pytest.raises(InvalidReservationRequest) as info:
        parse_cancel_request({"portId": 1.5, "reservationId": 7})
    assert info.value.field == "portId"


def test_parent_id_tag_is_refused_for_201_only() -> None:
    request = parse_reserve_request(body(parentIdTag="GROUP1"), NOW)
    check_for_version(request, "1.6")
    with pytest.raises(InvalidReservationRequest) as info:
        check_for_version(request, "2.0.1")
    assert info.value.field == "parentIdTag"
    # idTokenType is documented as ignored for 1.6 chargers, not an error.
    check_for_version(parse_reserve_request(body(idTokenType="KeyCode"), NOW), "1.6")


def test_naive_time_is_utc_and_format_round_trips() -> None:
    assert parse_time("2026-11-21T19:30:00") == datetime(2026, 11, 21, 19, 30, tzinfo=UTC)
    assert format_time(parse_time("2026-11-21T20:30:00+01:00")) == "2026-11-21T19:30:00.000Z"
    assert format_time(parse_time("2026-11-21T19:30:00.250Z")) == "2026-11-21T19:30:00.250Z"


def test_resolve_port() -> None:
    ports = [
        PortMapping(id=101, charger="CP-1", connector=1),
        PortMapping(id=7, charger="B", connector=2),
    ]
    assert resolve_port(ports, 7).charger == "B"
    with pytest.raises(UnknownPort, match="unknown portId 8"):
        resolve_port(ports, 8)


# --- payloads and answers ---------------------------------------------------------------------


def request_of(**changes: Any) -> ReserveRequest:
    return parse_reserve_request(body(**changes), NOW)


def test_reserve_now_payload_16() -> None:
    assert reserve_now_payload("1.6", 2, request_of()) == {
        "connectorId": 2,
        "expiryDate": "2026-11-21T19:30:00.000Z",
        "idTag": "04A2B3C4D5",
        "reservationId": 42,
    }
    with_parent = reserve_now_payload("1.6", 0, request_of(parentIdTag="G", idTokenType="Local"))
    assert with_parent == {
        "connectorId": 0,
        "expiryDate": "2026-11-21T19:30:00.000Z",
        "idTag": "04A2B3C4D5",
        "reservationId": 42,
        "parentIdTag": "G",
    }


def test_reserve_now_payload_201() -> None:
    assert reserve_now_payload("2.0.1", 2, request_of()) == {
        "id": 42,
        "expiryDateTime": "2026-11-21T19:30:00.000Z",
        "idToken": {"idToken": "04A2B3C4D5", "type": "Central"},
        "evseId": 2,
    }
    typed = reserve_now_payload("2.0.1", 0, request_of(idTokenType="ISO15693"))
    assert typed == {
        "id": 42,
        "expiryDateTime": "2026-11-21T19:30:00.000Z",
        "idToken": {"idToken": "04A2B3C4D5", "type": "ISO15693"},
    }


async def test_payloads_match_the_ocpp_schemas() -> None:
    for version in ("1.6", "2.0.1"):
        for payload in (
            reserve_now_payload(version, 1, request_of()),
            reserve_now_payload(version, 0, request_of(idTokenType="eMAID")),
        ):
            await validate_payload(Call("1", "ReserveNow", payload), ocpp_version=version)
        cancel = Call("2", "CancelReservation", cancel_payload(version, 42))
        await validate_payload(cancel, ocpp_version=version)
    bad = reserve_now_payload("1.6", 1, request_of())
    bad["idTag"] = "X" * 21
    with pytest.raises(TypeConstraintViolationError):
        await validate_payload(Call("3", "ReserveNow", bad), ocpp_version="1.6")


def test_cancel_payload() -> None:
    assert cancel_payload("1.6", 5) == {"reservationId": 5}
    assert cancel_payload("2.0.1", 5) == {"reservationId": 5}


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
@pytest.mark.parametrize("status", sorted(RESERVE_STATUSES))
def test_reserve_status_passes_every_value(version: Any, status: str) -> None:
    assert reserve_status(version, {"status": status}) == status


def test_reserve_status_allows_201_status_info() -> None:
    answer = {"status": "Rejected", "statusInfo": {"reasonCode": "NoProfile"}}
    assert reserve_status("2.0.1", answer) == "Rejected"
    with pytest.raises(ChargerBadAnswer, match="statusInfo"):
        reserve_status("1.6", answer)  # 1.6 objects have additionalProperties: false


@pytest.mark.parametrize(
    "answer", [{"status": "Reserved"}, {"status": "accepted"}, {}, {"status": 1}, [], None]
)
@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_reserve_status_outside_the_schema_is_an_error(version: Any, answer: Any) -> None:
    with pytest.raises(ChargerBadAnswer):
        reserve_status(version, answer)


def test_cancel_status() -> None:
    for version in ("1.6", "2.0.1"):
        for status in sorted(CANCEL_STATUSES):
            assert cancel_status(version, {"status": status}) == status
        with pytest.raises(ChargerBadAnswer, match="CancelReservation"):
            cancel_status(version, {"status": "Occupied"})


# --- recording rules ----------------------------------------------------------------------


def test_parse_reserve_call_both_versions() -> None:
    v16 = parse_reserve_call(
        "1.6",
        {
            "connectorId": 0,
            "expiryDate": LATER,
            "idTag": "abc",
            "parentIdTag": "grp",
            "reservationId": 3,
        },
    )
    assert v16 is not None
    assert (v16.reservation_id, v16.connector_id, v16.id_tag, v16.parent_id_tag) == (
        3,
        None,
        "abc",
        "grp",
    )
    v201 = parse_reserve_call(
        "2.0.1",
        {
            "id": 4,
            "expiryDateTime": LATER,
            "idToken": {"idToken": "abc", "type": "ISO14443"},
            "groupIdToken": {"idToken": "grp", "type": "Central"},
            "evseId": 2,
        },
    )
    assert v201 is not None
    assert (v201.reservation_id, v201.connector_id, v201.parent_id_tag) == (4, 2, "grp")
    assert v201.expiry == parse_time(LATER)


@pytest.mark.parametrize(
    ("version", "payload"),
    [
        ("1.6", {"expiryDate": LATER, "idTag": "a", "reservationId": 1}),
        ("1.6", {"connectorId": 1, "expiryDate": "soon", "idTag": "a", "reservationId": 1}),
        ("1.6", {"connectorId": 1, "expiryDate": LATER, "idTag": "a", "reservationId": "1"}),
        ("2.0.1", {"id": 1, "expiryDateTime": LATER, "idToken": "a"}),
        ("2.0.1", []),
    ],
)
def test_unreadable_reserve_call(version: Any, payload: Any) -> None:
    assert parse_reserve_call(version, payload) is None


def make(
    rid: int = 1,
    *,
    connector: int | None = 1,
    tag: str = "ALICE",
    parent: str | None = None,
    status: str = "Accepted",
    expiry: datetime = NOW + timedelta(hours=1),
    source: Any = "api",
) -> Reservation:
    call = parse_reserve_call(
        "1.6",
        {
            "connectorId": connector or 0,
            "expiryDate": format_time(expiry),
            "idTag": tag,
            "reservationId": rid,
            **({"parentIdTag": parent} if parent else {}),
        },
    )
    assert call is not None
    return new_reservation("CP-1", call, source=source, status=status, now=NOW)


def test_new_reservation_state_follows_the_answer() -> None:
    assert make(status="Accepted").state == "active"
    for status in ("Faulted", "Occupied", "Rejected", "Unavailable"):
        assert make(status=status).state == "refused"
    assert make(status="NoAnswer").state == "failed"


def test_row_round_trip() -> None:
    record = make(parent="GRP", connector=None, source="cloud")
    columns = [
        "charger_id",
        "reservation_id",
        "connector_id",
        "id_tag",
        "parent_id_tag",
        "expiry_date",
        "source",
        "status",
        "state",
        "created_at",
        "updated_at",
    ]
    assert reservation_from_row(dict(zip(columns, record.row(), strict=True))) == record


def test_apply_reserve_replaces_only_when_accepted() -> None:
    old = make(tag="ALICE")
    later = NOW + timedelta(minutes=5)
    replacement = replace_time(make(tag="BOB"), later)
    written = apply_reserve(old, replacement)
    assert written is not None and written.id_tag == "BOB" and written.created_at == NOW
    # A refused replacement leaves the charger's (and our) reservation in place.
    assert apply_reserve(old, make(tag="BOB", status="Occupied")) is None
    # With no active record, a refusal is recorded as such.
    refused = apply_reserve(None, make(status="Rejected"))
    assert refused is not None and refused.state == "refused"


def replace_time(record: Reservation, when: datetime) -> Reservation:
    from dataclasses import replace

    return replace(record, created_at=when, updated_at=when)


def test_apply_cancel() -> None:
    active = make()
    cancelled = apply_cancel(active, "Accepted", NOW)
    assert cancelled is not None and cancelled.state == "cancelled"
    removed = apply_cancel(active, "Rejected", NOW)
    assert removed is not None and removed.state == "removed"
    assert apply_cancel(None, "Accepted", NOW) is None
    assert apply_cancel(make(status="Rejected"), "Accepted", NOW) is None


@pytest.mark.parametrize(
    ("version", "action", "payload", "expected"),
    [
        ("1.6", "StartTransaction", {"connectorId": 1, "idTag": "A", "reservationId": 9}, "used"),
        ("1.6", "StartTransaction", {"connectorId": 1, "idTag": "A"}, None),
        ("2.0.1", "TransactionEvent", {"eventType": "Started", "reservationId": 9}, "used"),
        ("2.0.1", "TransactionEvent", {"eventType": "Updated"}, None),
        (
            "2.0.1",
            "ReservationStatusUpdate",
            {"reservationId": 9, "reservationUpdateStatus": "Expired"},
            "expired",
        ),
        (
            "2.0.1",
            "ReservationStatusUpdate",
            {"reservationId": 9, "reservationUpdateStatus": "Removed"},
            "removed",
        ),
        (
            "2.0.1",
            "ReservationStatusUpdate",
            {"reservationId": 9, "reservationUpdateStatus": "Other"},
            None,
        ),
        (
            "1.6",
            "ReservationStatusUpdate",
            {"reservationId": 9, "reservationUpdateStatus": "Expired"},
            None,
        ),
        ("1.6", "Authorize", {"idTag": "A", "reservationId": 9}, None),
        ("2.0.1", "StartTransaction", {"reservationId": 9}, None),
    ],
)
def test_closing_of(
    version: Any, action: str, payload: dict[str, Any], expected: str | None
) -> None:
    closing = closing_of(version, action, payload)
    assert (closing.state if closing else None) == expected
    if closing is not None:
        assert closing.reservation_id == 9


def test_apply_closing_only_closes_active_records() -> None:
    used = apply_closing(make(), Closing(1, "used"), NOW)
    assert used is not None and used.state == "used" and used.updated_at == NOW
    assert apply_closing(make(status="Rejected"), Closing(1, "used"), NOW) is None
    assert apply_closing(None, Closing(1, "used"), NOW) is None


def test_expiry() -> None:
    soon = make(1, expiry=NOW + timedelta(seconds=1))
    past = make(2, expiry=NOW)
    refused = make(3, status="Rejected")
    assert is_active(soon, NOW) and not is_active(past, NOW) and not is_active(refused, NOW)
    active, expired = split_expired([soon, past, refused], NOW)
    assert active == [soon]
    assert [(r.reservation_id, r.state) for r in expired] == [(2, "expired")]


# --- offline gate --------------------------------------------------------------------------


def upper(tag: str) -> str:
    return tag.strip().upper()


def gate(
    reservations: list[Reservation],
    connector: int | None,
    tag: str,
    *,
    version: Any = "1.6",
    parent: str | None = None,
    connectors: frozenset[int] = frozenset(),
    now: datetime = NOW,
) -> str | None:
    refusal = decide_gate(
        reservations,
        version=version,
        connector_id=connector,
        tag_key=upper(tag),
        parent_key=upper(parent) if parent else None,
        now=now,
        normalise=upper,
        connectors=connectors,
    )
    return refusal.status if refusal else None


def test_gate_refuses_other_tags_on_the_reserved_connector() -> None:
    booked = [make(connector=1, tag="alice")]
    assert gate(booked, 1, "BOB") == "Invalid"
    assert gate(booked, 1, "BOB", version="2.0.1") == "NotAtThisTime"
    assert gate(booked, 1, " Alice ") is None  # compared normalised
    assert gate(booked, 2, "BOB") is None  # another connector is free


def test_gate_accepts_the_parent_group() -> None:
    booked = [make(connector=1, tag="alice", parent="fleet")]
    assert gate(booked, 1, "carol", parent="FLEET") is None
    assert gate(booked, 1, "fleet") is None
    assert gate(booked, 1, "carol", parent="other") == "Invalid"
    assert gate(booked, 1, "carol") == "Invalid"


def test_gate_ends_with_the_reservation() -> None:
    booked = [make(connector=1, tag="alice", expiry=NOW + timedelta(minutes=1))]
    assert gate(booked, 1, "bob", now=NOW + timedelta(seconds=59)) == "Invalid"
    assert gate(booked, 1, "bob", now=NOW + timedelta(minutes=1)) is None
    assert gate([make(status="Rejected")], 1, "bob") is None
    assert gate([], 1, "bob") is None


def test_gate_without_connector_refuses_only_when_nothing_is_left() -> None:
    booked = [make(1, connector=1, tag="alice")]
    assert gate(booked, None, "bob") is None  # layout unknown: maybe another connector
    assert gate(booked, None, "bob", connectors=frozenset({1, 2})) is None
    assert gate(booked, None, "bob", connectors=frozenset({1})) == "Invalid"
    both = [*booked, make(2, connector=2, tag="dave")]
    assert gate(both, None, "bob", connectors=frozenset({1, 2})) == "Invalid"
    assert gate(both, None, "alice", connectors=frozenset({1, 2})) is None


def test_gate_whole_charger_reservation() -> None:
    whole = [make(connector=None, tag="alice")]
    # 1.6 §5.13: with connectorId 0 one connector must stay free; only the charger can judge that.
    assert gate(whole, 1, "bob", connectors=frozenset({1, 2})) is None
    assert gate(whole, None, "bob", connectors=frozenset({1, 2})) is None
    assert gate(whole, 1, "bob", connectors=frozenset({1})) == "Invalid"
    assert gate(whole, None, "bob", connectors=frozenset({1})) == "Invalid"
    assert gate(whole, 1, "alice", connectors=frozenset({1})) is None


def test_refusal_status_per_version() -> None:
    assert refusal_status("1.6") == "Invalid"
    assert refusal_status("2.0.1") == "NotAtThisTime"


@pytest.mark.parametrize(
    ("version", "action", "payload", "expected"),
    [
        ("1.6", "Authorize", {"idTag": "A"}, ("A", None)),
        ("1.6", "StartTransaction", {"connectorId": 2, "idTag": "A"}, ("A", 2)),
        ("1.6", "StartTransaction", {"connectorId": 0, "idTag": "A"}, ("A", None)),
        ("1.6", "StopTransaction", {"idTag": "A", "transactionId": 1}, None),
        ("2.0.1", "Authorize", {"idToken": {"idToken": "A", "type": "Local"}}, ("A", None)),
        (
            "2.0.1",
            "TransactionEvent",
            {"eventType": "Started", "evse": {"id": 3}, "idToken": {"idToken": "A"}},
            ("A", 3),
        ),
        (
            "2.0.1",
            "TransactionEvent",
            {"eventType": "Updated", "idToken": {"idToken": "A"}},
            ("A", None),
        ),
        ("2.0.1", "TransactionEvent", {"eventType": "Ended", "idToken": {"idToken": "A"}}, None),
        ("2.0.1", "TransactionEvent", {"eventType": "Started"}, None),
    ],
)
def test_gate_target(
    version: Any, action: str, payload: dict[str, Any], expected: tuple[str, int | None] | None
) -> None:
    target = gate_target(version, action, payload)
    assert (None if target is None else (target.tag, target.connector_id)) == expected


def test_parent_of_and_refused_info() -> None:
    assert parent_of("1.6", {"status": "Accepted", "parentIdTag": "FLEET"}) == "FLEET"
    assert parent_of("2.0.1", {"status": "Accepted", "groupIdToken": {"idToken": "G"}}) == "G"
    assert parent_of("2.0.1", {"status": "Accepted"}) is None
    reservation = make(expiry=NOW + timedelta(minutes=30))
    refusal = Refusal("Invalid", reservation)
    info_16 = refused_info(
        "1.6", {"status": "Accepted", "expiryDate": "x", "parentIdTag": "F"}, refusal
    )
    assert info_16 == {"status": "Invalid", "parentIdTag": "F"}
    info_201 = refused_info("2.0.1", {"status": "Accepted"}, Refusal("NotAtThisTime", reservation))
    assert info_201 == {
        "status": "NotAtThisTime",
        "cacheExpiryDateTime": "2026-11-21T18:30:00.000Z",
    }


def test_reservation_json_names_the_port() -> None:
    ports = [PortMapping(id=101, charger="CP-1", connector=1)]
    shown = reservation_json(make(connector=1), ports)
    assert shown["portId"] == 101 and shown["reservationId"] == 1 and shown["idTag"] == "ALICE"
    assert shown["expiryDate"] == "2026-11-21T19:00:00.000Z" and shown["state"] == "active"
    assert reservation_json(make(connector=None), ports)["portId"] is None
