"""The pure local-list rules on data: desired list, planner (Full, Differential, splitting,
truncation, versions), payloads checked against the OCPP schemas, and reading the answers."""

from __future__ import annotations

from typing import Any

import pytest
from ocpp.messages import Call as OcppCall
from ocpp.messages import validate_payload

from gateway.ocpp.frames import CallError, CallResult
from gateway.tags.local_list import (
    DEFAULT_PER_MESSAGE,
    MAX_VERSION,
    Capacity,
    Entry,
    Outcome,
    Sent,
    capacity_16,
    capacity_201,
    desired_entries,
    digest,
    entries_from_body,
    list_version,
    outcome,
    payload,
    plan,
    presented,
    snapshot_body,
)


def tags(n: int, start: int = 0) -> tuple[Entry, ...]:
    return tuple(Entry(f"TAG{i:04d}") for i in range(start, start + n))


def applied(charger: set[Entry], step_payload: dict[str, Any]) -> set[Entry]:
    """What a 1.6 charger's list becomes after one SendLocalList (the spec's semantics)."""
    items = step_payload.get("localAuthorizationList", [])
    result = set() if step_payload["updateType"] == "Full" else set(charger)
    for item in items:
        entry = Entry(item["idTag"])
        if "idTagInfo" in item:
            result.add(entry)
        else:
            result.discard(entry)
    return result


def run(steps: Any, charger: set[Entry]) -> set[Entry]:
    for step in steps:
        charger = applied(charger, payload("1.6", step))
    return charger


# --- the planner -----------------------------------------------------------------------------


def test_first_push_is_one_full_update_above_the_chargers_version() -> None:
    result = plan(tags(3), capacity=Capacity(10, 20), charger_version=4, last=None)
    assert [(s.update_type, s.version, len(s.add)) for s in result.steps] == [("Full", 5, 3)]
    assert result.final_version == 5 and not result.truncated
    assert result.entries == tags(3)


def test_full_list_over_the_per_message_limit_is_full_then_differentials() -> None:
    result = plan(tags(25), capacity=Capacity(100, 10), charger_version=0, last=None)
    assert [(s.update_type, s.version, len(s.add), len(s.remove)) for s in result.steps] == [
        ("Full", 1, 10, 0),
        ("Differential", 2, 10, 0),
        ("Differential", 3, 5, 0),
    ]
    assert result.final_version == 3
    # the charger ends with exactly the list, whatever it held before
    assert run(result.steps, set(tags(5, start=900))) == set(tags(25))


def test_same_version_sends_only_the_differences_removals_first() -> None:
    last = Sent(7, frozenset(tags(10)))
    desired = (*tags(8, start=2), Entry("NEW1"), Entry("NEW2"))  # drops TAG0000, TAG0001
    result = plan(desired, capacity=Capacity(10, 3), charger_version=7, last=last)
    kinds = [(s.update_type, s.version) for s in result.steps]
    assert kinds == [("Differential", 8), ("Differential", 9)]
    assert result.steps[0].remove == (Entry("TAG0000"), Entry("TAG0001"))
    assert result.steps[0].add == (Entry("NEW1"),)
    assert result.steps[1].add == (Entry("NEW2"),)
    before = set(tags(10))
    after_first = applied(before, payload("1.6", result.steps[0]))
    assert len(after_first) <= 10  # never over capacity on the way
    assert run(result.steps, before) == set(desired)


def test_nothing_to_change_gives_no_steps() -> None:
    last = Sent(3, frozenset(tags(4)))
    result = plan(tags(4), capacity=Capacity(), charger_version=3, last=last)
    assert result.steps == () and result.final_version == 3


def test_version_not_the_one_sent_resends_in_full() -> None:
    last = Sent(3, frozenset(tags(4)))
    result = plan(tags(4), capacity=Capacity(), charger_version=2, last=last)
    assert [(s.update_type, s.version) for s in result.steps] == [("Full", 4)]
    higher = plan(tags(4), capacity=Capacity(), charger_version=12, last=last)
    assert [(s.update_type, s.version) for s in higher.steps] == [("Full", 13)]


def test_over_capacity_keeps_the_first_entries_and_says_truncated() -> None:
    result = plan(tags(30), capacity=Capacity(max_entries=12, per_message=5), charger_version=0,
                  last=None)  # fmt: skip
    assert result.truncated and result.entries == tags(12)
    assert sum(len(s.add) for s in result.steps) == 12 and len(result.steps) == 3
    assert run(result.steps, set()) == set(tags(12))


def test_max_entries_setting_caps_below_the_chargers_capacity() -> None:
    result = plan(tags(30), capacity=Capacity(max_entries=20), charger_version=0, last=None,
                  max_entries=7)  # fmt: skip
    assert result.entries == tags(7) and result.truncated
    unknown = plan(tags(30), capacity=Capacity(), charger_version=0, last=None, max_entries=40)
    assert len(unknown.entries) == 30 and not unknown.truncated


def test_unknown_per_message_limit_uses_the_default() -> None:
    result = plan(tags(250), capacity=Capacity(), charger_version=0, last=None)
    assert [len(s.add) for s in result.steps] == [DEFAULT_PER_MESSAGE, DEFAULT_PER_MESSAGE, 50]


def test_bytes_per_message_limit_splits_too() -> None:
    entries = tuple(Entry(f"T{i:05d}", "ISO14443") for i in range(40))
    result = plan(entries, capacity=Capacity(per_message=100, bytes_per_message=1000),
                  charger_version=0, last=None)  # fmt: skip
    assert len(result.steps) > 1
    for step in result.steps:
        assert len(str(payload("2.0.1", step)).encode()) <= 1000 + 200
        assert len(CallResult("x", payload("2.0.1", step)).serialize()) <= 1000


def test_empty_desired_list_empties_the_charger_with_a_full_update() -> None:
    result = plan((), capacity=Capacity(), charger_version=5, last=None)
    assert [(s.update_type, s.version) for s in result.steps] == [("Full", 6)]
    assert payload("1.6", result.steps[0]) == {"listVersion": 6, "updateType": "Full"}
    assert run(result.steps, set(tags(3))) == set()


def test_version_wraps_with_a_full_update() -> None:
    result = plan(tags(3), capacity=Capacity(per_message=1), charger_version=MAX_VERSION - 1,
                  last=None)  # fmt: skip
    assert [(s.update_type, s.version) for s in result.steps] == [
        ("Full", 1), ("Differential", 2), ("Differential", 3)
    ]  # fmt: skip


def test_one_message_never_names_a_tag_twice() -> None:
    last = Sent(1, frozenset({Entry("A", "ISO14443"), Entry("B", "ISO14443")}))
    desired = (Entry("A", "ISO15693"), Entry("B", "ISO14443"))  # A changes type: remove + add
    result = plan(desired, capacity=Capacity(per_message=10), charger_version=1, last=last)
    for step in result.steps:
        names = [e.id_tag for e in step.add + step.remove]
        assert len(names) == len(set(names))
    assert [s.version for s in result.steps] == [2, 3]


# --- the desired list ------------------------------------------------------------------------


def test_desired_list_puts_most_recently_used_first() -> None:
    access = [("K1", "K1", "RFID"), ("K2", "K2", "RFID"), ("K3", "K3", "Vehicle"),
              ("K4", "K4", "RFID")]  # fmt: skip
    usage = {"K3": (200.0, None), "K4": (100.0, None), "GONE": (300.0, None)}
    assert [e.id_tag for e in desired_entries("1.6", access, usage)] == ["K3", "K4", "K1", "K2"]


def test_desired_list_201_token_types_and_length_limits() -> None:
    access = [("AABBCCDDEEFF", "AABBCCDDEEFF", "Vehicle"), ("C1", "C1", "RFID"),
              ("C2", "C2", "RFID"), ("L" * 21, "L" * 21, "RFID")]  # fmt: skip
    usage = {"C2": (5.0, "ISO15693")}
    v201 = desired_entries("2.0.1", access, usage)
    assert v201 == (Entry("C2", "ISO15693"), Entry("AABBCCDDEEFF", "MacAddress"),
                    Entry("C1", "ISO14443"), Entry("L" * 21, "ISO14443"))  # fmt: skip
    v16 = desired_entries("1.6", access, usage)
    assert [e.id_tag for e in v16] == ["C2", "AABBCCDDEEFF", "C1"]  # 21 chars: too long for 1.6
    assert all(e.token_type is None for e in v16)


def test_digest_and_stored_body_round_trip() -> None:
    entries = {Entry("A", "ISO14443"), Entry("B", None)}
    assert entries_from_body(snapshot_body(entries)) == entries
    assert digest(entries) == digest(reversed(sorted(entries, key=lambda e: e.id_tag)))
    assert digest(entries) != digest({Entry("A", "ISO14443")})


# --- wire shapes against the real schemas ----------------------------------------------------


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_payloads_are_valid_send_local_list_requests(version: str) -> None:
    kind = None if version == "1.6" else "ISO14443"
    last = Sent(1, frozenset({Entry("OLD", kind)}))
    desired = (Entry("NEW", kind),)
    for result in (
        plan(desired, capacity=Capacity(), charger_version=1, last=last),
        plan(desired, capacity=Capacity(), charger_version=0, last=None),
        plan((), capacity=Capacity(), charger_version=0, last=None),
    ):
        for step in result.steps:
            body = payload(version, step)
            ocpp_version = "1.6" if version == "1.6" else "2.0.1"
            await validate_payload(OcppCall("1", "SendLocalList", body), ocpp_version)
    with pytest.raises(Exception, match="idTag"):  # the schemas do check
        await validate_payload(OcppCall("1", "SendLocalList", {"listVersion": 1,
            "updateType": "Full", "localAuthorizationList": [{"idTag": "X" * 21}]}), "1.6")  # fmt: skip
    diff = payload(
        version, plan(desired, capacity=Capacity(), charger_version=1, last=last).steps[0]
    )
    removed, added = diff["localAuthorizationList"]
    info = "idTagInfo" if version == "1.6" else "idTokenInfo"
    assert info not in removed and added[info] == {"status": "Accepted"}
    assert diff["updateType"] == "Differential"


# --- reading answers -------------------------------------------------------------------------


def test_capacity_16_from_get_configuration() -> None:
    result = {
        "configurationKey": [
            {"key": "LocalAuthListMaxLength", "readonly": True, "value": "500"},
            {"key": "SendLocalListMaxLength", "readonly": True, "value": "50"},
            {"key": "LocalAuthListEnabled", "readonly": False, "value": "false"},
        ]
    }
    assert capacity_16(result) == Capacity(500, 50, None, False)
    assert capacity_16({"unknownKey": ["LocalAuthListMaxLength"]}) == Capacity()
    bad = {"configurationKey": [{"key": "SendLocalListMaxLength", "readonly": True, "value": "x"}]}
    assert capacity_16(bad) == Capacity()


def test_capacity_201_from_get_variables() -> None:
    def item(name: str, attribute: str, value: str, status: str = "Accepted") -> dict[str, Any]:
        return {"attributeStatus": status, "attributeType": attribute, "attributeValue": value,
                "component": {"name": "LocalAuthListCtrlr"}, "variable": {"name": name}}  # fmt: skip

    result = {
        "getVariableResult": [
            item("Entries", "MaxSet", "800"),
            item("ItemsPerMessage", "Actual", "250"),
            item("BytesPerMessage", "Actual", "4096"),
            item("Enabled", "Actual", "true"),
        ]
    }
    assert capacity_201(result) == Capacity(800, 250, 4096, True)
    refused = {"getVariableResult": [item("Entries", "MaxSet", "", "NotSupportedAttributeType")]}
    assert capacity_201(refused) == Capacity()


def test_list_version_and_outcomes() -> None:
    assert list_version("1.6", {"listVersion": 3}) == 3
    assert list_version("1.6", {"listVersion": -1}) is None  # 1.6: no local list support
    assert list_version("2.0.1", {"versionNumber": 0}) == 0
    assert outcome(CallResult("1", {"status": "Accepted"})) is Outcome.ACCEPTED
    assert outcome(CallResult("1", {"status": "Failed"})) is Outcome.FAILED
    assert outcome(CallResult("1", {"status": "VersionMismatch"})) is Outcome.VERSION_MISMATCH
    assert outcome(CallResult("1", {"status": "NotSupported"})) is Outcome.NOT_SUPPORTED
    assert outcome(CallError("1", "NotImplemented", "")) is Outcome.NOT_SUPPORTED
    assert outcome(CallError("1", "NotSupported", "")) is Outcome.NOT_SUPPORTED
    assert outcome(CallError("1", "InternalError", "")) is Outcome.ERROR


def test_presented_tags_for_usage() -> None:
    assert presented("1.6", "Authorize", {"idTag": "AB12"}) == ("AB12", None)
    start = {"connectorId": 1, "idTag": "AB12", "meterStart": 0, "timestamp": "t"}
    assert presented("1.6", "StartTransaction", start) == ("AB12", None)
    assert presented("1.6", "StopTransaction", {"idTag": "AB12"}) is None
    assert presented("1.6", "Authorize", {"idTag": "  "}) is None
    token = {"idToken": {"idToken": "CD34", "type": "ISO15693"}}
    assert presented("2.0.1", "Authorize", token) == ("CD34", "ISO15693")
    assert presented("2.0.1", "TransactionEvent", {"eventType": "Started", **token}) == (
        "CD34", "ISO15693"
    )  # fmt: skip
    assert presented("2.0.1", "TransactionEvent", {"eventType": "Updated"}) is None
    anonymous = {"idToken": {"idToken": "", "type": "NoAuthorization"}}
    assert presented("2.0.1", "TransactionEvent", anonymous) is None
    assert presented("2.1", "Authorize", token) == ("CD34", "ISO15693")  # 2.1 as 2.0.1
