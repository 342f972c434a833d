"""The pure core, on plain values: no sockets, no files."""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import pytest

from gateway.config import ChargersSettings
from gateway.core import offline, txmap
from gateway.core.admission import Admitted, Refused, admit, charge_point_id
from gateway.core.backoff import Backoff
from gateway.core.link import Event, InvalidTransition, LinkState, transition
from gateway.errors import FrameError
from gateway.ocpp.frames import OcppVersion
from gateway.ocpp.validation import validate_call, validate_result

NOW = datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)

# --- link state table ------------------------------------------------------------------------


def test_link_happy_path_and_outage() -> None:
    s = LinkState.OFFLINE
    s = transition(s, Event.CONNECTING)
    assert s is LinkState.CONNECTING
    s = transition(s, Event.CONNECTED_WITH_BACKLOG)
    assert s is LinkState.REPLAYING
    s = transition(s, Event.DRAINED)
    assert s is LinkState.ONLINE
    assert transition(s, Event.CALL_TIMEOUT) is LinkState.OFFLINE
    assert transition(s, Event.LOST) is LinkState.OFFLINE
    assert transition(s, Event.BACKLOG) is LinkState.REPLAYING


def test_link_rejects_impossible_events() -> None:
    with pytest.raises(InvalidTransition):
        transition(LinkState.OFFLINE, Event.DRAINED)
    with pytest.raises(InvalidTransition):
        transition(LinkState.ONLINE, Event.CONNECTED)


# --- offline action table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "action", "stored"),
    [
        ("1.6", "StartTransaction", True),
        ("1.6", "StopTransaction", True),
        ("1.6", "MeterValues", True),
        ("1.6", "StatusNotification", True),
        ("1.6", "Heartbeat", False),
        ("1.6", "Authorize", False),
        ("1.6", "DataTransfer", False),
        ("2.0.1", "TransactionEvent", True),
        ("2.0.1", "NotifyEvent", True),
        ("2.0.1", "Authorize", False),
    ],
)
def test_table_marks_what_is_stored(version: OcppVersion, action: str, stored: bool) -> None:
    assert offline.rule_for(version, action).stored is stored


def test_local_answers_per_action() -> None:
    boot = offline.local_result("1.6", "BootNotification", now=NOW, heartbeat_interval_s=300)
    assert boot == {
        "status": "Accepted",
        "currentTime": "2026-11-21T12:00:00.123Z",
        "interval": 300,
    }
    assert offline.local_result("2.0.1", "Heartbeat", now=NOW, heartbeat_interval_s=1) == {
        "currentTime": "2026-11-21T12:00:00.123Z"
    }
    info = {"status": "Accepted"}
    assert offline.local_result(
        "1.6", "Authorize", now=NOW, heartbeat_interval_s=1, auth_info=info
    ) == {"idTagInfo": info}
    assert offline.local_result(
        "2.0.1", "Authorize", now=NOW, heartbeat_interval_s=1, auth_info=info
    ) == {"idTokenInfo": info}
    start = offline.local_result(
        "1.6", "StartTransaction", now=NOW, heartbeat_interval_s=1, auth_info=info, transaction_id=7
    )
    assert start == {"idTagInfo": info, "transactionId": 7}
    assert offline.local_result("1.6", "StopTransaction", now=NOW, heartbeat_interval_s=1) == {}
    assert offline.local_result("2.0.1", "TransactionEvent", now=NOW, heartbeat_interval_s=1) == {}
    assert offline.local_result("1.6", "StatusNotification", now=NOW, heartbeat_interval_s=1) == {}
    with pytest.raises(ValueError):
        offline.local_result("1.6", "DataTransfer", now=NOW, heartbeat_interval_s=1)
    with pytest.raises(ValueError):
        offline.local_result("1.6", "StartTransaction", now=NOW, heartbeat_interval_s=1)


def test_presented_tag() -> None:
    assert offline.presented_tag("1.6", "Authorize", {"idTag": "abc"}) == "abc"
    assert offline.presented_tag("1.6", "StopTransaction", {"transactionId": 1}) is None
    assert offline.presented_tag("1.6", "MeterValues", {"idTag": "x"}) is None
    token = {"idToken": {"idToken": "AA:BB", "type": "MacAddress"}}
    assert offline.presented_tag("2.0.1", "TransactionEvent", token) == "AA:BB"
    assert offline.presented_tag("2.0.1", "Authorize", {"idToken": "flat"}) is None


# --- transaction ids -----------------------------------------------------------------------------

LOCAL = txmap.LOCAL_TX_MIN + 5


def test_rewrite_to_cloud_and_back() -> None:
    ids = txmap.TxIdMap([(LOCAL, 991), (LOCAL + 1, None)])
    stop = {"transactionId": LOCAL, "meterStop": 5, "timestamp": "t"}
    assert (
        txmap.rewrite_to_cloud("StopTransaction", stop, ids.local_to_cloud)["transactionId"] == 991
    )
    assert stop["transactionId"] == LOCAL  # not mutated
    with pytest.raises(txmap.UnmappedTransaction):
        txmap.rewrite_to_cloud("MeterValues", {"transactionId": LOCAL + 1}, ids.local_to_cloud)
    cloud_ids = {"transactionId": 5}  # a cloud id passes untouched
    assert txmap.rewrite_to_cloud("StopTransaction", cloud_ids, ids.local_to_cloud) is cloud_ids
    remote = txmap.rewrite_to_charger(
        "RemoteStopTransaction", {"transactionId": 991}, ids.cloud_to_local
    )
    assert remote == {"transactionId": LOCAL}
    profile = {
        "connectorId": 1,
        "csChargingProfiles": {"transactionId": 991, "chargingProfileId": 3},
    }
    rewritten = txmap.rewrite_to_charger("SetChargingProfile", profile, ids.cloud_to_local)
    assert rewritten["csChargingProfiles"] == {"transactionId": LOCAL, "chargingProfileId": 3}
    other = {"transactionId": 12}
    assert txmap.rewrite_to_charger("RemoteStopTransaction", other, ids.cloud_to_local) is other


def test_local_range_is_int32() -> None:
    assert txmap.is_local(txmap.LOCAL_TX_MIN) and txmap.is_local(txmap.LOCAL_TX_MAX)
    assert not txmap.is_local(txmap.LOCAL_TX_MIN - 1) and not txmap.is_local("2000000001")
    assert txmap.LOCAL_TX_MAX == 2**31 - 1


# --- admission -----------------------------------------------------------------------------------


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_charge_point_id_from_path() -> None:
    assert charge_point_id("/ocpp/CP-1", "/ocpp") == "CP-1"
    assert charge_point_id("/ocpp/CP%2D1?x=1", "/ocpp") == "CP-1"
    assert charge_point_id("/ocpp/a%2Fb", "/ocpp") is None
    assert charge_point_id("/ocpp/" + "x" * 48, "/ocpp") == "x" * 48
    assert charge_point_id("/ocpp/" + "x" * 49, "/ocpp") is None
    assert charge_point_id("/CP-1", "") == "CP-1"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/ocpp/CP%201", None),  # a space: it would break log lines and Basic user names
        ("/ocpp/Lades%C3%A4ule-7", "Ladesäule-7"),  # UTF-8 once decoded: kept
        ("/ocpp/%E2%82%AC" + "x" * 47, "€" + "x" * 47),  # 48 characters (50 bytes)
        ("/ocpp/%E2%82%AC" + "x" * 48, None),  # 49 characters
        ("/ocpp/", None),  # empty
        ("/ocpp", None),
        ("/ocpp/?x=1", None),  # empty before the query
        ("/ocpp/a%2fb", None),  # / once decoded (either case of the escape)
        ("/ocpp/a/b", None),
        ("/ocpp/%ZZ", None),  # not an escape
        ("/ocpp/CP%2", None),  # a cut escape
        ("/ocpp/CP%", None),
        ("/ocpp/%FF%FE", None),  # not UTF-8
        ("/ocpp/%C3", None),  # a cut UTF-8 sequence
        ("/ocpp/%00CP", None),  # a control character
        ("/other/CP-1", None),
    ],
)
def test_charge_point_ids_refused_and_kept(path: str, expected: str | None) -> None:
    assert charge_point_id(path, "/ocpp") == expected
    decision = admit(path, None, ChargersSettings())
    if expected is None:
        assert isinstance(decision, Refused) and decision.status == HTTPStatus.NOT_FOUND
    else:
        assert decision == Admitted(expected)


def test_refusals_say_why() -> None:
    reasons = {
        path: admit(path, None, ChargersSettings())
        for path in ["/ocpp/", "/ocpp/a%2Fb", "/ocpp/%ZZ", "/ocpp/" + "x" * 49]
    }
    assert [r.reason for r in reasons.values() if isinstance(r, Refused)] == [
        "charge point id is empty",
        "charge point id contains /",
        "charge point id is not valid percent-encoded UTF-8",
        "charge point id longer than 48",
    ]


def test_admission_rules() -> None:
    open_ = ChargersSettings()
    assert admit("/ocpp/CP-1", None, open_) == Admitted("CP-1")
    closed = ChargersSettings(allow_unknown=False, passwords={"CP-1": "secret-password-16"})
    assert admit("/ocpp/CP-2", None, closed) == Refused(
        HTTPStatus.NOT_FOUND, "unknown charge point CP-2"
    )
    hexkey = "00112233445566778899aabbccddeeff"
    auth = ChargersSettings(auth="basic", passwords={"CP-1": hexkey, "CP-2": "plain-password-16"})
    raw_key = bytes.fromhex(hexkey)
    header = "Basic " + base64.b64encode(b"CP-1:" + raw_key).decode()
    assert admit("/ocpp/CP-1", header, auth) == Admitted("CP-1")  # 1.6 AuthorizationKey bytes
    assert admit("/ocpp/CP-1", basic("CP-1", hexkey), auth) == Admitted("CP-1")  # the hex text
    assert admit("/ocpp/CP-2", basic("CP-2", "plain-password-16"), auth) == Admitted("CP-2")
    for refused in [None, "Bearer x", "Basic !!!", basic("CP-2", "plain-password-16")]:
        decision = admit("/ocpp/CP-1", refused, auth)
        assert isinstance(decision, Refused) and decision.status == HTTPStatus.UNAUTHORIZED
    assert admit("/ocpp/CP-3", basic("CP-3", "x"), auth).status == HTTPStatus.UNAUTHORIZED  # type: ignore[union-attr]


# --- backoff ---------------------------------------------------------------------------------------


def test_backoff_grows_caps_jitters_and_resets() -> None:
    b = Backoff(initial_s=1, max_s=8, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(6)]
    bases = [1, 2, 4, 8, 8, 8]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))
    assert len(set(delays)) == 6  # jittered
    b.reset()
    assert b.next_delay() <= 1


# --- validation of what the gateway acts on ----------------------------------------------------


def test_validation_codes() -> None:
    validate_call("1.6", "Authorize", {"idTag": "ABC"}, "1")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"idTag": 5}, "TypeConstraintViolation"),
        ({"idTag": "x" * 21}, "TypeConstraintViolation"),
        ({}, "OccurrenceConstraintViolation"),
        ({"idTag": "a", "extra": 1}, "FormatViolation"),
    ]
    for payload, code in cases:
        with pytest.raises(FrameError) as info:
            validate_call("1.6", "Authorize", payload, "mid")
        assert info.value.code == code and info.value.message_id == "mid"
    with pytest.raises(FrameError) as info:
        validate_result(
            "1.6",
            "StartTransaction",
            {"transactionId": "7", "idTagInfo": {"status": "Accepted"}},
            "m",
        )
    assert info.value.code == "TypeConstraintViolation"


def test_transactional_actions_come_from_the_table() -> None:
    assert {
        "StartTransaction",
        "StopTransaction",
        "MeterValues",
        "TransactionEvent",
        "NotifySettlement",  # 2.1: a payment terminal's settlement
    } == offline.TRANSACTIONAL_ACTIONS
    assert all(offline.rule_for("1.6", a).stored for a in ("StartTransaction", "MeterValues"))
