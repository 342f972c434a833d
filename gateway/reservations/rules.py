"""Reservations, sans I/O: request validation, ReserveNow/CancelReservation payloads, the charger's
answers and the recording rules (the offline gate is in :mod:`gateway.reservations.gate`).

Everything here takes plain data and ``now`` and returns values; the asyncio driver is
:mod:`gateway.reservations.book`, the HTTP routes live in :mod:`gateway.api.reservations`.

Field names of the local API are Flipturn's (Flipturn API docs, "Reservations"):
``{portId, expiryDate, idTag, reservationId, parentIdTag?, idTokenType?}`` and
``{portId, reservationId}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final, Literal, Protocol, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from pydantic import field_validator as _field_validator

from gateway.config import PortMapping
from gateway.core.offline import iso_utc
from gateway.errors import (
    ChargerBadAnswer,
    FrameError,
    InvalidReservationRequest,
    UnknownPort,
)
from gateway.ocpp.frames import OcppVersion
from gateway.ocpp.validation import validate_result
from gateway.tags.rules import parse_datetime

__all__ = [
    "CANCEL_STATUSES",
    "CLOSING_ACTIONS",
    "ID_TOKEN_TYPES",
    "RESERVE_STATUSES",
    "CancelRequest",
    "Closing",
    "Reservation",
    "ReservationState",
    "ReserveCall",
    "ReserveRequest",
    "RowLike",
    "Source",
    "apply_cancel",
    "apply_closing",
    "apply_reserve",
    "cancel_payload",
    "cancel_status",
    "check_for_version",
    "closing_of",
    "format_time",
    "is_active",
    "new_reservation",
    "parse_cancel_request",
    "parse_reserve_call",
    "parse_reserve_request",
    "parse_time",
    "reservation_from_row",
    "reservation_json",
    "reserve_now_payload",
    "reserve_status",
    "resolve_port",
    "split_expired",
    "strict_int",
]

# OCPP 1.6 §7.39 ReservationStatus, 2.0.1 ReserveNowStatusEnumType: the same five values.
RESERVE_STATUSES: Final = frozenset({"Accepted", "Faulted", "Occupied", "Rejected", "Unavailable"})
# OCPP 1.6 §7.9 CancelReservationStatus, 2.0.1 CancelReservationStatusEnumType.
CANCEL_STATUSES: Final = frozenset({"Accepted", "Rejected"})
# The values Flipturn documents for idTokenType (2.0.1 IdTokenEnumType without NoAuthorization,
# which makes no sense for a reservation made for a user).
IdTokenType = Literal["Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local", "MacAddress"]
ID_TOKEN_TYPES: Final[tuple[str, ...]] = get_args(IdTokenType)

# Charger CALLs that may end a reservation (see closing_of).
CLOSING_ACTIONS: Final = frozenset(
    {"StartTransaction", "ReservationStatusUpdate", "TransactionEvent"}
)

MAX_ID_TAG: Final = 20  # Flipturn: "Max 20 characters"; OCPP 1.6 IdToken is CiString20Type
INT32_MAX: Final = 2**31 - 1  # chargers commonly hold OCPP "integer" fields in a signed 32-bit int

Source = Literal["api", "cloud"]
# active: the charger holds it; used / cancelled / expired / removed: closed; refused: the charger
# answered something other than Accepted; failed: no usable answer (timeout, CALLERROR, bad data).
ReservationState = Literal["active", "used", "cancelled", "expired", "removed", "refused", "failed"]


# --- time -----------------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """An ISO 8601 date-time as an aware UTC datetime (``tags.parse_datetime``); raise ValueError.

    A bare date is refused: OCPP's ``expiryDate`` is a date-time.
    """
    value = parse_datetime(text) if len(text) > 10 and text[10] in "Tt " else None
    if value is None:
        raise ValueError("must be an ISO 8601 date-time, e.g. 2030-01-31T18:00:00Z")
    return value


format_time = iso_utc  # what chargers and the API are given: UTC, milliseconds, ``Z``


# --- the local API's request bodies ---------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ReserveRequest(_Body):
    """``POST /api/ocpp/reservations``. Build with :func:`parse_reserve_request`."""

    port_id: StrictInt = Field(alias="portId")
    expiry_date: datetime = Field(alias="expiryDate")
    id_tag: StrictStr = Field(alias="idTag", min_length=1, max_length=MAX_ID_TAG)
    reservation_id: StrictInt = Field(alias="reservationId", ge=0, le=INT32_MAX)
    parent_id_tag: StrictStr | None = Field(
        default=None, alias="parentIdTag", min_length=1, max_length=MAX_ID_TAG
    )
    id_token_type: IdTokenType | None = Field(default=None, alias="idTokenType")

    @_field_validator("expiry_date", mode="before")
    @classmethod
    def _iso_8601(cls, value: Any) -> datetime:
        if not isinstance(value, str):
            raise ValueError("must be an ISO 8601 date-time string")
        return parse_time(value)

    @_field_validator("id_tag", "parent_id_tag")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value


class CancelRequest(_Body):
    """``POST /api/ocpp/reservations/cancel``. Build with :func:`parse_cancel_request`."""

    port_id: StrictInt = Field(alias="portId")
    reservation_id: StrictInt = Field(alias="reservationId", ge=0, le=INT32_MAX)


_ALIASES: Final = {
    name: info.alias or name
    for model in (ReserveRequest, CancelRequest)
    for name, info in model.model_fields.items()
}


def _describe(err: Mapping[str, Any]) -> tuple[str, str]:
    loc = err.get("loc") or ()
    field = str(_ALIASES.get(str(loc[0]), loc[0])) if loc else "body"
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return field, f"{field} is required"
    if kind == "extra_forbidden":
        return field, f"{field} is not a known field"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return field, f"{field} must be an integer"
    if kind == "string_type":
        return field, f"{field} must be a string"
    if kind == "string_too_long":
        return field, f"{field} must be at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        return field, f"{field} must not be empty"
    if kind in ("greater_than_equal", "less_than_equal"):
        return field, f"{field} must be an integer between 0 and {INT32_MAX}"
    if kind == "literal_error":
        return field, f"{field} must be one of {', '.join(ID_TOKEN_TYPES)}"
    message = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
    return field, f"{field} {message}"


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], body: Any) -> _M:
    if not isinstance(body, Mapping):
        raise InvalidReservationRequest("body", "body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        described = [_describe(err) for err in exc.errors()]
        raise InvalidReservationRequest(
            described[0][0], "; ".join(message for _, message in described)
        ) from None


def parse_reserve_request(body: Any, now: datetime) -> ReserveRequest:
    """Validate a reservation body; raise :class:`InvalidReservationRequest` naming the field."""
    request = _validate(ReserveRequest, body)
    if request.expiry_date <= now:
        raise InvalidReservationRequest("expiryDate", "expiryDate must be in the future")
    return request


def parse_cancel_request(body: Any) -> CancelRequest:
    """Validate a cancellation body; raise :class:`InvalidReservationRequest` naming the field."""
    return _validate(CancelRequest, body)


def check_for_version(request: ReserveRequest, version: OcppVersion) -> None:
    """The checks that depend on the charger's OCPP version.

    Flipturn: ``parentIdTag`` is "OCPP 1.6 only". A 2.0.1 charger would need it as
    ``groupIdToken``, whose semantics differ; refusing beats silently dropping the group.
    ``idTokenType`` is "ignored for OCPP 1.6 chargers" (Flipturn), so it is not an error there.
    """
    if version != "1.6" and request.parent_id_tag is not None:
        raise InvalidReservationRequest(
            "parentIdTag", "parentIdTag is only supported by OCPP 1.6 chargers"
        )


def resolve_port(ports: Iterable[PortMapping], port_id: int) -> PortMapping:
    """The ``[[ports]]`` entry of ``port_id``; raise :class:`UnknownPort`."""
    for mapping in ports:
        if mapping.id == port_id:
            return mapping
    raise UnknownPort(f"unknown portId {port_id}")


# --- what goes to the charger, and what comes back -------------------------------------------


def reserve_now_payload(
    version: OcppVersion, connector: int, request: ReserveRequest
) -> dict[str, Any]:
    """The ReserveNow payload for ``version``.

    1.6 §6.45: connectorId 0 reserves the charger as a whole. 2.0.1 ReserveNowRequest: evseId is
    optional and its absence means "any EVSE" (H01), so connector 0 maps to no evseId there.
    OCPP 2.1 keeps the 2.0.1 shape (Part 3 ReserveNowRequest: id, expiryDateTime, idToken,
    evseId?, connectorType?, groupIdToken?); its answer is checked against the 2.1 schema.
    """
    expiry = format_time(request.expiry_date)
    if version == "1.6":
        payload: dict[str, Any] = {
            "connectorId": connector,
            "expiryDate": expiry,
            "idTag": request.id_tag,
            "reservationId": request.reservation_id,
        }
        if request.parent_id_tag is not None:
            payload["parentIdTag"] = request.parent_id_tag
        return payload
    payload = {
        "id": request.reservation_id,
        "expiryDateTime": expiry,
        "idToken": {"idToken": request.id_tag, "type": request.id_token_type or "Central"},
    }
    if connector > 0:
        payload["evseId"] = connector
    return payload


def cancel_payload(version: OcppVersion, reservation_id: int) -> dict[str, Any]:
    """CancelReservation is ``{reservationId}`` in 1.6 (§6.5), 2.0.1 and 2.1 alike."""
    del version  # same shape in every version; kept for symmetry with reserve_now_payload
    return {"reservationId": reservation_id}


def _status(version: OcppVersion, action: str, answer: Any) -> str:
    if not isinstance(answer, dict):
        raise ChargerBadAnswer(f"charger answered {action} with a non-object payload")
    try:
        validate_result(version, action, answer, "-")
    except FrameError as exc:
        raise ChargerBadAnswer(
            f"charger's {action} answer breaks the schema: {exc.description}"
        ) from None
    return str(answer["status"])


def reserve_status(version: OcppVersion, answer: Any) -> str:
    """The ``status`` of a ReserveNow answer, validated against the schema of ``version``.

    A status outside the enum (or any other schema violation) is :class:`ChargerBadAnswer`.
    """
    return _status(version, "ReserveNow", answer)


def cancel_status(version: OcppVersion, answer: Any) -> str:
    """The ``status`` of a CancelReservation answer, validated like :func:`reserve_status`."""
    return _status(version, "CancelReservation", answer)


# --- recording ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    """One reservation as the gateway records it. ``connector_id`` None: the whole charger."""

    charger_id: str
    reservation_id: int
    connector_id: int | None
    id_tag: str
    parent_id_tag: str | None
    expiry: datetime
    source: Source
    status: str  # the charger's answer to ReserveNow
    state: ReservationState
    created_at: datetime
    updated_at: datetime

    def row(self) -> tuple[Any, ...]:
        """Values in the column order of the ``reservations`` table."""
        return (
            self.charger_id,
            self.reservation_id,
            self.connector_id,
            self.id_tag,
            self.parent_id_tag,
            format_time(self.expiry),
            self.source,
            self.status,
            self.state,
            format_time(self.created_at),
            format_time(self.updated_at),
        )


class RowLike(Protocol):
    """A ``sqlite3.Row`` or a dict: values by column name."""

    def __getitem__(self, key: str, /) -> Any: ...


def reservation_from_row(row: RowLike) -> Reservation:
    """A :class:`Reservation` from a ``reservations`` row (``sqlite3.Row`` or a dict)."""
    return Reservation(
        charger_id=row["charger_id"],
        reservation_id=int(row["reservation_id"]),
        connector_id=None if row["connector_id"] is None else int(row["connector_id"]),
        id_tag=row["id_tag"],
        parent_id_tag=row["parent_id_tag"],
        expiry=parse_time(row["expiry_date"]),
        source=row["source"],
        status=row["status"],
        state=row["state"],
        created_at=parse_time(row["created_at"]),
        updated_at=parse_time(row["updated_at"]),
    )


def reservation_json(reservation: Reservation, ports: Iterable[PortMapping]) -> dict[str, Any]:
    """One reservation as ``GET /api/ocpp/reservations`` shows it (Flipturn's field names)."""
    connector = reservation.connector_id or 0
    port_id = next(
        (p.id for p in ports if p.charger == reservation.charger_id and p.connector == connector),
        None,
    )
    return {
        "reservationId": reservation.reservation_id,
        "portId": port_id,
        "chargerId": reservation.charger_id,
        "connectorId": reservation.connector_id,
        "idTag": reservation.id_tag,
        "parentIdTag": reservation.parent_id_tag,
        "expiryDate": format_time(reservation.expiry),
        "source": reservation.source,
        "status": reservation.status,
        "state": reservation.state,
        "createdAt": format_time(reservation.created_at),
        "updatedAt": format_time(reservation.updated_at),
    }


@dataclass(frozen=True, slots=True)
class ReserveCall:
    """The fields of a ReserveNow CALL that matter here, whatever its version."""

    reservation_id: int
    connector_id: int | None
    id_tag: str
    parent_id_tag: str | None
    expiry: datetime


def strict_int(value: Any) -> int | None:
    """``value`` if it is a JSON integer (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_reserve_call(version: OcppVersion, payload: Any) -> ReserveCall | None:
    """Read a ReserveNow payload (from the cloud or built here); None if it cannot be read.

    1.6 §6.45 ``{connectorId, expiryDate, idTag, parentIdTag?, reservationId}``; 2.0.1
    ``{id, expiryDateTime, idToken{idToken,type}, groupIdToken?, evseId?}``. Connector 0 and a
    missing evseId both mean the whole charger.
    """
    if not isinstance(payload, Mapping):
        return None
    if version == "1.6":
        rid, connector = (
            strict_int(payload.get("reservationId")),
            strict_int(payload.get("connectorId")),
        )
        tag, parent, expiry = (
            payload.get("idTag"),
            payload.get("parentIdTag"),
            payload.get("expiryDate"),
        )
    else:
        rid, connector = strict_int(payload.get("id")), strict_int(payload.get("evseId"))
        token, group = payload.get("idToken"), payload.get("groupIdToken")
        tag = token.get("idToken") if isinstance(token, Mapping) else None
        parent = group.get("idToken") if isinstance(group, Mapping) else None
        expiry = payload.get("expiryDateTime")
    if rid is None or not isinstance(tag, str) or not isinstance(expiry, str):
        return None
    if version == "1.6" and connector is None:
        return None
    try:
        when = parse_time(expiry)
    except ValueError:
        return None
    return ReserveCall(
        reservation_id=rid,
        connector_id=connector if connector else None,
        id_tag=tag,
        parent_id_tag=parent if isinstance(parent, str) else None,
        expiry=when,
    )


def _outcome_state(status: str) -> ReservationState:
    if status == "Accepted":
        return "active"
    return "refused" if status in RESERVE_STATUSES else "failed"


def new_reservation(
    charger_id: str, call: ReserveCall, *, source: Source, status: str, now: datetime
) -> Reservation:
    """The record of a ReserveNow and its outcome: active only if the charger Accepted.

    ``status`` is the charger's status, or a label such as ``NoAnswer`` when there was none.
    """
    return Reservation(
        charger_id=charger_id,
        reservation_id=call.reservation_id,
        connector_id=call.connector_id,
        id_tag=call.id_tag,
        parent_id_tag=call.parent_id_tag,
        expiry=call.expiry,
        source=source,
        status=status,
        state=_outcome_state(status),
        created_at=now,
        updated_at=now,
    )


def is_active(reservation: Reservation, now: datetime) -> bool:
    """Active and not yet past its expiry."""
    return reservation.state == "active" and reservation.expiry > now


def apply_reserve(existing: Reservation | None, new: Reservation) -> Reservation | None:
    """The row to write for a ReserveNow outcome, or None to keep ``existing`` as it is.

    1.6 §5.13 / 2.0.1 H01.FR.02: a ReserveNow with the id of an existing reservation replaces it,
    but only if the charger accepts; a refused replacement leaves the charger's reservation in
    place, so an active record is kept rather than overwritten by the refusal.
    """
    if new.state != "active" and existing is not None and existing.state == "active":
        return None
    if existing is not None:
        return replace(new, created_at=existing.created_at)
    return new


def apply_cancel(existing: Reservation | None, status: str, now: datetime) -> Reservation | None:
    """The row to write after the charger answered CancelReservation, or None (nothing recorded).

    Accepted: cancelled. Rejected means, by 1.6 §6.5 and 2.0.1 H02, that the charger holds no such
    reservation, so it will not enforce it either: the record is closed as ``removed``.
    """
    if existing is None or existing.state != "active":
        return None
    state: ReservationState = "cancelled" if status == "Accepted" else "removed"
    return replace(existing, state=state, updated_at=now)


@dataclass(frozen=True, slots=True)
class Closing:
    """A charger message that ends reservation ``reservation_id`` with ``state``."""

    reservation_id: int
    state: ReservationState


def closing_of(version: OcppVersion, action: str, payload: Any) -> Closing | None:
    """Whether a charger CALL ends a reservation.

    - 1.6 StartTransaction with ``reservationId`` (§5.13: the transaction ends the reservation);
    - 2.0.1/2.1 TransactionEvent with ``reservationId`` (same meaning, E01/H01);
    - 2.0.1/2.1 ReservationStatusUpdate ``Expired`` / ``Removed`` (H05).
    """
    if not isinstance(payload, Mapping):
        return None
    rid = strict_int(payload.get("reservationId"))
    if rid is None:
        return None
    if version == "1.6" and action == "StartTransaction":
        return Closing(rid, "used")
    if version != "1.6" and action == "TransactionEvent":
        return Closing(rid, "used")
    if version != "1.6" and action == "ReservationStatusUpdate":
        update = payload.get("reservationUpdateStatus")
        if update == "Expired":
            return Closing(rid, "expired")
        if update == "Removed":
            return Closing(rid, "removed")
    return None


def apply_closing(
    existing: Reservation | None, closing: Closing, now: datetime
) -> Reservation | None:
    """The row to write for a closing message, or None when there is no active record to close."""
    if existing is None or existing.state != "active":
        return None
    return replace(existing, state=closing.state, updated_at=now)


def split_expired(
    reservations: Iterable[Reservation], now: datetime
) -> tuple[list[Reservation], list[Reservation]]:
    """``(still active, newly expired)`` among active records; the expired ones already updated."""
    active: list[Reservation] = []
    expired: list[Reservation] = []
    for reservation in reservations:
        if reservation.state != "active":
            continue
        if reservation.expiry > now:
            active.append(reservation)
        else:
            expired.append(replace(reservation, state="expired", updated_at=now))
    return active, expired
