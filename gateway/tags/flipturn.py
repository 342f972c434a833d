"""Flipturn REST API shapes: validate what the API sends, rebuild what the local API shows. Pure.

Shapes: ../shared/flipturn-api (access-ids, vehicles). A list page is
``{"data": [...], "pagination": {"hasNextPage": bool, "nextPageCursor": str | null}}``.

Items are checked one by one: a malformed item (missing or mistyped field, a duplicate id or a
duplicate normalised ``ocppIdTag``) is rejected with a reason and the rest of the page is kept.
A malformed *page* (no ``data`` list, no usable cursor) cannot be trusted at all and fails the sync.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from gateway.errors import InvalidItem, InvalidPage
from gateway.ocpp.frames import dumps, loads
from gateway.tags.rules import normalise

__all__ = [
    "ACCESS_ID_COLUMNS",
    "VEHICLE_COLUMNS",
    "AccessIdFilter",
    "InvalidItem",
    "InvalidPage",
    "Page",
    "VehicleFilter",
    "access_id_json",
    "parse_access_id",
    "parse_page",
    "parse_vehicle",
    "vehicle_json",
]

# Column order of the rows below; the store's INSERTs use the same order.
ACCESS_ID_COLUMNS: Final = (
    "id",
    "ocpp_id_tag",
    "tag_key",
    "type",
    "name",
    "authorization_status",
    "authorized_at",
    "revoked_at",
    "created_at",
    "updated_at",
    "vehicle",
    "customer",
)
VEHICLE_COLUMNS: Final = (
    "id",
    "name",
    "make",
    "model",
    "vin",
    "license_plate",
    "has_telematics",
    "customer",
    "access_ids",
)


class Row(Protocol):
    """A stored row read by column name (``sqlite3.Row`` or a mapping)."""

    def __getitem__(self, key: str, /) -> Any: ...


AccessIdRow = tuple[Any, ...]
VehicleRow = tuple[Any, ...]

ACCESS_ID_TYPES: Final = frozenset({"RFID", "Vehicle"})
AUTHORIZATION_STATUSES: Final = frozenset({"Authorized", "Revoked"})


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Any]
    next_cursor: str | None  # None: this was the last page


def parse_page(body: Any) -> Page:
    """Split a list response into its items and the cursor of the next page."""
    if not isinstance(body, dict):
        raise InvalidPage("response is not a JSON object")
    items = body.get("data")
    if not isinstance(items, list):
        raise InvalidPage("response has no 'data' list")
    pagination = body.get("pagination")
    if not isinstance(pagination, dict):
        raise InvalidPage("response has no 'pagination' object")
    has_next = pagination.get("hasNextPage")
    if not isinstance(has_next, bool):
        raise InvalidPage("pagination.hasNextPage is not a boolean")
    if not has_next:
        return Page(items, None)
    cursor = pagination.get("nextPageCursor")
    if not isinstance(cursor, str) or not cursor:
        raise InvalidPage("pagination.hasNextPage is true but nextPageCursor is missing")
    return Page(items, cursor)


# --- field checks ---------------------------------------------------------------------------


def _int(item: Mapping[str, Any], key: str) -> int:
    value = item.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidItem(f"{key} is missing or not an integer")
    return value


def _str(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidItem(f"{key} is missing or not a non-empty string")
    return value


def _opt_str(item: Mapping[str, Any], key: str) -> str | None:
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidItem(f"{key} is not a string or null")
    return value


def _one_of(item: Mapping[str, Any], key: str, allowed: frozenset[str]) -> str:
    value = item.get(key)
    if value not in allowed:
        raise InvalidItem(f"{key} is not one of {', '.join(sorted(allowed))}")
    assert isinstance(value, str)
    return value


def _customer(item: Mapping[str, Any]) -> dict[str, Any] | None:
    value = item.get("customer")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidItem("customer is not an object or null")
    return {"name": _str(value, "name")}


def _access_id_vehicle(item: Mapping[str, Any]) -> dict[str, Any] | None:
    value = item.get("vehicle")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidItem("vehicle is not an object or null")
    return {
        "id": _int(value, "id"),
        "make": _opt_str(value, "make"),
        "model": _opt_str(value, "model"),
        "name": _opt_str(value, "name"),
        "vin": _opt_str(value, "vin"),
    }


def _json(value: Any) -> str | None:
    return None if value is None else dumps(value)


def _unjson(value: str | None) -> Any:
    return None if value is None else loads(value)


# --- access ids -----------------------------------------------------------------------------


def parse_access_id(item: Any) -> AccessIdRow:
    """An access id item as a row in :data:`ACCESS_ID_COLUMNS` order; InvalidItem if malformed."""
    if not isinstance(item, dict):
        raise InvalidItem("item is not an object")
    tag = _str(item, "ocppIdTag")
    return (
        _int(item, "id"),
        tag,
        normalise(tag),
        _one_of(item, "type", ACCESS_ID_TYPES),
        _str(item, "name"),
        _one_of(item, "authorizationStatus", AUTHORIZATION_STATUSES),
        _opt_str(item, "authorizedAt"),
        _opt_str(item, "revokedAt"),
        _opt_str(item, "createdAt"),
        _opt_str(item, "updatedAt"),
        _json(_access_id_vehicle(item)),
        _json(_customer(item)),
    )


def access_id_json(row: Row) -> dict[str, Any]:
    """A stored access id in the Flipturn shape (``GET /api/access-ids``)."""
    return {
        "id": row["id"],
        "ocppIdTag": row["ocpp_id_tag"],
        "type": row["type"],
        "name": row["name"],
        "authorizationStatus": row["authorization_status"],
        "authorizedAt": row["authorized_at"],
        "revokedAt": row["revoked_at"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
        "vehicle": _unjson(row["vehicle"]),
        "customer": _unjson(row["customer"]),
    }


# --- vehicles -------------------------------------------------------------------------------


def _vehicle_access_ids(item: Mapping[str, Any]) -> list[dict[str, Any]]:
    value = item.get("accessIds", [])
    if not isinstance(value, list):
        raise InvalidItem("accessIds is not a list")
    entries = []
    for entry in value:
        if not isinstance(entry, dict):
            raise InvalidItem("accessIds entry is not an object")
        entries.append(
            {
                "id": _int(entry, "id"),
                "ocppIdTag": _str(entry, "ocppIdTag"),
                "authorizationStatus": _one_of(
                    entry, "authorizationStatus", AUTHORIZATION_STATUSES
                ),
            }
        )
    return entries


def parse_vehicle(item: Any) -> VehicleRow:
    """A vehicle item as a row in :data:`VEHICLE_COLUMNS` order; InvalidItem if malformed."""
    if not isinstance(item, dict):
        raise InvalidItem("item is not an object")
    has_telematics = item.get("hasTelematics", False)
    if not isinstance(has_telematics, bool):
        raise InvalidItem("hasTelematics is not a boolean")
    return (
        _int(item, "id"),
        _opt_str(item, "name"),
        _opt_str(item, "make"),
        _opt_str(item, "model"),
        _opt_str(item, "vin"),
        _opt_str(item, "licensePlate"),
        int(has_telematics),
        _json(_customer(item)),
        dumps(_vehicle_access_ids(item)),
    )


def vehicle_json(row: Row) -> dict[str, Any]:
    """A stored vehicle in the Flipturn shape (``GET /api/vehicles``)."""
    return {
        "id": row["id"],
        "name": row["name"],
        "make": row["make"],
        "model": row["model"],
        "vin": row["vin"],
        "licensePlate": row["license_plate"],
        "hasTelematics": bool(row["has_telematics"]),
        "customer": _unjson(row["customer"]),
        "accessIds": _unjson(row["access_ids"]) or [],
    }


# --- per-sync filters: item checks plus duplicate detection across pages ---------------------


@dataclass
class AccessIdFilter:
    """Accepts valid access ids, rejecting malformed ones and duplicates of earlier pages."""

    accepted: int = 0
    rejected: int = 0
    _ids: set[int] = field(default_factory=set)
    _keys: set[str] = field(default_factory=set)

    def feed(self, items: list[Any]) -> tuple[list[AccessIdRow], list[str]]:
        """The rows to keep from ``items`` and one reason per rejected item."""
        rows: list[AccessIdRow] = []
        reasons: list[str] = []
        for index, item in enumerate(items):
            try:
                row = parse_access_id(item)
                if row[0] in self._ids:
                    raise InvalidItem(f"duplicate id {row[0]}")
                if row[2] in self._keys:
                    raise InvalidItem(f"duplicate ocppIdTag {row[1]!r} (normalised {row[2]})")
            except InvalidItem as exc:
                self.rejected += 1
                reasons.append(f"access id {_describe(item, index)}: {exc}")
                continue
            self._ids.add(row[0])
            self._keys.add(row[2])
            rows.append(row)
        self.accepted += len(rows)
        return rows, reasons


@dataclass
class VehicleFilter:
    """Accepts valid vehicles, rejecting malformed ones and duplicate ids."""

    accepted: int = 0
    rejected: int = 0
    _ids: set[int] = field(default_factory=set)

    def feed(self, items: list[Any]) -> tuple[list[VehicleRow], list[str]]:
        """The rows to keep from ``items`` and one reason per rejected item."""
        rows: list[VehicleRow] = []
        reasons: list[str] = []
        for index, item in enumerate(items):
            try:
                row = parse_vehicle(item)
                if row[0] in self._ids:
                    raise InvalidItem(f"duplicate id {row[0]}")
            except InvalidItem as exc:
                self.rejected += 1
                reasons.append(f"vehicle {_describe(item, index)}: {exc}")
                continue
            self._ids.add(row[0])
            rows.append(row)
        self.accepted += len(rows)
        return rows, reasons


def _describe(item: Any, index: int) -> str:
    if isinstance(item, dict) and "id" in item:
        return f"id={item['id']!r}"
    return f"#{index} of its page"
