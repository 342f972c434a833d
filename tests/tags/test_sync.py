"""Sync from a fake Flipturn API (httpx.MockTransport) into a real SQLite store."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from gateway.errors import SyncAuthError, SyncError, SyncRateLimited
from gateway.store.engine import Store
from gateway.tags.sync import (
    FlipturnClient,
    SyncMetrics,
    SyncService,
    backoff_delay,
    next_sync_delay,
    parse_retry_after,
    sync_once,
    sync_status,
)
from tests.flipturn_fake import FakeFlipturn, access_id, vehicle

API = "https://api.flipturn.test"


class Sleeps:
    """An injected sleep that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def client_for(
    fake: FakeFlipturn, sleeps: Sleeps | None = None, key: str = "secret-key"
) -> FlipturnClient:
    return FlipturnClient(
        API,
        key,
        transport=fake.transport(),
        sleep=sleeps or Sleeps(),
        rng=random.Random(7),
    )


async def cached_tags(store: Store) -> list[str]:
    rows = await store.list_access_ids(None, 1000)
    return [row.ocpp_id_tag for row in rows]


async def stage_tables(store: Store) -> list[str]:
    rows = await store.fetchall("SELECT name FROM sqlite_master WHERE name LIKE 'sync_stage_%'")
    return [row[0] for row in rows]


def fleet(n: int, prefix: str = "TAG") -> list[dict[str, Any]]:
    return [access_id(i, tag=f"{prefix}{i}") for i in range(1, n + 1)]


async def test_sync_caches_every_page(store: Store) -> None:
    fake = FakeFlipturn(fleet(10), [vehicle(i) for i in range(1, 6)], page_size=3)
    async with client_for(fake) as client:
        result = await sync_once(store, client)
    assert (result.access_ids, result.vehicles) == (10, 5)
    assert result.duration_s >= 0
    assert await cached_tags(store) == [f"TAG{i}" for i in range(1, 11)]
    assert [r.id for r in await store.list_vehicles(None, 100)] == [1, 2, 3, 4, 5]
    # 4 pages of access ids, 2 of vehicles, cursors followed in order, the key sent as Bearer
    assert fake.served == {"/api/access-ids": 4, "/api/vehicles": 2}
    cursors = [r.url.params.get("cursor") for r in fake.requests if "access" in r.url.path]
    assert cursors == [None, "c1", "c2", "c3"]
    assert all(r.headers["Authorization"] == "Bearer secret-key" for r in fake.requests)
    assert await stage_tables(store) == []
    status = await sync_status(store)
    assert status["accessIds"] == 10 and status["lastError"] is None
    assert status["lastSuccessAt"].endswith("Z")


async def test_second_sync_replaces_the_list(store: Store) -> None:
    async with client_for(FakeFlipturn(fleet(5))) as client:
        await sync_once(store, client)
    async with client_for(FakeFlipturn(fleet(2, prefix="NEW"))) as client:
        result = await sync_once(store, client)
    assert result.access_ids == 2
    assert await cached_tags(store) == ["NEW1", "NEW2"]
    assert await store.lookup_tag("TAG3") == (None, None)


@pytest.mark.parametrize("path", ["/api/access-ids", "/api/vehicles"])
async def test_500_on_last_page_leaves_previous_cache(store: Store, path: str) -> None:
    async with client_for(FakeFlipturn(fleet(5), [vehicle(1)])) as client:
        await sync_once(store, client)
    before = await store.fetchone("SELECT last_success_at FROM sync_state")
    broken = FakeFlipturn(fleet(7, prefix="NEW"), [vehicle(i) for i in range(1, 8)], page_size=3)
    broken.fail[(path, 2)] = [500] * 10  # the last page of either list never arrives
    sleeps = Sleeps()
    async with client_for(broken, sleeps) as client:
        with pytest.raises(SyncError, match="HTTP 500"):
            await sync_once(store, client)
    assert await cached_tags(store) == [f"TAG{i}" for i in range(1, 6)]
    assert [r.id for r in await store.list_vehicles(None, 10)] == [1]
    assert await stage_tables(store) == []
    assert len(sleeps.delays) == 3  # 4 attempts, backing off in between
    status = await sync_status(store)
    assert "HTTP 500" in status["lastError"]
    assert status["accessIds"] == 5
    after = await store.fetchone("SELECT last_success_at FROM sync_state")
    assert after is not None and before is not None and after[0] == before[0]


async def test_transient_5xx_is_retried_with_backoff(store: Store) -> None:
    fake = FakeFlipturn(fleet(4))
    fake.fail[("/api/access-ids", 1)] = [503, 502]
    sleeps = Sleeps()
    async with client_for(fake, sleeps) as client:
        result = await sync_once(store, client)
    assert result.access_ids == 4
    assert len(sleeps.delays) == 2
    assert 0.5 <= sleeps.delays[0] <= 1.0 and 1.0 <= sleeps.delays[1] <= 2.0


async def test_timeouts_are_retried_then_fail(store: Store) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ReadTimeout("slow", request=request)

    sleeps = Sleeps()
    client = FlipturnClient(API, "k", transport=httpx.MockTransport(handler), sleep=sleeps)
    async with client:
        with pytest.raises(SyncError, match="timed out"):
            await sync_once(store, client)
    assert calls == 4 and len(sleeps.delays) == 3


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_is_clear_and_not_retried(store: Store, status: int) -> None:
    async with client_for(FakeFlipturn(fleet(3))) as client:
        await sync_once(store, client)
    fake = FakeFlipturn(fleet(3))
    if status == 403:
        fake.fail[("/api/access-ids", 0)] = [403]
    sleeps = Sleeps()
    key = "secret-key" if status == 403 else "wrong-key"
    async with client_for(fake, sleeps, key=key) as client:
        with pytest.raises(SyncAuthError) as info:
            await sync_once(store, client)
    message = str(info.value)
    assert f"HTTP {status}" in message and "flipturn.api_key" in message
    assert key not in message  # the key itself is never reported
    assert len(fake.requests) == 1 and sleeps.delays == []
    assert len(await cached_tags(store)) == 3


async def test_429_honours_retry_after_seconds(store: Store) -> None:
    fake = FakeFlipturn(fleet(6), retry_after="7")
    fake.fail[("/api/access-ids", 1)] = [429]
    sleeps = Sleeps()
    async with client_for(fake, sleeps) as client:
        result = await sync_once(store, client)
    assert result.access_ids == 6
    assert sleeps.delays == [7.0]
    assert fake.served["/api/access-ids"] == 2  # the rate-limited page was fetched again


async def test_429_with_a_long_wait_fails_with_the_delay(store: Store) -> None:
    fake = FakeFlipturn(fleet(6), retry_after="3600")
    fake.fail[("/api/access-ids", 1)] = [429]
    sleeps = Sleeps()
    async with client_for(fake, sleeps) as client:
        with pytest.raises(SyncRateLimited) as info:
            await sync_once(store, client)
    assert info.value.retry_after_s == 3600.0
    assert sleeps.delays == []
    assert await cached_tags(store) == []


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


async def test_malformed_items_rejected_one_by_one(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    no_name = access_id(3)
    del no_name["name"]
    items: list[Any] = [
        access_id(1, tag="aa:bb:cc:dd:ee:ff"),
        access_id(2),
        no_name,
        access_id(4) | {"id": "four"},
        access_id(5, tag="AABBCCDDEEFF"),  # same tag once normalised
        access_id(6),
        access_id(7),
        42,
        access_id(9),
    ]
    vehicles: list[Any] = [vehicle(1), vehicle(2) | {"accessIds": "none"}, vehicle(3)]
    caplog.set_level(logging.WARNING, logger="gateway.tags.sync")
    async with client_for(FakeFlipturn(items, vehicles)) as client:
        result = await sync_once(store, client)
    assert (result.access_ids, result.vehicles) == (5, 2)
    assert [r.id for r in await store.list_access_ids(None, 100)] == [1, 2, 6, 7, 9]
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(rejected) == 5
    assert any("id=3" in m and "name" in m for m in rejected)
    assert any("id='four'" in m for m in rejected)
    assert any("duplicate ocppIdTag" in m for m in rejected)
    assert any("vehicle id=2" in m and "accessIds" in m for m in rejected)


async def test_mostly_malformed_data_never_wipes_the_cache(store: Store) -> None:
    async with client_for(FakeFlipturn(fleet(4))) as client:
        await sync_once(store, client)
    junk: list[Any] = [{"id": i} for i in range(10)] + [access_id(99)]
    async with client_for(FakeFlipturn(junk)) as client:
        with pytest.raises(SyncError, match="10 of 11 access ids are malformed"):
            await sync_once(store, client)
    assert await cached_tags(store) == ["TAG1", "TAG2", "TAG3", "TAG4"]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"<html>maintenance</html>"),
        httpx.Response(200, json={"items": []}),
        httpx.Response(404, json={"error": "no"}),
        httpx.Response(
            200, json={"data": [], "pagination": {"hasNextPage": True, "nextPageCursor": "x"}}
        ),
    ],
)
async def test_bad_pages_fail_the_sync(store: Store, answer: httpx.Response) -> None:
    async with client_for(FakeFlipturn(fleet(2))) as client:
        await sync_once(store, client)

    def handler(request: httpx.Request) -> httpx.Response:
        return answer

    client = FlipturnClient(API, "k", transport=httpx.MockTransport(handler), sleep=Sleeps())
    async with client:
        with pytest.raises(SyncError):
            await sync_once(store, client)
    assert await cached_tags(store) == ["TAG1", "TAG2"]
    assert await stage_tables(store) == []


async def test_stale_stages_of_a_crashed_sync_are_dropped(store: Store) -> None:
    stale = await store.create_sync_stage(1000.0)
    fresh = await store.create_sync_stage(datetime.now(UTC).timestamp())
    async with client_for(FakeFlipturn(fleet(2))) as client:
        await sync_once(store, client)
    names = await stage_tables(store)
    assert not any(n.startswith(stale) for n in names)
    assert any(n.startswith(fresh) for n in names)  # maybe another process's sync in progress


async def test_status_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    store = await Store.open(path)
    async with client_for(FakeFlipturn(fleet(3))) as client:
        await sync_once(store, client)
    await store.close()
    store = await Store.open(path)
    try:
        status = await sync_status(store)
        assert status["accessIds"] == 3 and status["lastSuccessAt"] is not None
        assert await cached_tags(store) == ["TAG1", "TAG2", "TAG3"]
    finally:
        await store.close()


async def test_metrics(store: Store) -> None:
    registry = CollectorRegistry()
    metrics = SyncMetrics(registry)
    items: list[Any] = [*fleet(3), {"id": 9}]
    async with client_for(FakeFlipturn(items, [vehicle(1)])) as client:
        await sync_once(store, client, metrics=metrics)
    value = registry.get_sample_value
    assert value("flipturn_gateway_sync_access_ids") == 3
    assert value("flipturn_gateway_sync_vehicles") == 1
    assert value("flipturn_gateway_sync_duration_seconds_count") == 1
    assert (value("flipturn_gateway_sync_last_success_timestamp_seconds") or 0) > 1.7e9
    assert value("flipturn_gateway_sync_rejected_items_total", {"kind": "access_id"}) == 1
    async with client_for(FakeFlipturn(items), key="bad") as client:
        with pytest.raises(SyncAuthError):
            await sync_once(store, client, metrics=metrics)
    assert value("flipturn_gateway_sync_failures_total", {"reason": "auth"}) == 1


async def test_failing_since_marks_the_start_of_a_run_of_failures(store: Store) -> None:
    """The gauge the "tag sync failing for 1 h" alert reads: the first failure of a run, kept
    through later failures, back to 0 at the next success."""
    registry = CollectorRegistry()
    metrics = SyncMetrics(registry)

    def since() -> float:
        return (
            registry.get_sample_value("flipturn_gateway_sync_failing_since_timestamp_seconds")
            or 0.0
        )

    assert since() == 0.0
    down = FakeFlipturn(fleet(2))
    down.fail[("/api/access-ids", 0)] = [500] * 20
    before = datetime.now(UTC).timestamp()
    async with client_for(down) as client:
        with pytest.raises(SyncError):
            await sync_once(store, client, metrics=metrics)
    first = since()
    assert before <= first <= datetime.now(UTC).timestamp()
    async with client_for(FakeFlipturn(fleet(2)), key="bad") as client:
        with pytest.raises(SyncAuthError):
            await sync_once(store, client, metrics=metrics)
    assert since() == first  # still the same run
    async with client_for(FakeFlipturn(fleet(2))) as client:
        await sync_once(store, client, metrics=metrics)
    assert since() == 0.0
    async with client_for(FakeFlipturn(fleet(2)), key="bad") as client:
        with pytest.raises(SyncAuthError):
            await sync_once(store, client, metrics=metrics)
    assert since() > first  # a new run


# --- the periodic loop ----------------------------------------------------------------------


def test_backoff_delay_grows_and_is_capped() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(0, 10), (1, 20), (2, 40), (5, 300), (30, 300)]:
        delay = backoff_delay(attempt, base_s=10, cap_s=300, rng=rng)
        assert ceiling / 2 <= delay <= ceiling


def test_next_sync_delay_rules() -> None:
    rng = random.Random(1)
    kw: dict[str, Any] = {"interval_s": 300.0, "backoff_base_s": 10.0, "rng": rng}
    assert next_sync_delay(None, 0, **kw) == 300
    assert next_sync_delay(SyncAuthError("401"), 0, **kw) == 300
    assert next_sync_delay(SyncRateLimited("429", 120.0), 0, **kw) == 120
    assert 5 <= next_sync_delay(SyncError("500"), 1, **kw) <= 10
    assert 20 <= next_sync_delay(SyncError("500"), 3, **kw) <= 40


class StopLoop(Exception):
    pass


class LoopSleeps(Sleeps):
    """Records the loop's delays; ends the loop after ``limit`` sleeps."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) > self.limit:
            raise StopLoop


async def run_loop(
    store: Store, fake: FakeFlipturn, limit: int, key: str = "secret-key"
) -> list[float]:
    sleeps = LoopSleeps(limit)
    client = FlipturnClient(API, key, transport=fake.transport(), sleep=Sleeps(), max_attempts=1)
    service = SyncService(
        store, client, interval_s=300, sleep=sleeps, rng=random.Random(3), backoff_base_s=10
    )
    with pytest.raises(StopLoop):
        await service.run()
    await service.aclose()
    return sleeps.delays


async def test_loop_syncs_at_start_then_every_interval(store: Store) -> None:
    fake = FakeFlipturn(fleet(2))
    delays = await run_loop(store, fake, limit=3)
    assert delays == [0.0, 300, 300, 300]
    assert fake.served["/api/access-ids"] == 3


async def test_loop_backs_off_on_5xx(store: Store) -> None:
    fake = FakeFlipturn(fleet(2))
    fake.fail[("/api/access-ids", 0)] = [500] * 3
    delays = await run_loop(store, fake, limit=4)
    assert delays[0] == 0.0
    assert 5 <= delays[1] <= 10 and 10 <= delays[2] <= 20 and 20 <= delays[3] <= 40
    assert delays[4] == 300  # the fourth attempt succeeded


async def test_loop_does_not_hammer_on_401(store: Store) -> None:
    fake = FakeFlipturn(fleet(2))
    delays = await run_loop(store, fake, limit=3, key="wrong")
    assert delays == [0.0, 300, 300, 300]
    assert len(fake.requests) == 3
    assert "401" in (await sync_status(store))["lastError"]


async def test_loop_waits_out_retry_after(store: Store) -> None:
    fake = FakeFlipturn(fleet(2), retry_after="900")
    fake.fail[("/api/access-ids", 0)] = [429]
    delays = await run_loop(store, fake, limit=2)
    assert delays == [0.0, 900.0, 300]


async def test_loop_after_restart_waits_for_the_rest_of_the_interval(store: Store) -> None:
    async with client_for(FakeFlipturn(fleet(2))) as client:
        await sync_once(store, client)
    registry = CollectorRegistry()
    service = SyncService(
        store,
        client_for(FakeFlipturn(fleet(1))),
        interval_s=300,
        metrics=SyncMetrics(registry),
        sleep=LoopSleeps(0),
    )
    with pytest.raises(StopLoop):
        await service.run()
    await service.aclose()
    # no sync ran (the first sleep ended the loop), yet the gauges show the persisted state
    assert registry.get_sample_value("flipturn_gateway_sync_access_ids") == 2
    assert (
        registry.get_sample_value("flipturn_gateway_sync_last_success_timestamp_seconds") or 0
    ) > 1.7e9
    delays = await run_loop(store, FakeFlipturn(fleet(1)), limit=0)
    assert 290 <= delays[0] <= 300


async def test_sync_now_serialises_concurrent_syncs(store: Store) -> None:
    fake = FakeFlipturn(fleet(9), page_size=2)
    service = SyncService(store, client_for(fake), interval_s=300)
    results = await asyncio.gather(service.sync_now(), service.sync_now())
    await service.aclose()
    assert [r.access_ids for r in results] == [9, 9]
    assert (await service.status())["accessIds"] == 9
