"""The offline action table: what the gateway answers when it must answer a charger itself.

Pure: inputs are the version, the CALL, ``now`` and the facts the driver looked up (an idTagInfo or
idTokenInfo from the cache, a local transaction id); the output is the CALLRESULT payload.
Contract: design.md "Offline action table".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from gateway.ocpp.frames import OcppVersion

__all__ = [
    "TRANSACTIONAL_ACTIONS",
    "Answer",
    "Rule",
    "iso_utc",
    "local_result",
    "presented_tag",
    "rule_for",
]


class Answer(enum.Enum):
    BOOT = "boot"
    HEARTBEAT = "heartbeat"
    AUTHORIZE = "authorize"
    START_TRANSACTION = "start_transaction"  # 1.6: idTagInfo + local transactionId
    STOP_TRANSACTION = "stop_transaction"  # 1.6: idTagInfo when an idTag is present
    TRANSACTION_EVENT = (
        "transaction_event"  # 2.0.1/2.1: {} + idTokenInfo when an idToken is present
    )
    EMPTY = "empty"  # notifications: {}
    NOT_SUPPORTED = "not_supported"


@dataclass(frozen=True, slots=True)
class Rule:
    answer: Answer
    stored: bool  # kept durably for replay before the charger gets its answer
    transactional: bool = False  # OCPP 1.6 §4.7: delivered in order, retried; never dropped


_NOT_SUPPORTED: Final = Rule(Answer.NOT_SUPPORTED, stored=False)
_NOTIFICATION: Final = Rule(Answer.EMPTY, stored=True)

_V16: Final[dict[str, Rule]] = {
    "BootNotification": Rule(Answer.BOOT, stored=False),  # kept apart: only the latest one
    "Heartbeat": Rule(Answer.HEARTBEAT, stored=False),
    "Authorize": Rule(Answer.AUTHORIZE, stored=False),
    "StartTransaction": Rule(Answer.START_TRANSACTION, stored=True, transactional=True),
    "StopTransaction": Rule(Answer.STOP_TRANSACTION, stored=True, transactional=True),
    "MeterValues": Rule(Answer.EMPTY, stored=True, transactional=True),
    "StatusNotification": _NOTIFICATION,
    "DiagnosticsStatusNotification": _NOTIFICATION,
    "FirmwareStatusNotification": _NOTIFICATION,
    # OCPP 1.6 security white paper (edition 3) notifications: empty responses.
    "SecurityEventNotification": _NOTIFICATION,
    "SignedFirmwareStatusNotification": _NOTIFICATION,
    "LogStatusNotification": _NOTIFICATION,
}

_V201: Final[dict[str, Rule]] = {
    "BootNotification": Rule(Answer.BOOT, stored=False),
    "Heartbeat": Rule(Answer.HEARTBEAT, stored=False),
    "Authorize": Rule(Answer.AUTHORIZE, stored=False),
    "TransactionEvent": Rule(Answer.TRANSACTION_EVENT, stored=True, transactional=True),
    # Requests whose responses have no required field (OCPP 2.0.1 part 3 schemas).
    **{
        action: _NOTIFICATION
        for action in (
            "StatusNotification",
            "MeterValues",
            "NotifyEvent",
            "NotifyReport",
            "NotifyMonitoringReport",
            "SecurityEventNotification",
            "FirmwareStatusNotification",
            "LogStatusNotification",
            "ReservationStatusUpdate",
            "NotifyChargingLimit",
            "ClearedChargingLimit",
            "NotifyCustomerInformation",
            "NotifyDisplayMessages",
            "ReportChargingProfiles",
            "PublishFirmwareStatusNotification",
        )
    },
}

# OCPP 2.1: the 2.0.1 table (same actions, answered with the 2.1 schemas), plus the charger
# CALLs new in 2.1 whose responses have no required field (OCPP 2.1 Part 3 schemas). New 2.1
# CALLs whose answer is a decision only the CSMS can make (OpenPeriodicEventStream,
# PullDynamicScheduleUpdate, VatNumberValidation, GetCertificateChainStatus, ...) get
# NotSupported like any action not listed. SEND frames (NotifyPeriodicEventStream) get no
# answer at all and are not stored: the session counts and drops them while offline.
_V21: Final[dict[str, Rule]] = {
    **_V201,
    **{
        action: _NOTIFICATION
        for action in (
            "BatterySwap",
            "ClosePeriodicEventStream",
            "NotifyDERAlarm",
            "NotifyDERStartStop",
            "NotifyPriorityCharging",
            "ReportDERControl",
        )
    },
    # A payment terminal's settlement is billing data: kept as long as transaction messages.
    "NotifySettlement": Rule(Answer.EMPTY, stored=True, transactional=True),
}

_TABLES: Final = {"1.6": _V16, "2.0.1": _V201, "2.1": _V21}

TRANSACTIONAL_ACTIONS: Final = frozenset(
    action for table in _TABLES.values() for action, rule in table.items() if rule.transactional
)
"""Actions whose queued messages are kept longest where nothing drains the queue (standalone)."""


def rule_for(version: OcppVersion, action: str) -> Rule:
    """The table row for a charger CALL; unknown actions are NotSupported and not stored."""
    return _TABLES[version].get(action, _NOT_SUPPORTED)


def iso_utc(now: datetime) -> str:
    """``2026-11-21T17:50:00.123Z``: the form chargers parse most reliably."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def local_result(
    version: OcppVersion,
    action: str,
    *,
    now: datetime,
    heartbeat_interval_s: int,
    auth_info: dict[str, Any] | None = None,
    transaction_id: int | None = None,
) -> dict[str, Any]:
    """The CALLRESULT payload the gateway gives for ``action`` when it answers itself.

    ``auth_info`` is the idTagInfo (1.6) or idTokenInfo (2.0.1, 2.1) for the presented tag, if any;
    ``transaction_id`` the local id for a 1.6 StartTransaction.
    """
    answer = rule_for(version, action).answer
    if answer is Answer.BOOT:
        return {"status": "Accepted", "currentTime": iso_utc(now), "interval": heartbeat_interval_s}
    if answer is Answer.HEARTBEAT:
        return {"currentTime": iso_utc(now)}
    if answer is Answer.AUTHORIZE:
        if auth_info is None:
            raise ValueError("Authorize needs auth_info")
        return {"idTagInfo" if version == "1.6" else "idTokenInfo": auth_info}
    if answer is Answer.START_TRANSACTION:
        if auth_info is None or transaction_id is None:
            raise ValueError("StartTransaction needs auth_info and transaction_id")
        return {"idTagInfo": auth_info, "transactionId": transaction_id}
    if answer is Answer.STOP_TRANSACTION:
        return {"idTagInfo": auth_info} if auth_info is not None else {}
    if answer is Answer.TRANSACTION_EVENT:
        return {"idTokenInfo": auth_info} if auth_info is not None else {}
    if answer is Answer.EMPTY:
        return {}
    raise ValueError(f"{action} is not answered locally")


def presented_tag(version: OcppVersion, action: str, payload: dict[str, Any]) -> str | None:
    """The id tag / token a charger CALL presents for authorization, if any."""
    if version == "1.6":
        if action in ("Authorize", "StartTransaction", "StopTransaction"):
            id_tag = payload.get("idTag")
            return id_tag if isinstance(id_tag, str) else None
        return None
    if action in ("Authorize", "TransactionEvent"):
        token = payload.get("idToken")
        if isinstance(token, dict) and isinstance(token.get("idToken"), str):
            tag: str = token["idToken"]
            return tag
    return None
