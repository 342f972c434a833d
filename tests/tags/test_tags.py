"""The pure tag core: normalisation, the offline decision, answer shapes, what to learn."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.tags.rules import (
    Decision,
    LearnedTag,
    SyncedTag,
    decide,
    id_tag_info,
    id_token_info,
    learnable,
    learned_status,
    normalise,
    parse_datetime,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("aa:bb:cc:dd:ee:ff", "AABBCCDDEEFF"),
        ("AA-BB-CC-DD-EE-FF", "AABBCCDDEEFF"),
        ("aabbccddeeff", "AABBCCDDEEFF"),
        ("VID:aa:bb:cc:dd:ee:ff", "AABBCCDDEEFF"),
        ("vid:AABBCCDDEEFF", "AABBCCDDEEFF"),
        ("Vid:0a-1b-2c-3d-4e-5f", "0A1B2C3D4E5F"),
        ("  vid:aa:bb:cc:dd:ee:ff \n", "AABBCCDDEEFF"),
        ("AABB.CCDD.EEFF", "AABBCCDDEEFF"),
        ("vid:aabb.ccdd.eeff", "AABBCCDDEEFF"),
        ("  04a2b3c4d5  ", "04A2B3C4D5"),
        ("rfid-card-7", "RFID-CARD-7"),
        # not MAC forms: only trimmed and upper-cased
        ("aa:bb-cc:dd:ee:ff", "AA:BB-CC:DD:EE:FF"),
        ("aa:bb:cc:dd:ee", "AA:BB:CC:DD:EE"),
        ("VID:not-a-mac", "VID:NOT-A-MAC"),
        ("aabbccddeeff00", "AABBCCDDEEFF00"),
        ("gg:bb:cc:dd:ee:ff", "GG:BB:CC:DD:EE:FF"),
        ("aabb.ccdd.ee", "AABB.CCDD.EE"),
        ("aab.bccdd.eeff", "AAB.BCCDD.EEFF"),
    ],
)
def test_normalise(raw: str, key: str) -> None:
    assert normalise(raw) == key


@given(st.text(max_size=40))
def test_normalise_is_idempotent(raw: str) -> None:
    assert normalise(normalise(raw)) == normalise(raw)


def test_parse_datetime_forms() -> None:
    assert parse_datetime("2026-11-21T12:00:00Z") == NOW
    assert parse_datetime("2026-11-21T13:00:00+01:00") == NOW
    assert parse_datetime("2026-11-21T12:00:00") == NOW  # no offset: UTC
    assert parse_datetime("tomorrow") is None


def synced(status: str) -> SyncedTag:
    return SyncedTag(1, "TAG1", status, None)


def learned(status: str, expiry: str | None = None, parent: str | None = None) -> LearnedTag:
    return LearnedTag("tag1", status, expiry, parent, "2026-11-20T00:00:00Z")


def test_synced_authorized_is_accepted() -> None:
    decision = decide(synced("Authorized"), None, unknown_tags="reject", now=NOW)
    assert decision == Decision("Accepted", None, None, "synced")


def test_synced_revoked_is_blocked_even_if_learned_accepted() -> None:
    decision = decide(synced("Revoked"), learned("Accepted"), unknown_tags="accept", now=NOW)
    assert decision == Decision("Blocked", None, None, "synced")


def test_learned_used_when_not_synced() -> None:
    entry = learned("Accepted", "2026-12-01T00:00:00Z", "FLEET")
    decision = decide(None, entry, unknown_tags="reject", now=NOW)
    assert decision == Decision("Accepted", "2026-12-01T00:00:00Z", "FLEET", "learned")


def test_learned_expired_entry_is_expired() -> None:
    entry = learned("Accepted", "2026-11-21T11:59:59Z")
    decision = decide(None, entry, unknown_tags="accept", now=NOW)
    assert decision.status == "Expired"
    assert decision.source == "learned"
    assert decision.expiry_date == "2026-11-21T11:59:59Z"


@pytest.mark.parametrize(
    ("status", "answer"),
    [
        ("Accepted", "Accepted"),
        ("Blocked", "Blocked"),
        ("Expired", "Expired"),
        ("Invalid", "Invalid"),
        ("ConcurrentTx", "Accepted"),
        ("NoCredit", "Invalid"),
        ("NotAtThisTime", "Invalid"),
        ("Unknown", "Invalid"),
        ("Garbage", "Invalid"),
    ],
)
def test_learned_status_mapping(status: str, answer: str) -> None:
    assert learned_status(status) == answer
    assert decide(None, learned(status), unknown_tags="accept", now=NOW).status == answer


@pytest.mark.parametrize(("policy", "status"), [("reject", "Invalid"), ("accept", "Accepted")])
def test_unknown_tag_policy(policy: str, status: str) -> None:
    assert decide(None, None, unknown_tags=policy, now=NOW) == Decision(
        status, None, None, "policy"
    )


def test_id_tag_info_shapes() -> None:
    assert id_tag_info(Decision("Accepted", None, None, "synced")) == {"status": "Accepted"}
    full = Decision("Expired", "2026-01-01T00:00:00Z", "FLEET", "learned")
    assert id_tag_info(full) == {
        "status": "Expired",
        "expiryDate": "2026-01-01T00:00:00Z",
        "parentIdTag": "FLEET",
    }


def test_id_token_info_shapes() -> None:
    assert id_token_info(Decision("Blocked", None, None, "synced")) == {"status": "Blocked"}
    full = Decision("Accepted", "2026-12-01T00:00:00Z", "FLEET", "learned")
    assert id_token_info(full) == {
        "status": "Accepted",
        "cacheExpiryDateTime": "2026-12-01T00:00:00Z",
        "groupIdToken": {"idToken": "FLEET", "type": "Central"},
    }


async def test_answers_validate_against_ocpp_schemas() -> None:
    from ocpp.messages import CallResult, validate_payload  # the real OCPP JSON schemas

    decision = Decision("Expired", "2026-01-01T00:00:00Z", "FLEET", "learned")
    answer16 = CallResult("1", {"idTagInfo": id_tag_info(decision)}, action="Authorize")
    await validate_payload(answer16, "1.6")
    answer201 = CallResult("1", {"idTokenInfo": id_token_info(decision)}, action="Authorize")
    await validate_payload(answer201, "2.0.1")
    with pytest.raises(Exception, match="status"):  # the schemas do check: a 2.0.1 status in 1.6
        bad = CallResult("1", {"idTagInfo": {"status": "NoCredit"}}, action="Authorize")
        await validate_payload(bad, "1.6")


# --- learnable ------------------------------------------------------------------------------


def test_learn_16_authorize_and_start() -> None:
    info = {"status": "Accepted", "expiryDate": "2026-12-01T00:00:00Z", "parentIdTag": "P"}
    assert learnable("1.6", "Authorize", {"idTag": "aa:bb"}, {"idTagInfo": info}) == [
        ("aa:bb", "Accepted", "2026-12-01T00:00:00Z", "P")
    ]
    start = {"connectorId": 1, "idTag": "T1", "meterStart": 0, "timestamp": "x"}
    answer = {"transactionId": 5, "idTagInfo": {"status": "Blocked"}}
    assert learnable("1.6", "StartTransaction", start, answer) == [("T1", "Blocked", None, None)]


def test_learn_16_stop_transaction_optional_fields() -> None:
    stop = {"transactionId": 5, "meterStop": 10, "timestamp": "x"}
    assert learnable("1.6", "StopTransaction", stop, {}) == []
    assert learnable("1.6", "StopTransaction", stop, {"idTagInfo": {"status": "Accepted"}}) == []
    stop["idTag"] = "T1"
    assert learnable("1.6", "StopTransaction", stop, {"idTagInfo": {"status": "Invalid"}}) == [
        ("T1", "Invalid", None, None)
    ]


def test_learn_201_authorize_and_transaction_event() -> None:
    request = {"idToken": {"idToken": "AABBCCDDEEFF", "type": "MacAddress"}}
    response = {
        "idTokenInfo": {
            "status": "NotAtThisTime",
            "cacheExpiryDateTime": "2026-12-01T00:00:00Z",
            "groupIdToken": {"idToken": "G1", "type": "Central"},
        }
    }
    assert learnable("2.0.1", "Authorize", request, response) == [
        ("AABBCCDDEEFF", "NotAtThisTime", "2026-12-01T00:00:00Z", "G1")
    ]
    event = {"eventType": "Started", "idToken": {"idToken": "T2", "type": "ISO14443"}}
    assert learnable("ocpp2.0.1", "TransactionEvent", event, {}) == []
    assert learnable(
        "2.0.1", "TransactionEvent", event, {"idTokenInfo": {"status": "Accepted"}}
    ) == [("T2", "Accepted", None, None)]


def test_learn_ignores_no_authorization_and_other_actions() -> None:
    request = {"idToken": {"idToken": "", "type": "NoAuthorization"}}
    assert learnable("2.0.1", "Authorize", request, {"idTokenInfo": {"status": "Accepted"}}) == []
    assert learnable("1.6", "Heartbeat", {}, {"currentTime": "x"}) == []
    assert learnable("1.6", "TransactionEvent", {"idTag": "x"}, {"idTagInfo": {}}) == []


@pytest.mark.parametrize(
    ("request_", "response"),
    [
        ({"idTag": 5}, {"idTagInfo": {"status": "Accepted"}}),
        ({"idTag": "T"}, {"idTagInfo": {"status": "Maybe"}}),
        ({"idTag": "T"}, {"idTagInfo": "Accepted"}),
        ({"idTag": "  "}, {"idTagInfo": {"status": "Accepted"}}),
        (["idTag"], {"idTagInfo": {"status": "Accepted"}}),
        ({"idTag": "T"}, None),
    ],
)
def test_learn_rejects_odd_16_payloads(request_: Any, response: Any) -> None:
    assert learnable("1.6", "Authorize", request_, response) == []


def test_learn_drops_unparseable_expiry_and_bad_parent() -> None:
    info = {"status": "Accepted", "expiryDate": "soon", "parentIdTag": 7}
    assert learnable("1.6", "Authorize", {"idTag": "T"}, {"idTagInfo": info}) == [
        ("T", "Accepted", None, None)
    ]


keys = st.sampled_from(
    [
        "idTag",
        "idToken",
        "idTagInfo",
        "idTokenInfo",
        "status",
        "expiryDate",
        "parentIdTag",
        "cacheExpiryDateTime",
        "groupIdToken",
        "type",
    ]
) | st.text(max_size=4)
leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=8)
    | st.sampled_from(["Accepted", "Blocked", "NoAuthorization", "2026-12-01T00:00:00Z"])
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)


@given(
    st.sampled_from(["1.6", "2.0.1", "x"]),
    st.sampled_from(["Authorize", "StartTransaction", "StopTransaction", "TransactionEvent"]),
    json_values,
    json_values,
)
def test_learnable_never_raises(version: str, action: str, request: Any, response: Any) -> None:
    for tag, status, expiry, parent in learnable(version, action, request, response):
        assert isinstance(tag, str) and isinstance(status, str)
        assert expiry is None or isinstance(expiry, str)
        assert parent is None or isinstance(parent, str)
