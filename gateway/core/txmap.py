"""OCPP 1.6 transaction ids: local ids for offline StartTransactions and their rewrite.

OCPP 1.6 §4.8: the central system assigns ``transactionId``. A StartTransaction answered by the gateway
gets an id from a reserved range; once the cloud answers the replayed StartTransaction, the local id maps
to the cloud's. Charger→cloud messages are rewritten local→cloud, cloud→charger CALLs cloud→local.
A local id must never reach the cloud (CSMSs answer unknown ids with errors; chargers retry forever).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gateway.errors import UnmappedTransaction

__all__ = [
    "LOCAL_TX_MAX",
    "LOCAL_TX_MIN",
    "TxIdMap",
    "UnmappedTransaction",
    "is_local",
    "local_ids_in",
    "rewrite_to_charger",
    "rewrite_to_cloud",
]

# The top of the int32 range: far above ids real CSMSs hand out, still an int32 for charger firmware.
LOCAL_TX_MIN: Final = 2_000_000_000
LOCAL_TX_MAX: Final = 2_147_483_647


def is_local(tx_id: object) -> bool:
    return isinstance(tx_id, int) and LOCAL_TX_MIN <= tx_id <= LOCAL_TX_MAX


def local_ids_in(action: str, payload: Mapping[str, Any]) -> list[int]:
    """The local transaction ids a charger→cloud message carries (StopTransaction, MeterValues)."""
    if action in ("StopTransaction", "MeterValues"):
        tx = payload.get("transactionId")
        if isinstance(tx, int) and is_local(tx):
            return [tx]
    return []


def rewrite_to_cloud(
    action: str, payload: dict[str, Any], local_to_cloud: Mapping[int, int]
) -> dict[str, Any]:
    """``payload`` with every local transaction id replaced by the cloud's.

    Raises :class:`UnmappedTransaction` when a local id has no cloud id: such a message must wait
    (or be dead-lettered), never be sent with the placeholder.
    """
    ids = local_ids_in(action, payload)
    if not ids:
        return payload
    cloud = local_to_cloud.get(ids[0])
    if cloud is None:
        raise UnmappedTransaction(ids[0])
    return {**payload, "transactionId": cloud}


def rewrite_to_charger(
    action: str, payload: dict[str, Any], cloud_to_local: Mapping[int, int]
) -> dict[str, Any]:
    """A cloud CALL with the cloud's transaction id replaced by the charger's local one."""
    if not cloud_to_local:
        return payload
    if action == "RemoteStopTransaction":
        local = cloud_to_local.get(payload.get("transactionId"))  # type: ignore[arg-type]
        if local is not None:
            return {**payload, "transactionId": local}
    elif action == "SetChargingProfile":
        profile = payload.get("csChargingProfiles")
        if isinstance(profile, dict):
            local = cloud_to_local.get(profile.get("transactionId"))  # type: ignore[arg-type]
            if local is not None:
                return {**payload, "csChargingProfiles": {**profile, "transactionId": local}}
    return payload


class TxIdMap:
    """One charger's local↔cloud transaction ids, mirrored from the ``tx_ids`` table."""

    __slots__ = ("cloud_to_local", "local_to_cloud", "unmapped")

    def __init__(self, rows: list[tuple[int, int | None]] | None = None) -> None:
        self.local_to_cloud: dict[int, int] = {}
        self.cloud_to_local: dict[int, int] = {}
        self.unmapped: set[int] = set()
        for local, cloud in rows or ():
            if cloud is None:
                self.unmapped.add(local)
            else:
                self.bind(local, cloud)

    def add_local(self, local: int) -> None:
        self.unmapped.add(local)

    def bind(self, local: int, cloud: int) -> None:
        self.unmapped.discard(local)
        self.local_to_cloud[local] = cloud
        self.cloud_to_local[cloud] = local

    def __bool__(self) -> bool:
        return bool(self.local_to_cloud or self.unmapped)
