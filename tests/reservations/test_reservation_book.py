"""ReservationBook over a real SQLite store: recording, closing, expiry, gate and metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.config import PortMapping
from gateway.reservations.book import CALL_ERROR, NO_ANSWER, ReservationBook
from gateway.store.engine import Store
from gateway.tags.rules import normalise

NOW = datetime(2026, 11, 21, 18, 0, tzinfo=UTC)
EXPIRY = "2026-11-21T19:00:00.000Z"


def upper(tag: str) -> str:
    return tag.strip().upper()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def book(store: Store, registry: CollectorRegistry) -> ReservationBook:
    ports = [
        PortMapping(id=101, charger="CP-1", connector=1),
        PortMapping(id=102, charger="CP-1", connector=2),
        PortMapping(id=201, charger="CP-2", connector=1),
    ]
    return ReservationBook(
        store, registry=registry, normalise=upper, ports=ports, clock=lambda: NOW
    )


def v16(rid: int = 1, connector: int = 1, tag: str = "alice", **extra: Any) -> dict[str, Any]:
    return {
        "connectorId": connector,
        "expiryDate": EXPIRY,
        "idTag": tag,
        "reservationId": rid,
        **extra,
    }


def v201(rid: int = 1, evse: int | None = 1, tag: str = "alice") -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": rid,
        "expiryDateTime": EXPIRY,
        "idToken": {"idToken": tag, "type": "ISO14443"},
    }
    if evse is not None:
        payload["evseId"] = evse
    return payload


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_cloud_reserve_is_recorded_with_its_outcome(
    book: ReservationBook, store: Store, registry: CollectorRegistry
) -> None:
    record = await book.on_cloud_reserve("CP-1", "1.6", v16(), {"status": "Accepted"})
    assert record is not None
    assert (record.state, record.status, record.source) == ("active", "Accepted", "cloud")
    row = await store.reservation("CP-1", 1)
    assert row is not None
    assert (row["connector_id"], row["id_tag"], row["expiry_date"], row["state"]) == (
        1,
        "alice",
        EXPIRY,
        "active",
    )
    assert [r.reservation_id for r in await book.list_active()] == [1]
    assert (
        sample(
            registry,
            "flipturn_gateway_reservation_requests_total",
            source="cloud",
            action="ReserveNow",
            outcome="Accepted",
        )
        == 1
    )
    assert sample(registry, "flipturn_gateway_reservations_active") == 1


async def test_refused_and_unanswered_reservations_are_recorded_not_active(
    book: ReservationBook, store: Store, registry: CollectorRegistry
) -> None:
    occupied = await book.on_cloud_reserve("CP-1", "2.0.1", v201(1), {"status": "Occupied"})
    silent = await book.on_cloud_reserve("CP-1", "2.0.1", v201(2), None)
    garbled = await book.on_cloud_reserve("CP-1", "2.0.1", v201(3), {"status": "Maybe"})
    assert occupied is not None and occupied.state == "refused"
    assert silent is not None and (silent.state, silent.status) == ("failed", CALL_ERROR)
    assert garbled is not None and (garbled.state, garbled.status) == ("failed", "BadAnswer")
    assert await book.list_active() == []
    assert len(await store.reservations_in_state("refused")) == 1
    assert len(await store.reservations_in_state("failed")) == 2


async def test_unreadable_cloud_reserve_is_counted_but_not_recorded(
    book: ReservationBook, store: Store, registry: CollectorRegistry
) -> None:
    assert (
        await book.on_cloud_reserve("CP-1", "1.6", {"idTag": "x"}, {"status": "Rejected"}) is None
    )
    assert await store.fetchall("SELECT * FROM reservations") == []
    assert (
        sample(
            registry,
            "flipturn_gateway_reservation_requests_total",
            source="cloud",
            action="ReserveNow",
            outcome="Rejected",
        )
        == 1
    )


async def test_201_reservation_without_evse_covers_the_charger(book: ReservationBook) -> None:
    record = await book.on_api_reserve("CP-2", "2.0.1", v201(5, evse=None), "Accepted")
    assert record is not None and record.connector_id is None and record.source == "api"
    # CP-2 has a single known connector, so a whole-charger reservation blocks it.
    assert await book.gate("CP-2", "2.0.1", 1, "bob") == "NotAtThisTime"
    assert await book.gate("CP-2", "2.0.1", 1, "ALICE") is None


async def test_refused_replacement_keeps_the_active_reservation(book: ReservationBook) -> None:
    await book.on_api_reserve("CP-1", "1.6", v16(7, tag="alice"), "Accepted")
    kept = await book.on_api_reserve("CP-1", "1.6", v16(7, tag="bob"), "Occupied")
    assert kept is not None and (kept.id_tag, kept.state) == ("alice", "active")
    replaced = await book.on_api_reserve("CP-1", "1.6", v16(7, connector=2, tag="bob"), "Accepted")
    assert replaced is not None and (replaced.id_tag, replaced.connector_id) == ("bob", 2)
    assert [(r.id_tag, r.connector_id) for r in await book.list_active()] == [("bob", 2)]


async def test_cancel_from_either_source(
    book: ReservationBook, registry: CollectorRegistry
) -> None:
    await book.on_api_reserve("CP-1", "1.6", v16(1), "Accepted")
    await book.on_api_reserve("CP-1", "1.6", v16(2, connector=2), "Accepted")
    await book.on_api_reserve("CP-1", "1.6", v16(3, connector=2), "Accepted")
    cancelled = await book.on_cloud_cancel(
        "CP-1", "1.6", {"reservationId": 1}, {"status": "Accepted"}
    )
    assert cancelled is not None and cancelled.state == "cancelled"
    removed = await book.on_api_cancel("CP-1", 2, "Rejected")
    assert removed is not None and removed.state == "removed"
    # No answer: the charger may still hold it, so it stays active.
    assert await book.on_api_cancel("CP-1", 3, NO_ANSWER) is None
    assert await book.on_cloud_cancel("CP-1", "1.6", {"reservationId": "x"}, None) is None
    assert [r.reservation_id for r in await book.list_active()] == [3]
    assert sample(registry, "flipturn_gateway_reservations_closed_total", state="cancelled") == 1
    assert sample(registry, "flipturn_gateway_reservations_closed_total", state="removed") == 1


@pytest.mark.parametrize(
    ("version", "action", "payload", "state"),
    [
        (
            "1.6",
            "StartTransaction",
            {"connectorId": 1, "idTag": "alice", "reservationId": 1},
            "used",
        ),
        ("2.0.1", "TransactionEvent", {"eventType": "Started", "reservationId": 1}, "used"),
        (
            "2.0.1",
            "ReservationStatusUpdate",
            {"reservationId": 1, "reservationUpdateStatus": "Expired"},
            "expired",
        ),
        (
            "2.0.1",
            "ReservationStatusUpdate",
            {"reservationId": 1, "reservationUpdateStatus": "Removed"},
            "removed",
        ),
    ],
)
async def test_charger_messages_close_reservations(
    book: ReservationBook,
    store: Store,
    version: Any,
    action: str,
    payload: dict[str, Any],
    state: str,
) -> None:
    reserve = v16(1) if version == "1.6" else v201(1)
    await book.on_cloud_reserve("CP-1", version, reserve, {"status": "Accepted"})
    closed = await book.on_charger_call("CP-1", version, action, payload)
    assert closed is not None and closed.state == state
    row = await store.reservation("CP-1", 1)
    assert row is not None and row["state"] == state
    assert await book.list_active() == []
    # The same message again, or for another charger, changes nothing.
    assert await book.on_charger_call("CP-1", version, action, payload) is None
    assert await book.on_charger_call("CP-9", version, action, payload) is None


async def test_other_charger_calls_are_ignored(book: ReservationBook) -> None:
    await book.on_cloud_reserve("CP-1", "1.6", v16(1), {"status": "Accepted"})
    assert await book.on_charger_call("CP-1", "1.6", "Heartbeat", {}) is None
    assert await book.on_charger_call("CP-1", "1.6", "StartTransaction", {"connectorId": 1}) is None
    assert len(await book.list_active()) == 1


async def test_expired_reservations_are_marked_expired(
    book: ReservationBook, store: Store, registry: CollectorRegistry
) -> None:
    await book.on_cloud_reserve("CP-1", "1.6", v16(1), {"status": "Accepted"})
    await book.on_cloud_reserve(
        "CP-1",
        "1.6",
        v16(2, connector=2, expiryDate="2026-11-21T20:00:00Z"),
        {"status": "Accepted"},
    )
    active = await book.list_active(NOW + timedelta(hours=1))
    assert [r.reservation_id for r in active] == [2]
    row = await store.reservation("CP-1", 1)
    assert row is not None and row["state"] == "expired"
    assert sample(registry, "flipturn_gateway_reservations_closed_total", state="expired") == 1
    assert sample(registry, "flipturn_gateway_reservations_active") == 1


async def test_gate_respects_reservation_until_expiry(
    book: ReservationBook, registry: CollectorRegistry
) -> None:
    await book.on_cloud_reserve(
        "CP-1", "1.6", v16(1, tag="alice", parentIdTag="fleet"), {"status": "Accepted"}
    )
    assert await book.gate("CP-1", "1.6", 1, "bob") == "Invalid"
    assert await book.gate("CP-1", "1.6", 1, " Alice") is None
    assert await book.gate("CP-1", "1.6", 1, "carol", parent_tag="FLEET") is None
    assert await book.gate("CP-1", "1.6", 2, "bob") is None
    assert await book.gate("CP-1", "1.6", None, "bob") is None  # connector 2 is free
    assert await book.gate("CP-2", "1.6", 1, "bob") is None
    late = NOW + timedelta(hours=1)
    assert await book.gate("CP-1", "1.6", 1, "bob", now=late) is None
    assert sample(registry, "flipturn_gateway_reservation_refusals_total") == 1


async def test_gate_after_the_reservation_was_used(book: ReservationBook) -> None:
    await book.on_cloud_reserve("CP-1", "1.6", v16(1), {"status": "Accepted"})
    await book.on_charger_call(
        "CP-1", "1.6", "StartTransaction", {"connectorId": 1, "idTag": "alice", "reservationId": 1}
    )
    assert await book.gate("CP-1", "1.6", 1, "bob") is None


async def test_records_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    first = await Store.open(path)
    book = ReservationBook(first, registry=CollectorRegistry(), normalise=upper)
    await book.on_cloud_reserve("CP-1", "1.6", v16(1), {"status": "Accepted"}, now=NOW)
    await first.close()
    second = await Store.open(path)
    try:
        again = ReservationBook(second, registry=CollectorRegistry(), normalise=upper)
        active = await again.list_active(NOW)
        assert [(r.charger_id, r.reservation_id, r.id_tag) for r in active] == [
            ("CP-1", 1, "alice")
        ]
        assert await again.gate("CP-1", "1.6", 1, "bob", now=NOW) == "Invalid"
    finally:
        await second.close()


async def test_gate_compares_tags_as_flipturn_normalises_them(
    store: Store, registry: CollectorRegistry
) -> None:
    book = ReservationBook(
        store,
        registry=registry,
        normalise=normalise,
        ports=[PortMapping(id=1, charger="CP-1", connector=1)],
        clock=lambda: NOW,
    )
    await book.on_api_reserve("CP-1", "1.6", v16(1, tag="aa:bb:cc:dd:ee:ff"), "Accepted")
    assert await book.gate("CP-1", "1.6", 1, "VID:AA-BB-CC-DD-EE-FF") is None
    assert await book.gate("CP-1", "1.6", 1, "aabbccddeeff") is None
    assert await book.gate("CP-1", "1.6", 1, "AA:BB:CC:DD:EE:00") == "Invalid"
