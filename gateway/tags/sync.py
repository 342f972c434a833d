"""Sync of access ids and vehicles from the Flipturn REST API into the store (thin httpx driver).

design.md "Flipturn REST API as the gateway consumes it": ``GET /api/access-ids`` and
``GET /api/vehicles`` with ``Authorization: Bearer {api_key}``, following
``pagination.nextPageCursor`` until ``hasNextPage`` is false. Pages are streamed into stage tables
as they arrive; the cached lists are replaced in one transaction only once every page of both lists
arrived. Any failure leaves the previous cache exactly as it was.

Retries. Within one sync a page is retried: 429 waits ``Retry-After`` (up to
``max_retry_after_s``; a longer wait fails the sync with :class:`SyncRateLimited` so the periodic
loop waits instead), 5xx, timeouts and connection errors back off exponentially with jitter for
``max_attempts`` attempts. 401/403 fail at once with :class:`SyncAuthError`; the periodic loop then
waits a whole interval, so a wrong key is reported without hammering the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway import __version__
from gateway.errors import StoreError, SyncAuthError, SyncError, SyncRateLimited
from gateway.ocpp.frames import loads
from gateway.store.engine import Store
from gateway.tags.flipturn import AccessIdFilter, InvalidPage, VehicleFilter, parse_page

if TYPE_CHECKING:
    import httpx

__all__ = [
    "FlipturnClient",
    "SyncMetrics",
    "SyncResult",
    "SyncService",
    "backoff_delay",
    "next_sync_delay",
    "parse_retry_after",
    "sync_once",
    "sync_status",
]

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

STAGE_CHUNK_ROWS: Final = 1000  # rows per staging transaction: short write-lock holds, few fsyncs
STALE_STAGE_AGE_S: Final = 3600.0
MAX_LOGGED_REJECTIONS: Final = 100  # per list and sync; the rest are counted in one summary line


@dataclass(frozen=True, slots=True)
class SyncResult:
    access_ids: int
    vehicles: int
    duration_s: float


# --- pure timing decisions ------------------------------------------------------------------


def backoff_delay(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with jitter: uniformly 0.5 to 1 times min(cap, base * 2**attempt)."""
    ceiling = min(cap_s, base_s * 2.0 ** max(attempt, 0))
    return float(ceiling * rng.uniform(0.5, 1.0))


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from ``Retry-After``: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def next_sync_delay(
    error: SyncError | None,
    failures: int,
    *,
    interval_s: float,
    backoff_base_s: float,
    rng: random.Random,
) -> float:
    """How long the periodic loop waits after a sync that ended with ``error`` (None: success).

    ``failures`` counts consecutive transient failures, this one included.
    """
    if error is None or isinstance(error, SyncAuthError):
        return interval_s  # 401/403: no retry until the next interval
    if isinstance(error, SyncRateLimited):
        return max(error.retry_after_s, 1.0)
    return backoff_delay(failures - 1, base_s=backoff_base_s, cap_s=interval_s, rng=rng)


# --- metrics --------------------------------------------------------------------------------


class SyncMetrics:
    """Prometheus metrics of the Flipturn sync, registered in the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_success = Gauge(
            "flipturn_gateway_sync_last_success_timestamp_seconds",
            "Unix time of the last successful Flipturn sync",
            registry=registry,
        )
        self.duration = Histogram(
            "flipturn_gateway_sync_duration_seconds",
            "Duration of successful Flipturn syncs",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.access_ids = Gauge(
            "flipturn_gateway_sync_access_ids",
            "Access ids in the cache after the last successful sync",
            registry=registry,
        )
        self.vehicles = Gauge(
            "flipturn_gateway_sync_vehicles",
            "Vehicles in the cache after the last successful sync",
            registry=registry,
        )
        self.failures = Counter(
            "flipturn_gateway_sync_failures",
            "Failed Flipturn syncs by reason (auth, rate_limited, error)",
            ["reason"],
            registry=registry,
        )
        # For the "tag sync failing for 1 h" alert (contrib/prometheus/alerts.yml): a run of
        # failures has a start, which neither the last success (a daily sync_interval_s would look
        # stale) nor the failure counter (how many, not since when) says.
        self.failing_since = Gauge(
            "flipturn_gateway_sync_failing_since_timestamp_seconds",
            "Unix time of the first failed sync since the last success (0: the last one succeeded)",
            registry=registry,
        )
        self._failing_since = 0.0
        self.rejected = Counter(
            "flipturn_gateway_sync_rejected_items",
            "Malformed items rejected during syncs, by kind (access_id, vehicle)",
            ["kind"],
            registry=registry,
        )

    def succeeded(self, result: SyncResult, at: float) -> None:
        self.last_success.set(at)
        self._failing_since = 0.0
        self.failing_since.set(0)
        self.duration.observe(result.duration_s)
        self.access_ids.set(result.access_ids)
        self.vehicles.set(result.vehicles)

    def failed(self, error: SyncError, at: float) -> None:
        if not self._failing_since:  # the first of a run of failures
            self._failing_since = at
            self.failing_since.set(at)
        if isinstance(error, SyncAuthError):
            reason = "auth"
        elif isinstance(error, SyncRateLimited):
            reason = "rate_limited"
        else:
            reason = "error"
        self.failures.labels(reason=reason).inc()


# --- the HTTP client ------------------------------------------------------------------------


class FlipturnClient:
    """Paged GETs against the Flipturn REST API, with per-page retries. Translates httpx errors."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
        max_attempts: int = 4,
        backoff_base_s: float = 1.0,
        max_retry_after_s: float = 60.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        # Imported here: only gateways that sync (flipturn.api_key set) pay its ~3 MB resident.
        import httpx

        self._httpx = httpx
        self._http = httpx.AsyncClient(
            base_url=api_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": f"flipturn-gateway/{__version__}",
            },
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            transport=transport,
        )
        self._max_attempts = max(1, max_attempts)
        self._backoff_base_s = backoff_base_s
        self._max_retry_after_s = max_retry_after_s
        self._sleep = sleep
        self._rng = rng or random.Random()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> FlipturnClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def pages(self, path: str) -> AsyncIterator[list[Any]]:
        """The ``data`` list of every page of ``path``, following the cursor to the end."""
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            body = await self._get(path, cursor)
            try:
                page = parse_page(body)
            except InvalidPage as exc:
                raise SyncError(f"GET {path}: {exc}") from exc
            yield page.items
            if page.next_cursor is None:
                return
            if page.next_cursor in seen:
                raise SyncError(f"GET {path}: the API repeated cursor {page.next_cursor!r}")
            seen.add(page.next_cursor)
            cursor = page.next_cursor

    async def _get(self, path: str, cursor: str | None) -> Any:
        params = {"cursor": cursor} if cursor is not None else None
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.get(path, params=params)
            except self._httpx.TimeoutException:
                problem = "timed out"
            except self._httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__})"
            else:
                status = response.status_code
                if status in (401, 403):
                    raise SyncAuthError(
                        f"Flipturn API refused the api key (HTTP {status} on GET {path});"
                        " check flipturn.api_key"
                    )
                if status == 429:
                    await self._rate_limited(path, response, attempt)
                    continue
                if status < 400:
                    try:
                        return loads(response.content)
                    except ValueError as exc:
                        raise SyncError(f"GET {path}: response is not valid JSON") from exc
                if status < 500:
                    raise SyncError(f"Flipturn API answered HTTP {status} on GET {path}")
                problem = f"HTTP {status}"
            if attempt >= self._max_attempts:
                raise SyncError(
                    f"Flipturn API unavailable: GET {path} {problem} ({attempt} attempts)"
                )
            delay = backoff_delay(
                attempt - 1, base_s=self._backoff_base_s, cap_s=60.0, rng=self._rng
            )
            log.info("GET %s %s; retrying in %.1f s", path, problem, delay)
            await self._sleep(delay)

    async def _rate_limited(self, path: str, response: httpx.Response, attempt: int) -> None:
        wait = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
        if wait is None:
            wait = backoff_delay(
                attempt - 1, base_s=self._backoff_base_s, cap_s=60.0, rng=self._rng
            )
        if wait > self._max_retry_after_s or attempt >= 10 * self._max_attempts:
            raise SyncRateLimited(
                f"Flipturn API rate limit on GET {path}: retry after {wait:.0f} s", wait
            )
        log.info("GET %s rate limited (429); waiting %.1f s as Retry-After asks", path, wait)
        await self._sleep(wait)


# --- one sync -------------------------------------------------------------------------------


def _report(reasons: list[str], logged: int) -> int:
    for reason in reasons[: max(0, MAX_LOGGED_REJECTIONS - logged)]:
        log.warning("sync: rejected %s", reason)
    return logged + len(reasons)


def _check_rejections(kind: str, accepted: int, rejected: int, logged: int) -> None:
    if logged > MAX_LOGGED_REJECTIONS:
        log.warning("sync: %d more malformed %s not logged", logged - MAX_LOGGED_REJECTIONS, kind)
    # Mostly malformed data means the API (or its shape) is broken, not that the fleet shrank:
    # replacing the cache with the remainder would wipe it. Keep the old cache instead.
    if rejected > accepted:
        raise SyncError(f"{rejected} of {accepted + rejected} {kind} are malformed; cache kept")


async def _stage_pages(
    client: FlipturnClient,
    path: str,
    checker: AccessIdFilter | VehicleFilter,
    stage_rows: Callable[[str, Sequence[Sequence[Any]]], Awaitable[None]],
    stage: str,
    kind: str,
) -> None:
    """Every page of ``path`` checked item by item into ``stage``, in chunks of STAGE_CHUNK_ROWS."""
    buffer: list[Sequence[Any]] = []
    logged = 0
    async for items in client.pages(path):
        rows, reasons = checker.feed(items)
        logged = _report(reasons, logged)
        buffer.extend(rows)
        if len(buffer) >= STAGE_CHUNK_ROWS:
            await stage_rows(stage, buffer)
            buffer = []
    await stage_rows(stage, buffer)
    _check_rejections(kind, checker.accepted, checker.rejected, logged)


async def sync_once(
    store: Store, client: FlipturnClient, *, metrics: SyncMetrics | None = None
) -> SyncResult:
    """Fetch every page of both lists, then replace the cache in one transaction.

    Raises SyncError (SyncAuthError, SyncRateLimited) with the cache untouched.
    """
    started = time.monotonic()
    stage: str | None = None
    try:
        try:
            await store.drop_stale_sync_stages(time.time(), STALE_STAGE_AGE_S)
            stage = await store.create_sync_stage(time.time())
            access = AccessIdFilter()
            await _stage_pages(
                client, "/api/access-ids", access, store.stage_access_ids, stage, "access ids"
            )
            vehicles = VehicleFilter()
            await _stage_pages(
                client, "/api/vehicles", vehicles, store.stage_vehicles, stage, "vehicles"
            )

            result = SyncResult(access.accepted, vehicles.accepted, time.monotonic() - started)
            await store.swap_sync_stage(
                stage,
                access_ids=result.access_ids,
                vehicles=result.vehicles,
                duration_s=result.duration_s,
                at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            )
            stage = None
        except StoreError as exc:
            raise SyncError(f"store: {exc}") from exc
        finally:
            if stage is not None:
                with contextlib.suppress(StoreError):
                    await asyncio.shield(store.drop_sync_stage(stage))
    except SyncError as exc:
        if metrics is not None:
            metrics.failed(exc, time.time())
        with contextlib.suppress(StoreError):
            await store.record_sync_failure(str(exc))
        raise
    if metrics is not None:
        metrics.succeeded(result, time.time())
        metrics.rejected.labels(kind="access_id").inc(access.rejected)
        metrics.rejected.labels(kind="vehicle").inc(vehicles.rejected)
    log.info(
        "sync: %d access ids, %d vehicles in %.2f s (%d, %d malformed rejected)",
        result.access_ids,
        result.vehicles,
        result.duration_s,
        access.rejected,
        vehicles.rejected,
    )
    return result


async def sync_status(store: Store) -> dict[str, Any]:
    """The ``sync`` block of ``GET /health``, from the persisted sync state."""
    row = await store.sync_status()
    return {
        "lastSuccessAt": row.last_success_at if row is not None else None,
        "lastError": row.last_error if row is not None else None,
        "accessIds": int(row.access_ids) if row is not None else 0,
    }


# --- the periodic loop ----------------------------------------------------------------------


class SyncService:
    """Syncs every ``interval_s``, backing off after failures; :meth:`sync_now` syncs on demand."""

    def __init__(
        self,
        store: Store,
        client: FlipturnClient,
        *,
        interval_s: float,
        metrics: SyncMetrics | None = None,
        backoff_base_s: float = 10.0,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        after_sync: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._store = store
        self._client = client
        self._after_sync = after_sync  # e.g. the local list push; its failures are only logged
        self._interval_s = interval_s
        self._metrics = metrics
        self._backoff_base_s = backoff_base_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._lock = asyncio.Lock()  # one sync at a time (periodic, POST /api/sync)

    async def sync_now(self) -> SyncResult:
        """Run one sync now (after any sync already running); raises SyncError."""
        async with self._lock:
            result = await sync_once(self._store, self._client, metrics=self._metrics)
        if self._after_sync is not None:
            try:
                await self._after_sync()
            except Exception:
                log.exception("after-sync hook failed")
        return result

    async def status(self) -> dict[str, Any]:
        """``{"lastSuccessAt", "lastError", "accessIds"}`` for ``GET /health``."""
        return await sync_status(self._store)

    async def _first_delay(self) -> float:
        # After a restart, wait out the rest of the interval since the last success, if any.
        row = await self._store.sync_status()
        last = row.last_success_at if row is not None else None
        if not last:
            return 0.0
        try:
            when = datetime.fromisoformat(last)
        except ValueError:
            return 0.0
        if self._metrics is not None and row is not None:  # the gauges show the persisted state
            self._metrics.last_success.set(when.timestamp())
            self._metrics.access_ids.set(row.access_ids)
            self._metrics.vehicles.set(row.vehicles)
        age = (datetime.now(UTC) - when).total_seconds()
        return min(self._interval_s, max(0.0, self._interval_s - age))

    async def run(self) -> None:
        """Sync periodically until cancelled."""
        failures = 0
        delay = await self._first_delay()
        while True:
            await self._sleep(delay)
            error: SyncError | None = None
            try:
                await self.sync_now()
                failures = 0
            except SyncAuthError as exc:
                error = exc
                log.error("sync failed: %s; next attempt in %.0f s", exc, self._interval_s)
            except SyncError as exc:
                error = exc
                failures += 0 if isinstance(exc, SyncRateLimited) else 1
            except Exception as exc:  # a bug must not end periodic syncing; retry like a 5xx
                log.exception("sync crashed")
                error = SyncError(f"internal error ({type(exc).__name__})")
                failures += 1
            delay = next_sync_delay(
                error,
                failures,
                interval_s=self._interval_s,
                backoff_base_s=self._backoff_base_s,
                rng=self._rng,
            )
            if error is not None and not isinstance(error, SyncAuthError):
                log.warning("sync failed: %s; retrying in %.1f s", error, delay)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()
