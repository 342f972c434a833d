"""The offline gate, sans I/O: must a tag the cache accepts be refused on a reserved connector?

Used when the gateway answers Authorize / StartTransaction (1.6) / TransactionEvent (2.0.1) itself;
driven by ``ReservationBook.gate_refusal`` and the session hook in :mod:`gateway.reservations.hook`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.ocpp.frames import OcppVersion
from gateway.reservations.rules import Reservation, format_time, is_active, strict_int

__all__ = [
    "GateTarget",
    "Refusal",
    "decide_gate",
    "gate_target",
    "parent_of",
    "refusal_status",
    "refused_info",
]


@dataclass(frozen=True, slots=True)
class GateTarget:
    """What a locally answered charger CALL asks to authorize: a tag, maybe on one connector."""

    tag: str
    connector_id: int | None


def gate_target(version: OcppVersion, action: str, payload: Mapping[str, Any]) -> GateTarget | None:
    """The tag and connector the gate must look at, or None when the CALL starts nothing.

    1.6: Authorize (no connector) and StartTransaction (``connectorId``). StopTransaction only ends
    a session. 2.0.1: Authorize (no EVSE) and TransactionEvent carrying an ``idToken``, except
    ``Ended`` (stopping is always allowed); the EVSE is ``evse.id`` when present (E01, E03).
    """
    if version == "1.6":
        tag = payload.get("idTag")
        if not isinstance(tag, str):
            return None
        if action == "Authorize":
            return GateTarget(tag, None)
        if action == "StartTransaction":
            return GateTarget(tag, strict_int(payload.get("connectorId")) or None)
        return None
    token = payload.get("idToken")
    tag = token.get("idToken") if isinstance(token, Mapping) else None
    if not isinstance(tag, str):
        return None
    if action == "Authorize":
        return GateTarget(tag, None)
    if action == "TransactionEvent" and payload.get("eventType") != "Ended":
        evse = payload.get("evse")
        evse_id = strict_int(evse.get("id")) if isinstance(evse, Mapping) else None
        return GateTarget(tag, evse_id or None)
    return None


def parent_of(version: OcppVersion, auth_info: Mapping[str, Any]) -> str | None:
    """The group of a tag as the cache answered it: 1.6 ``parentIdTag``, 2.0.1 ``groupIdToken``."""
    if version == "1.6":
        parent = auth_info.get("parentIdTag")
        return parent if isinstance(parent, str) else None
    group = auth_info.get("groupIdToken")
    token = group.get("idToken") if isinstance(group, Mapping) else None
    return token if isinstance(token, str) else None


@dataclass(frozen=True, slots=True)
class Refusal:
    """A tag the cache would accept must be refused: the connector is reserved for someone else."""

    status: str
    reservation: Reservation


def refusal_status(version: OcppVersion) -> str:
    """The idTagInfo / idTokenInfo status given to a tag refused because of a reservation.

    1.6 AuthorizationStatus has no "reserved" value. ``Invalid`` ("not allowed for charging") is the
    neutral refusal; ``Blocked`` would tell the charger's authorization cache (§3.5) the card itself
    is revoked and ``ConcurrentTx`` is about another transaction. 2.0.1 has ``NotAtThisTime``
    ("not allowed for charging at this moment"), which is exactly the case.
    """
    return "Invalid" if version == "1.6" else "NotAtThisTime"


def refused_info(
    version: OcppVersion, auth_info: Mapping[str, Any], refusal: Refusal
) -> dict[str, Any]:
    """The idTagInfo / idTokenInfo to answer with instead of ``auth_info``.

    1.6: the status only (with the tag's ``parentIdTag``); an ``expiryDate`` would describe the
    tag, not the refusal. 2.0.1: ``cacheExpiryDateTime`` is the reservation's expiry, so a charger
    that caches the answer (C10) stops refusing the tag when the reservation ends.
    """
    if version == "1.6":
        info: dict[str, Any] = {"status": refusal.status}
        if isinstance(auth_info.get("parentIdTag"), str):
            info["parentIdTag"] = auth_info["parentIdTag"]
        return info
    return {
        "status": refusal.status,
        "cacheExpiryDateTime": format_time(refusal.reservation.expiry),
    }


def _holds(
    reservation: Reservation, tag_key: str, parent_key: str | None, normalise: Callable[[str], str]
) -> bool:
    if normalise(reservation.id_tag) == tag_key:
        return True
    group = reservation.parent_id_tag
    if group is None:
        return False
    group_key = normalise(group)
    # 1.6 §5.13: an idTag whose parentIdTag equals the reservation's parentIdTag may use it.
    return group_key in (tag_key, parent_key)


def decide_gate(
    reservations: Sequence[Reservation],
    *,
    version: OcppVersion,
    connector_id: int | None,
    tag_key: str,
    now: datetime,
    normalise: Callable[[str], str],
    parent_key: str | None = None,
    connectors: frozenset[int] = frozenset(),
) -> Refusal | None:
    """Must a locally answered Authorize/StartTransaction/TransactionEvent be refused?

    ``reservations`` are one charger's records; ``tag_key`` (and ``parent_key``, the tag's parent
    as the cache knows it) are already normalised; ``connector_id`` is the message's connectorId /
    evse id, or None when it carries none (Authorize). ``connectors`` are the charger's connectors
    known from ``[[ports]]``.

    - On a connector: refused if an active reservation of that connector is held by another party.
      A whole-charger reservation (1.6 connectorId 0) only requires the charger to keep *one*
      connector free (§5.13), which only the charger can judge, unless it has a single connector.
    - Without a connector: refused only if no known connector is left for this tag, i.e. every
      connector in ``connectors`` (or the whole charger) is reserved for someone else.
    Returns None when the gate has no objection (the cache decides).
    """
    active = [r for r in reservations if is_active(r, now)]
    mine = [r for r in active if _holds(r, tag_key, parent_key, normalise)]
    others = [r for r in active if r not in mine]
    if not others:
        return None
    status = refusal_status(version)
    single = len(connectors) == 1
    if connector_id is not None:
        if any(r.connector_id == connector_id for r in mine):
            return None
        for r in others:
            if r.connector_id == connector_id or (r.connector_id is None and single):
                return Refusal(status, r)
        return None
    if mine:
        return None
    for r in others:
        if r.connector_id is None and single:
            return Refusal(status, r)
    blocked = {r.connector_id for r in others if r.connector_id is not None}
    if connectors and connectors <= blocked:
        return Refusal(status, next(r for r in others if r.connector_id is not None))
    return None
