"""TagCache over a real SQLite store: offline answers, learning, metrics, the lookup view."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.store.engine import Store
from gateway.tags.cache import CacheMetrics, TagCache
from gateway.tags.flipturn import parse_access_id
from gateway.tags.rules import Decision
from tests.flipturn_fake import access_id
from tests.support import wait_for

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "gateway.db")
    stage = await s.create_sync_stage(NOW.timestamp())
    rows = [
        parse_access_id(access_id(1, tag="AABBCCDDEEFF", kind="Vehicle")),
        parse_access_id(access_id(2, tag="RFID-1")),
        parse_access_id(access_id(3, tag="RFID-REVOKED", status="Revoked")),
    ]
    await s.stage_access_ids(stage, rows)
    await s.swap_sync_stage(stage, access_ids=3, vehicles=0, duration_s=0.1, at="2026-11-21T11:00Z")
    yield s
    await s.close()


@pytest.mark.parametrize(
    ("presented", "status"),
    [
        ("aa:bb:cc:dd:ee:ff", "Accepted"),
        ("VID:AA-BB-CC-DD-EE-FF", "Accepted"),
        ("vid:aabbccddeeff", "Accepted"),
        (" rfid-1 ", "Accepted"),
        ("rfid-revoked", "Blocked"),
    ],
)
async def test_synced_tags_in_any_spelling(store: Store, presented: str, status: str) -> None:
    cache = TagCache(store, unknown_tags="reject")
    assert await cache.authorize(presented, NOW) == Decision(status, None, None, "synced")


@pytest.mark.parametrize(("policy", "status"), [("reject", "Invalid"), ("accept", "Accepted")])
async def test_unknown_tags_follow_policy(store: Store, policy: str, status: str) -> None:
    cache = TagCache(store, unknown_tags=policy)
    assert (await cache.authorize("NOBODY", NOW)).status == status


async def test_learned_answers_are_used_offline(store: Store) -> None:
    cache = TagCache(store, unknown_tags="reject")
    ok = {"idTagInfo": {"status": "Accepted", "expiryDate": "2027-01-01T00:00:00Z"}}
    await cache.learn_from("1.6", "Authorize", {"idTag": "guest-7"}, ok, NOW)
    old = {"idTagInfo": {"status": "Accepted", "expiryDate": "2026-11-01T00:00:00Z"}}
    await cache.learn_from(
        "1.6", "StartTransaction", {"idTag": "guest-8", "connectorId": 1}, old, NOW
    )
    token = {"idToken": {"idToken": "01:02:03:04:05:06", "type": "MacAddress"}}
    await cache.learn_from("2.0.1", "Authorize", token, {"idTokenInfo": {"status": "Blocked"}}, NOW)

    assert await cache.authorize("GUEST-7", NOW) == Decision(
        "Accepted", "2027-01-01T00:00:00Z", None, "learned"
    )
    assert (await cache.authorize("guest-8", NOW)).status == "Expired"
    assert (await cache.authorize("010203040506", NOW)).status == "Blocked"


async def test_synced_list_wins_over_learned(store: Store) -> None:
    cache = TagCache(store, unknown_tags="accept")
    blocked = {"idTagInfo": {"status": "Blocked"}}
    await cache.learn_from("1.6", "Authorize", {"idTag": "rfid-1"}, blocked, NOW)
    assert (await cache.authorize("RFID-1", NOW)).source == "synced"
    assert (await cache.authorize("RFID-1", NOW)).status == "Accepted"


async def test_later_answers_replace_learned_entries(store: Store) -> None:
    cache = TagCache(store, unknown_tags="reject")
    await cache.learn_from(
        "1.6", "Authorize", {"idTag": "g"}, {"idTagInfo": {"status": "Accepted"}}, NOW
    )
    stop = {"transactionId": 1, "meterStop": 5, "timestamp": "x", "idTag": "G"}
    await cache.learn_from(
        "1.6", "StopTransaction", stop, {"idTagInfo": {"status": "Blocked"}}, NOW
    )
    assert (await cache.authorize("g", NOW)).status == "Blocked"
    row = await store.find_learned_tag("G")
    assert row is not None and row["id_tag"] == "G" and row["learned_at"] == "2026-11-21T12:00:00Z"


async def test_learn_from_never_raises(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    cache = TagCache(store, unknown_tags="reject")
    await cache.learn_from("1.6", "Authorize", {"idTag": None}, {"idTagInfo": 3}, NOW)
    assert cache.pending == 0  # nothing learnable, nothing held
    await store.close()  # a broken store is logged, not raised
    caplog.set_level(logging.WARNING)
    await cache.learn_from(
        "1.6", "Authorize", {"idTag": "x"}, {"idTagInfo": {"status": "Accepted"}}, NOW
    )
    assert any("wait in memory" in r.getMessage() for r in caplog.records)
    # An unreadable store still answers: what was learned since start, else by policy.
    assert await cache.authorize("X", NOW) == Decision("Accepted", None, None, "learned")
    assert (await cache.authorize("RFID-1", NOW)).source == "policy"
    await cache.close()
    assert cache.pending == 1  # the last attempt at stop could not write it either


async def test_metrics_count_local_answers_by_outcome(store: Store) -> None:
    registry = CollectorRegistry()
    cache = TagCache(store, unknown_tags="reject", metrics=CacheMetrics(registry))
    for tag in ["RFID-1", "aabbccddeeff", "RFID-REVOKED", "nobody"]:
        await cache.authorize(tag, NOW)
    await cache.learn_from(
        "1.6", "Authorize", {"idTag": "x"}, {"idTagInfo": {"status": "Accepted"}}, NOW
    )
    value = registry.get_sample_value
    name = "flipturn_gateway_local_authorizations_total"
    assert value(name, {"status": "Accepted", "source": "synced"}) == 2
    assert value(name, {"status": "Blocked", "source": "synced"}) == 1
    assert value(name, {"status": "Invalid", "source": "policy"}) == 1
    assert value("flipturn_gateway_learned_tags_total") == 1


async def test_describe_shows_record_and_decision(store: Store) -> None:
    cache = TagCache(store, unknown_tags="reject")
    view = await cache.describe("aa:bb:cc:dd:ee:ff", NOW)
    assert view["key"] == "AABBCCDDEEFF"
    assert view["accessId"]["id"] == 1 and view["accessId"]["type"] == "Vehicle"
    assert view["learned"] is None
    assert view["decision"] == {
        "source": "synced",
        "idTagInfo": {"status": "Accepted"},
        "idTokenInfo": {"status": "Accepted"},
    }
    await cache.learn_from(
        "2.0.1",
        "Authorize",
        {"idToken": {"idToken": "new", "type": "ISO14443"}},
        {
            "idTokenInfo": {
                "status": "Accepted",
                "groupIdToken": {"idToken": "G", "type": "Central"},
            }
        },
        NOW,
    )
    view = await cache.describe("NEW", NOW)
    assert view["accessId"] is None
    assert view["learned"]["idTag"] == "new" and view["learned"]["parentIdTag"] == "G"
    assert view["decision"]["idTagInfo"] == {"status": "Accepted", "parentIdTag": "G"}


async def test_lookup_sees_a_new_sync_at_once(store: Store) -> None:
    cache = TagCache(store, unknown_tags="reject")
    assert (await cache.authorize("RFID-1", NOW)).status == "Accepted"  # opens the reader
    stage = await store.create_sync_stage(NOW.timestamp())
    await store.stage_access_ids(
        stage, [parse_access_id(access_id(2, tag="RFID-1", status="Revoked"))]
    )
    await store.swap_sync_stage(stage, access_ids=1, vehicles=0, duration_s=0.1, at="x")
    assert (await cache.authorize("RFID-1", NOW)).status == "Blocked"
    assert (await cache.authorize("aabbccddeeff", NOW)).source == "policy"


async def test_in_memory_store_falls_back_to_the_shared_connection() -> None:
    store = await Store.open(":memory:")
    try:
        cache = TagCache(store, unknown_tags="accept")
        await cache.learn_from(
            "1.6", "Authorize", {"idTag": "m"}, {"idTagInfo": {"status": "Blocked"}}, NOW
        )
        assert (await cache.authorize("M", NOW)).status == "Blocked"
    finally:
        await store.close()


async def test_an_answer_counts_before_its_row_is_written(store: Store) -> None:
    cache = TagCache(store, unknown_tags="reject")
    blocked = {"idTagInfo": {"status": "Blocked"}}
    write = cache.learn("1.6", "Authorize", {"idTag": "fresh"}, blocked, NOW)
    assert write is not None and cache.pending == 1
    assert await store.find_learned_tag("FRESH") is None  # not committed yet ...
    assert await cache.authorize("fresh", NOW) == Decision("Blocked", None, None, "learned")
    view = await cache.describe("FRESH", NOW)  # ... and the lookup view shows it too
    assert view["learned"]["status"] == "Blocked" and view["decision"]["source"] == "learned"
    await write
    assert cache.pending == 0
    assert (await store.find_learned_tag("FRESH")) is not None
    assert await cache.authorize("fresh", NOW) == Decision("Blocked", None, None, "learned")
    # Nothing to learn: nothing held, no write.
    assert cache.learn("1.6", "Heartbeat", {}, {"currentTime": "x"}, NOW) is None


async def test_answers_learned_while_the_store_is_down_are_written_when_it_is_back(
    store: Store,
) -> None:
    cache = TagCache(store, unknown_tags="reject")
    await store.fetchone("PRAGMA query_only = 1")  # every commit fails, as on a read-only disk
    for n, status in enumerate(["Blocked", "Expired", "Accepted"]):
        await cache.learn_from(
            "1.6", "Authorize", {"idTag": f"t{n}"}, {"idTagInfo": {"status": status}}, NOW
        )
    assert not store.ok and cache.pending == 3
    assert [(await cache.authorize(f"T{n}", NOW)).status for n in range(3)] == [
        "Blocked",
        "Expired",
        "Accepted",
    ]
    await store.fetchone("PRAGMA query_only = 0")
    await store.probe()  # the store's own probe finds it commits again
    await wait_for(lambda: cache.pending == 0)
    rows = [await store.find_learned_tag(f"T{n}") for n in range(3)]
    assert [r.status if r is not None else None for r in rows] == ["Blocked", "Expired", "Accepted"]
    await cache.close()


async def test_close_writes_what_is_still_held(store: Store) -> None:
    cache = TagCache(store, unknown_tags="reject")
    await store.fetchone("PRAGMA query_only = 1")
    await cache.learn_from(
        "1.6", "Authorize", {"idTag": "late"}, {"idTagInfo": {"status": "Blocked"}}, NOW
    )
    await store.fetchone("PRAGMA query_only = 0")  # writable, and no commit has shown it yet
    assert cache.pending == 1
    await cache.close()
    assert cache.pending == 0
    row = await store.find_learned_tag("LATE")
    assert row is not None and row.status == "Blocked"


async def test_the_memory_bound_drops_the_oldest_unwritten_answer_and_says_so(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    cache = TagCache(store, unknown_tags="reject", max_pending=2)
    await store.fetchone("PRAGMA query_only = 1")
    caplog.set_level(logging.WARNING)
    for tag in ("a", "b", "c"):
        await cache.learn_from(
            "1.6", "Authorize", {"idTag": tag}, {"idTagInfo": {"status": "Blocked"}}, NOW
        )
    assert cache.pending == 2
    assert [(await cache.authorize(t, NOW)).source for t in "abc"] == [
        "policy",
        "learned",
        "learned",
    ]
    assert any(
        "1 learned answers not yet written were dropped" in r.message for r in caplog.records
    )
    await store.fetchone("PRAGMA query_only = 0")
    await cache.close()
    assert cache.pending == 0 and await store.find_learned_tag("C") is not None
