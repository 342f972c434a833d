"""The guard's payloads validate against the OCPP schemas (1.6, 2.0.1, 2.1); capabilities and
answers are read; a cloud profile's meaning for the gateway's cap."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import FrameError
from gateway.ocpp.validation import validate_call, validate_result
from gateway.site.profiles import (
    DEFAULT_RATE_UNIT,
    DEFAULT_STACK_LEVEL,
    PROFILE_ID,
    Capabilities,
    answer,
    capabilities,
    capability_request,
    clear_cap,
    cloud_station_max_a,
    set_cap,
    touches_station_max,
)
from gateway.site.sequencer import Answer

VERSIONS = ("1.6", "2.0.1", "2.1")
START = 1_796_000_000.0  # 2026-11-30T00:53:20Z; the schedule starts a day earlier


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("unit", ["A", "W"])
@pytest.mark.parametrize("cap", [0, 6, 16, 32])
@pytest.mark.parametrize("phases", [None, 1, 2, 3])
def test_set_cap_validates_against_the_schema(
    version: Any, unit: Any, cap: int, phases: int | None
) -> None:
    caps = Capabilities(unit, 7)
    action, payload = set_cap(version, cap, now=START, caps=caps, phases=phases)
    assert action == "SetChargingProfile"
    validate_call(version, action, payload, "1")


def test_set_cap_1_6_is_a_charge_point_max_profile_on_connector_0() -> None:
    _, payload = set_cap("1.6", 16, now=START, caps=Capabilities("A", 9))
    assert payload == {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": PROFILE_ID,
            "stackLevel": 9,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "startSchedule": "2026-11-29T00:53:20Z",
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16}],
            },
        },
    }


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
def test_set_cap_2_x_is_a_charging_station_max_profile_on_evse_0(version: Any) -> None:
    _, payload = set_cap(version, 20, now=START, caps=Capabilities("W", 3), voltage_v=230)
    profile = payload["chargingProfile"]
    assert payload["evseId"] == 0
    assert (profile["id"], profile["stackLevel"]) == (PROFILE_ID, 3)
    assert profile["chargingProfilePurpose"] == "ChargingStationMaxProfile"
    assert profile["chargingProfileKind"] == "Absolute"  # never Relative (K01.FR.38)
    (schedule,) = profile["chargingSchedule"]
    assert schedule["chargingRateUnit"] == "W"
    assert schedule["startSchedule"] == "2026-11-29T00:53:20Z"  # Absolute needs it (K01.FR.40)
    # W = A x V x phases; 3 phases when the meter did not say.
    assert schedule["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 20 * 230 * 3}]


def test_watts_use_the_phases_the_meter_reported_and_say_so() -> None:
    # The charger computes A = W / (V x numberPhases), 3 when absent (1.6 §7, K01.FR.49/50).
    _, payload = set_cap("1.6", 16, now=START, caps=Capabilities("W"), voltage_v=230, phases=1)
    period = payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]
    assert period == {"startPeriod": 0, "limit": 16 * 230, "numberPhases": 1}
    _, payload = set_cap("2.1", 16, now=START, caps=Capabilities("W"), voltage_v=230, phases=3)
    period = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert period == {"startPeriod": 0, "limit": 16 * 230 * 3}
    # Amperes are per phase whatever the phases: never numberPhases (K01.FR.43, K01.FR.51).
    _, payload = set_cap("2.0.1", 16, now=START, caps=Capabilities("A"), phases=1)
    period = payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert period == {"startPeriod": 0, "limit": 16}


@pytest.mark.parametrize("version", VERSIONS)
def test_clear_cap_validates_and_clears_by_id(version: Any) -> None:
    action, payload = clear_cap(version)
    validate_call(version, action, payload, "1")
    assert payload == (
        {"id": PROFILE_ID} if version == "1.6" else {"chargingProfileId": PROFILE_ID}
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_capability_request_validates(version: Any) -> None:
    action, payload = capability_request(version)
    validate_call(version, action, payload, "1")


def test_a_built_payload_that_broke_the_schema_would_be_caught() -> None:
    _, payload = set_cap("1.6", 16, now=START)
    payload["csChargingProfiles"]["chargingProfilePurpose"] = "ChargingStationMaxProfile"
    with pytest.raises(FrameError):
        validate_call("1.6", "SetChargingProfile", payload, "1")


def result_16(*items: tuple[str, str]) -> dict[str, Any]:
    return {"configurationKey": [{"key": k, "readonly": True, "value": v} for k, v in items]}


def result_201(*items: tuple[str, str], status: str = "Accepted") -> dict[str, Any]:
    return {
        "getVariableResult": [
            {
                "attributeStatus": status,
                "attributeValue": value,
                "component": {"name": "SmartChargingCtrlr"},
                "variable": {"name": name},
            }
            for name, value in items
        ]
    }


@pytest.mark.parametrize(
    ("members", "unit"),
    [("Current", "A"), ("Current,Power", "A"), ("Power", "W"), ("power", "W"), ("", "A")],
)
def test_rate_unit_1_6(members: str, unit: str) -> None:
    result = result_16(("ChargingScheduleAllowedChargingRateUnit", members))
    validate_result("1.6", "GetConfiguration", result, "1")
    assert capabilities("1.6", result).rate_unit == unit


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
@pytest.mark.parametrize(("members", "unit"), [("A", "A"), ("A,W", "A"), ("W", "W")])
def test_rate_unit_2_x(version: Any, members: str, unit: str) -> None:
    result = result_201(("RateUnit", members), ("ProfileStackLevel", "4"))
    validate_result(version, "GetVariables", result, "1")
    assert capabilities(version, result) == Capabilities(unit, 4)  # type: ignore[arg-type]


def test_stack_level_read_or_defaulted() -> None:
    found = result_16(
        ("ChargeProfileMaxStackLevel", "10"), ("ChargingScheduleAllowedChargingRateUnit", "Power")
    )
    assert capabilities("1.6", found) == Capabilities("W", 10)
    # Unknown keys, unreadable values, a refused variable: the documented defaults.
    assert capabilities("1.6", {"unknownKey": ["ChargeProfileMaxStackLevel"]}) == Capabilities()
    assert capabilities("1.6", result_16(("ChargeProfileMaxStackLevel", "ten"))) == Capabilities()
    assert capabilities("1.6", result_16(("ChargeProfileMaxStackLevel", "-1"))) == Capabilities()
    refused = result_201(("RateUnit", "W"), status="UnknownVariable")
    assert capabilities("2.0.1", refused) == Capabilities()
    assert (
        Capabilities()
        == Capabilities(DEFAULT_RATE_UNIT, DEFAULT_STACK_LEVEL)
        == Capabilities("A", 1)
    )


@pytest.mark.parametrize(
    ("version", "action", "result", "expected"),
    [
        ("1.6", "SetChargingProfile", {"status": "Accepted"}, Answer.ACCEPTED),
        ("1.6", "SetChargingProfile", {"status": "Rejected"}, Answer.REJECTED),
        ("1.6", "SetChargingProfile", {"status": "NotSupported"}, Answer.REJECTED),
        ("2.0.1", "SetChargingProfile", {"status": "Rejected"}, Answer.REJECTED),
        ("2.1", "SetChargingProfile", {"status": "Accepted"}, Answer.ACCEPTED),
        ("1.6", "ClearChargingProfile", {"status": "Unknown"}, Answer.ACCEPTED),
        ("2.0.1", "ClearChargingProfile", {"status": "Accepted"}, Answer.ACCEPTED),
    ],
)
def test_answers(version: Any, action: str, result: dict[str, Any], expected: Answer) -> None:
    validate_result(version, action, result, "1")
    assert answer(result) is expected


def cloud_profile_16(
    purpose: str, limit: float, unit: str = "A", connector: int = 0
) -> dict[str, Any]:
    return {
        "connectorId": connector,
        "csChargingProfiles": {
            "chargingProfileId": 7,
            "stackLevel": 0,
            "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "startSchedule": "2026-01-01T00:00:00Z",
                "chargingRateUnit": unit,
                "chargingSchedulePeriod": [
                    {"startPeriod": 0, "limit": limit},
                    {"startPeriod": 3600, "limit": limit + 10},
                ],
            },
        },
    }


def test_cloud_station_maximum() -> None:
    assert (
        cloud_station_max_a(
            "1.6", cloud_profile_16("ChargePointMaxProfile", 20.5), voltage_v=230, phases=None
        )
        == 20
    )
    watts = cloud_profile_16("ChargePointMaxProfile", 11040, unit="W")
    assert cloud_station_max_a("1.6", watts, voltage_v=230, phases=None) == 16  # 11040/(230x3)
    assert cloud_station_max_a("1.6", watts, voltage_v=230, phases=1) == 48
    assert (
        cloud_station_max_a(
            "1.6", cloud_profile_16("TxDefaultProfile", 10), voltage_v=230, phases=None
        )
        is None
    )
    _, ours = set_cap("2.0.1", 12, now=START)
    assert cloud_station_max_a("2.0.1", ours, voltage_v=230, phases=None) == 12


@pytest.mark.parametrize(
    ("version", "action", "payload", "touches"),
    [
        ("1.6", "SetChargingProfile", cloud_profile_16("ChargePointMaxProfile", 20), True),
        ("1.6", "SetChargingProfile", cloud_profile_16("TxProfile", 20, connector=1), False),
        ("1.6", "ClearChargingProfile", {}, True),
        ("1.6", "ClearChargingProfile", {"id": PROFILE_ID}, True),
        ("1.6", "ClearChargingProfile", {"id": 7}, False),
        ("1.6", "ClearChargingProfile", {"chargingProfilePurpose": "TxProfile"}, False),
        ("1.6", "ClearChargingProfile", {"connectorId": 1}, False),
        ("1.6", "ClearChargingProfile", {"connectorId": 0, "stackLevel": 1}, True),
        ("2.0.1", "ClearChargingProfile", {"chargingProfileId": PROFILE_ID}, True),
        ("2.0.1", "ClearChargingProfile", {"chargingProfileCriteria": {"evseId": 2}}, False),
        (
            "2.1",
            "ClearChargingProfile",
            {"chargingProfileCriteria": {"chargingProfilePurpose": "ChargingStationMaxProfile"}},
            True,
        ),
        ("2.0.1", "RemoteStartTransaction", {}, False),
    ],
)
def test_touches_station_max(
    version: Any, action: str, payload: dict[str, Any], touches: bool
) -> None:
    assert touches_station_max(version, action, payload) is touches
