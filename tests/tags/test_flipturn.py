"""The pure Flipturn shape checks: pages, items, duplicates, and the shapes shown back."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.tags.flipturn import (
    ACCESS_ID_COLUMNS,
    VEHICLE_COLUMNS,
    AccessIdFilter,
    InvalidItem,
    InvalidPage,
    VehicleFilter,
    access_id_json,
    parse_access_id,
    parse_page,
    parse_vehicle,
    vehicle_json,
)
from tests.flipturn_fake import access_id, vehicle


def test_parse_page_follows_cursor() -> None:
    body = {"data": [1], "pagination": {"hasNextPage": True, "nextPageCursor": "abc"}}
    page = parse_page(body)
    assert page.items == [1] and page.next_cursor == "abc"
    last = parse_page({"data": [], "pagination": {"hasNextPage": False, "nextPageCursor": None}})
    assert last.items == [] and last.next_cursor is None


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"pagination": {"hasNextPage": False}},
        {"data": {}, "pagination": {"hasNextPage": False}},
        {"data": []},
        {"data": [], "pagination": {"hasNextPage": "no"}},
        {"data": [], "pagination": {"hasNextPage": True, "nextPageCursor": None}},
        {"data": [], "pagination": {"hasNextPage": True, "nextPageCursor": ""}},
    ],
)
def test_parse_page_rejects_bad_pages(body: Any) -> None:
    with pytest.raises(InvalidPage):
        parse_page(body)


def test_access_id_round_trip_keeps_every_field() -> None:
    item = access_id(
        7,
        tag="vid:aa:bb:cc:dd:ee:ff",
        kind="Vehicle",
        vehicle={"id": 3, "make": None, "model": "Q", "name": "Van", "vin": None},
    )
    row = parse_access_id(item)
    assert row[2] == "AABBCCDDEEFF"  # tag_key
    assert access_id_json(dict(zip(ACCESS_ID_COLUMNS, row, strict=True))) == item


def test_vehicle_round_trip_keeps_every_field() -> None:
    item = vehicle(4, access_ids=[{"id": 1, "ocppIdTag": "T1", "authorizationStatus": "Revoked"}])
    item["customer"] = {"name": "Fleet"}
    item["hasTelematics"] = True
    row = parse_vehicle(item)
    assert vehicle_json(dict(zip(VEHICLE_COLUMNS, row, strict=True))) == item


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": "7"}, "id"),
        ({"id": True}, "id"),
        ({"ocppIdTag": None}, "ocppIdTag"),
        ({"ocppIdTag": " "}, "ocppIdTag"),
        ({"type": "Bike"}, "type"),
        ({"name": 3}, "name"),
        ({"authorizationStatus": "Maybe"}, "authorizationStatus"),
        ({"revokedAt": 5}, "revokedAt"),
        ({"vehicle": "van"}, "vehicle"),
        ({"vehicle": {"name": "x"}}, "id"),
        ({"customer": {"name": None}}, "name"),
    ],
)
def test_access_id_rejections(change: dict[str, Any], reason: str) -> None:
    item = access_id(7) | change
    with pytest.raises(InvalidItem, match=reason):
        parse_access_id(item)


def test_access_id_missing_required_field() -> None:
    item = access_id(7)
    del item["authorizationStatus"]
    with pytest.raises(InvalidItem, match="authorizationStatus"):
        parse_access_id(item)


def test_access_id_optional_fields_may_be_absent() -> None:
    item = {
        "id": 1,
        "ocppIdTag": "t",
        "type": "RFID",
        "name": "n",
        "authorizationStatus": "Revoked",
    }
    shown = access_id_json(dict(zip(ACCESS_ID_COLUMNS, parse_access_id(item), strict=True)))
    assert shown["revokedAt"] is None and shown["vehicle"] is None and shown["customer"] is None


def test_vehicle_rejections() -> None:
    with pytest.raises(InvalidItem, match="hasTelematics"):
        parse_vehicle(vehicle(1) | {"hasTelematics": "yes"})
    with pytest.raises(InvalidItem, match="accessIds"):
        parse_vehicle(vehicle(1) | {"accessIds": {}})
    with pytest.raises(InvalidItem, match="authorizationStatus"):
        parse_vehicle(vehicle(1, access_ids=[{"id": 1, "ocppIdTag": "T"}]))


def test_access_id_filter_rejects_duplicates_across_pages() -> None:
    flt = AccessIdFilter()
    rows, reasons = flt.feed([access_id(1, tag="aa:bb:cc:dd:ee:ff"), access_id(2), "junk"])
    assert [r[0] for r in rows] == [1, 2]
    assert reasons == ["access id #2 of its page: item is not an object"]
    rows, reasons = flt.feed(
        [access_id(3, tag="AABBCCDDEEFF"), access_id(2, tag="new"), access_id(4)]
    )
    assert [r[0] for r in rows] == [4]
    assert "duplicate ocppIdTag 'AABBCCDDEEFF'" in reasons[0]
    assert reasons[1] == "access id id=2: duplicate id 2"
    assert (flt.accepted, flt.rejected) == (3, 3)


def test_vehicle_filter_rejects_duplicate_ids() -> None:
    flt = VehicleFilter()
    rows, reasons = flt.feed([vehicle(1), vehicle(1), {"id": 2, "hasTelematics": 1}])
    assert [r[0] for r in rows] == [1]
    assert len(reasons) == 2 and (flt.accepted, flt.rejected) == (1, 2)
