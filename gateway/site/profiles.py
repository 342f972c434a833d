"""The site guard's OCPP payloads, built and read. Pure.

- :func:`set_cap` / :func:`clear_cap`: the station-wide cap as 1.6 ``SetChargingProfile`` on
  connectorId 0 with purpose ``ChargePointMaxProfile`` (1.6 §3.13.1: that purpose "can only be set
  at Charge Point ConnectorId 0"), or 2.0.1/2.1 ``SetChargingProfileRequest`` on evseId 0 with
  purpose ``ChargingStationMaxProfile`` (2.0.1 K04.FR.03); its Clear by id.
- :func:`capability_request` / :func:`capabilities`: what the charger takes, read from 1.6
  ``GetConfiguration`` (``ChargingScheduleAllowedChargingRateUnit``, ``ChargeProfileMaxStackLevel``;
  §3.13.5, §9.4) or 2.0.1/2.1 ``GetVariables`` (``SmartChargingCtrlr.RateUnit``,
  ``SmartChargingCtrlr.ProfileStackLevel``).
- :func:`answer`: a charger's answer to either, as a :class:`sequencer.Answer`.
- :func:`cloud_station_max_a`, :func:`touches_station_max`: what a cloud's Set/ClearChargingProfile
  means for the gateway's cap.

The profile. One period from second 0 (2.0.1 K01.FR.31), kind ``Absolute`` with a start in the
past (a station maximum may not be ``Relative``, K01.FR.38; ``Absolute`` needs ``startSchedule``,
K01.FR.40; a past start leaves no gap, 1.6 §5.16.4): :data:`BACKDATE_S` before ``now``, so a
charger whose clock runs behind the gateway's still has the cap in force at once; no
duration or validTo: it holds until the gateway clears it (K01.FR.10) and survives the charger's
reboot (K01.FR.27), so a depot stays capped while the gateway itself is down.

Its id is :data:`PROFILE_ID`, fixed: a Clear by id needs no stored id (also after the gateway's
restart), and a profile with the same id replaces the old one (1.6 §5.16.3, K01.FR.05), so a new
cap never stacks on the last. It is far above the small sequential ids a CSMS hands out, so it
does not replace a cloud profile, and within OCPP's 32-bit signed integers.

Its stack level is the highest the charger allows (``ChargeProfileMaxStackLevel``,
``ProfileStackLevel``): within one purpose the highest stack level prevails (1.6 §3.13.2,
K01.FR.17), so a station maximum the cloud installs below it does not displace the gateway's cap
(the gateway instead keeps its cap under the cloud's, :func:`cloud_station_max_a`). When the
charger does not say, :data:`DEFAULT_STACK_LEVEL`.

Rate unit: amperes when the charger takes them (the limit is per phase, K01.FR.51; no
``numberPhases``: a charger that cannot ensure a given number of phases rejects it, K01.FR.43).
Else watts = A x ``voltage_v`` x phases. The charger computes the current per phase back as
W / (line voltage x ``numberPhases``), 3 when absent (1.6 §7 ChargingRateUnitType; 2.0.1
K01.FR.49/50), so the period states ``numberPhases`` when the phases are known from the
charger's MeterValues and differ from 3: a single-phase vehicle then gets its cap, not a third
of it (which under 6 A would stop it), and a charger reading W as the total power of the phases
in use computes the same current. When the charger does
not say, :data:`DEFAULT_RATE_UNIT`: AC chargers take amperes (K01.FR.50 notes "It is usually more
convenient to use chargingRateUnit = A for AC charging"); one that refuses is unmanaged, counted
at its maximum, never unsafe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from gateway.site.sequencer import Answer

__all__ = [
    "BACKDATE_S",
    "DEFAULT_RATE_UNIT",
    "DEFAULT_STACK_LEVEL",
    "PROFILE_ID",
    "Capabilities",
    "answer",
    "capabilities",
    "capability_request",
    "clear_cap",
    "cloud_station_max_a",
    "limit_value",
    "set_cap",
    "touches_station_max",
]

Version = Literal["1.6", "2.0.1", "2.1"]
RateUnit = Literal["A", "W"]

PROFILE_ID: Final = 2_000_000_001
# 1 rather than 0: it outranks a cloud station maximum at level 0 (1.6 §3.13.2, K01.FR.17), and
# the 2.0.1 test case for stacked profiles (part 6, TC_K_40_CS) expects a charger to take a stack
# level above 0. A charger that refuses it is unmanaged, counted at its maximum.
DEFAULT_STACK_LEVEL: Final = 1
DEFAULT_RATE_UNIT: Final[RateUnit] = "A"
DEFAULT_PHASES: Final = 3
BACKDATE_S: Final = 86_400.0  # the schedule starts a day before it is sent

STATION_MAX: Final[dict[str, str]] = {
    "1.6": "ChargePointMaxProfile",
    "2.0.1": "ChargingStationMaxProfile",
    "2.1": "ChargingStationMaxProfile",
}
KEY_RATE_UNIT_16: Final = "ChargingScheduleAllowedChargingRateUnit"
KEY_STACK_LEVEL_16: Final = "ChargeProfileMaxStackLevel"
CONTROLLER_201: Final = "SmartChargingCtrlr"
VAR_RATE_UNIT_201: Final = "RateUnit"
VAR_STACK_LEVEL_201: Final = "ProfileStackLevel"
_MAX_STACK_LEVEL: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the charger takes; the defaults when it did not say."""

    rate_unit: RateUnit = DEFAULT_RATE_UNIT
    stack_level: int = DEFAULT_STACK_LEVEL


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def limit_value(cap_a: int, unit: RateUnit, *, voltage_v: float, phases: int | None) -> int:
    """The schedule's limit: amperes per phase, or watts = A x V x phases (rounded down)."""
    if unit == "A":
        return cap_a
    return math.floor(cap_a * voltage_v * (phases or DEFAULT_PHASES))


def set_cap(
    version: Version,
    cap_a: int,
    *,
    now: float,
    caps: Capabilities = Capabilities(),
    voltage_v: float = 230.0,
    phases: int | None = None,
) -> tuple[str, dict[str, Any]]:
    """(action, payload) of the cap ``cap_a`` (A per phase), sent at ``now`` (unix time)."""
    start = now - BACKDATE_S
    limit = limit_value(cap_a, caps.rate_unit, voltage_v=voltage_v, phases=phases)
    period = {"startPeriod": 0, "limit": limit}
    if caps.rate_unit == "W" and phases is not None and phases != DEFAULT_PHASES:
        period["numberPhases"] = phases
    if version == "1.6":
        return "SetChargingProfile", {
            "connectorId": 0,
            "csChargingProfiles": {
                "chargingProfileId": PROFILE_ID,
                "stackLevel": caps.stack_level,
                "chargingProfilePurpose": STATION_MAX[version],
                "chargingProfileKind": "Absolute",
                "chargingSchedule": {
                    "startSchedule": _iso(start),
                    "chargingRateUnit": caps.rate_unit,
                    "chargingSchedulePeriod": [period],
                },
            },
        }
    return "SetChargingProfile", {
        "evseId": 0,
        "chargingProfile": {
            "id": PROFILE_ID,
            "stackLevel": caps.stack_level,
            "chargingProfilePurpose": STATION_MAX[version],
            "chargingProfileKind": "Absolute",
            "chargingSchedule": [
                {
                    "id": PROFILE_ID,
                    "startSchedule": _iso(start),
                    "chargingRateUnit": caps.rate_unit,
                    "chargingSchedulePeriod": [period],
                }
            ],
        },
    }


def clear_cap(version: Version) -> tuple[str, dict[str, Any]]:
    """(action, payload) clearing the gateway's cap, by its id."""
    if version == "1.6":
        return "ClearChargingProfile", {"id": PROFILE_ID}
    return "ClearChargingProfile", {"chargingProfileId": PROFILE_ID}


def capability_request(version: Version) -> tuple[str, dict[str, Any]]:
    """(action, payload) asking the charger for its rate units and highest stack level."""
    if version == "1.6":
        return "GetConfiguration", {"key": [KEY_RATE_UNIT_16, KEY_STACK_LEVEL_16]}
    return "GetVariables", {
        "getVariableData": [
            {"component": {"name": CONTROLLER_201}, "variable": {"name": name}}
            for name in (VAR_RATE_UNIT_201, VAR_STACK_LEVEL_201)
        ]
    }


def _stack_level(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        level = int(value.strip())
    except ValueError:
        return None
    return level if 0 <= level <= _MAX_STACK_LEVEL else None


def _unit(members: object, amperes: str, watts: str) -> RateUnit | None:
    if not isinstance(members, str):
        return None
    listed = {m.strip().lower() for m in members.split(",")}
    if amperes.lower() in listed:
        return "A"
    if watts.lower() in listed:
        return "W"
    return None


def capabilities(version: Version, result: Mapping[str, Any]) -> Capabilities:
    """The charger's answer to :func:`capability_request` (schema-valid), read; defaults for
    what is missing, unknown or unreadable."""
    unit: RateUnit | None = None
    level: int | None = None
    if version == "1.6":
        for item in result.get("configurationKey") or ():
            if not isinstance(item, dict):
                continue
            if item.get("key") == KEY_RATE_UNIT_16:
                unit = _unit(item.get("value"), "Current", "Power")
            elif item.get("key") == KEY_STACK_LEVEL_16:
                level = _stack_level(item.get("value"))
    else:
        for item in result.get("getVariableResult") or ():
            if not isinstance(item, dict) or item.get("attributeStatus") != "Accepted":
                continue
            component = (item.get("component") or {}).get("name")
            variable = (item.get("variable") or {}).get("name")
            if component != CONTROLLER_201 or item.get("attributeType", "Actual") != "Actual":
                continue
            if variable == VAR_RATE_UNIT_201:
                unit = _unit(item.get("attributeValue"), "A", "W")
            elif variable == VAR_STACK_LEVEL_201:
                level = _stack_level(item.get("attributeValue"))
    return Capabilities(
        rate_unit=unit or DEFAULT_RATE_UNIT,
        stack_level=DEFAULT_STACK_LEVEL if level is None else level,
    )


def answer(result: Mapping[str, Any]) -> Answer:
    """A Set/ClearChargingProfile answer (schema-valid) as an :class:`Answer`.

    Clear's ``Unknown`` means the charger holds no such profile: nothing is left to clear.
    """
    status = result.get("status")
    return Answer.ACCEPTED if status in ("Accepted", "Unknown") else Answer.REJECTED


def cloud_station_max_a(
    version: Version, payload: Mapping[str, Any], *, voltage_v: float, phases: int | None
) -> int | None:
    """The station maximum a cloud SetChargingProfile sets, in whole amperes (its lowest period,
    rounded down), or None if it sets none. The gateway's cap is kept at or under it."""
    if version == "1.6":
        where, profile = payload.get("connectorId"), payload.get("csChargingProfiles")
        schedules = [profile.get("chargingSchedule")] if isinstance(profile, dict) else []
    else:
        where, profile = payload.get("evseId"), payload.get("chargingProfile")
        found = profile.get("chargingSchedule") if isinstance(profile, dict) else None
        schedules = found if isinstance(found, list) else []
    if where != 0 or not isinstance(profile, dict):
        return None
    if profile.get("chargingProfilePurpose") != STATION_MAX[version]:
        return None
    lowest: float | None = None
    for schedule in schedules:
        if not isinstance(schedule, dict):
            continue
        unit = schedule.get("chargingRateUnit")
        for period in schedule.get("chargingSchedulePeriod") or ():
            limit = period.get("limit") if isinstance(period, dict) else None
            if isinstance(limit, bool) or not isinstance(limit, int | float):
                continue
            if unit == "W":
                count = period.get("numberPhases") or phases or DEFAULT_PHASES
                limit = limit / (voltage_v * count)
            lowest = limit if lowest is None else min(lowest, limit)
    return None if lowest is None else max(0, math.floor(lowest))


def touches_station_max(version: Version, action: str, payload: Mapping[str, Any]) -> bool:
    """Whether a cloud Set/ClearChargingProfile may have changed the station maximum (and so
    replaced or removed the gateway's cap): then the gateway sends its cap again. In doubt, yes."""
    if action == "SetChargingProfile":
        profile = payload.get("csChargingProfiles" if version == "1.6" else "chargingProfile")
        if not isinstance(profile, dict):
            return False
        same_id = profile.get("chargingProfileId" if version == "1.6" else "id") == PROFILE_ID
        return same_id or profile.get("chargingProfilePurpose") == STATION_MAX[version]
    if action != "ClearChargingProfile":
        return False
    if version == "1.6":
        profile_id, criteria = payload.get("id"), payload
        where = payload.get("connectorId")
    else:
        profile_id = payload.get("chargingProfileId")
        found = payload.get("chargingProfileCriteria")
        criteria = found if isinstance(found, dict) else {}
        where = criteria.get("evseId")
    if profile_id is not None:
        return bool(profile_id == PROFILE_ID)
    purpose = criteria.get("chargingProfilePurpose")
    if purpose is not None and purpose != STATION_MAX[version]:
        return False
    return where is None or where == 0
