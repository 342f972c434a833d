"""Relay counters and their Prometheus exposition.

The relay path only increments plain integers (no locks, no label lookups per frame); the
collector turns them into metric families when ``/metrics`` is scraped. Every name starts with
``flipturn_gateway_``; the process metrics (``process_*``) come from prometheus_client's
process collector.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from gateway import __version__

__all__ = [
    "CHARGER_SERIES_TTL_S",
    "PREFIX",
    "ChargerSample",
    "FleetCollector",
    "GatewayCollector",
    "Histogram",
    "RelayStats",
    "SiteCollector",
    "SiteFigures",
    "new_registry",
]

PREFIX = "flipturn_gateway_"
# Cloud answer times: a LAN cloud answers in milliseconds, a far one in 100s of ms, a slow one
# approaches upstream.call_timeout_s (10 s by default).
CALL_DURATION_BOUNDS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Histogram:
    """Bucket counts without a lock: ``observe`` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        """(le, count) pairs as Prometheus wants them, +Inf last."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


@dataclass
class RelayStats:
    """Counters shared by every charger session of one gateway."""

    frames_from_chargers: int = 0
    frames_to_chargers: int = 0
    frames_from_cloud: int = 0
    frames_to_cloud: int = 0
    local_answers: Counter[str] = field(default_factory=Counter)  # by action
    errors: Counter[str] = field(default_factory=Counter)  # by kind
    replayed: int = 0
    dead_lettered: int = 0
    upstream_connects: int = 0
    upstream_failures: int = 0
    # Cloud answer time of CALLs relayed live (charger → cloud → charger).
    upstream_call_s: Histogram = field(default_factory=lambda: Histogram(CALL_DURATION_BOUNDS_S))
    # OCPP 2.1 SEND frames (no answer, never stored) by "<direction> <outcome>",
    # e.g. "from_charger relayed", "from_charger dropped" (no link to pass it on).
    sends: Counter[str] = field(default_factory=Counter)
    # Failed authentications by kind: "charger" (Basic auth), "api" (api.token on /api/*),
    # "login" (the dashboard's sign-in), attempts refused while the address is throttled included.
    auth_failures: Counter[str] = field(default_factory=Counter)


class GatewayCollector(Collector):
    """Reads :class:`RelayStats` and live gauges at scrape time."""

    def __init__(
        self,
        stats: RelayStats,
        *,
        chargers_connected: Callable[[], int],
        upstreams_connected: Callable[[], int],
        outbox: Callable[[], dict[str, tuple[int, float]]],
        dead_letters: Callable[[], int],
        now: Callable[[], float],
    ) -> None:
        self._stats = stats
        self._chargers = chargers_connected
        self._upstreams = upstreams_connected
        self._outbox = outbox
        self._dead = dead_letters
        self._now = now

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        info = GaugeMetricFamily(
            PREFIX + "build_info", "The gateway's version (always 1)", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(
            PREFIX + "chargers_connected",
            "Chargers connected to the gateway",
            value=self._chargers(),
        )
        yield GaugeMetricFamily(
            PREFIX + "upstream_connected",
            "Upstream (cloud) links currently open",
            value=self._upstreams(),
        )
        frames = CounterMetricFamily(
            PREFIX + "frames", "OCPP-J frames moved, by direction", labels=["direction"]
        )
        frames.add_metric(["from_charger"], s.frames_from_chargers)
        frames.add_metric(["to_charger"], s.frames_to_chargers)
        frames.add_metric(["from_cloud"], s.frames_from_cloud)
        frames.add_metric(["to_cloud"], s.frames_to_cloud)
        yield frames
        local = CounterMetricFamily(
            PREFIX + "local_answers",
            "Charger CALLs answered by the gateway itself",
            labels=["action"],
        )
        for action, n in sorted(s.local_answers.items()):
            local.add_metric([action], n)
        yield local
        errors = CounterMetricFamily(PREFIX + "errors", "Errors by kind", labels=["kind"])
        for kind, n in sorted(s.errors.items()):
            errors.add_metric([kind], n)
        yield errors
        sends = CounterMetricFamily(
            PREFIX + "send_frames",
            "OCPP 2.1 SEND frames (never answered, never stored), relayed or dropped",
            labels=["direction", "outcome"],
        )
        for key, n in sorted(s.sends.items()):
            sends.add_metric(key.split(" ", 1), n)
        yield sends
        auth = CounterMetricFamily(
            PREFIX + "auth_failures",
            "Failed authentications (wrong credentials, or refused while the source address is"
            " throttled), by kind",
            labels=["kind"],
        )
        for kind in sorted({"charger", "api", "login", *s.auth_failures}):
            auth.add_metric([kind], s.auth_failures[kind])
        yield auth
        yield CounterMetricFamily(
            PREFIX + "replayed_messages", "Queued messages delivered to the cloud", value=s.replayed
        )
        yield CounterMetricFamily(
            PREFIX + "dead_lettered",
            "Queued messages moved to the dead letters (the cloud refused them for good)",
            value=s.dead_lettered,
        )
        connects = CounterMetricFamily(
            PREFIX + "upstream_connects",
            "Upstream connection attempts by result",
            labels=["result"],
        )
        connects.add_metric(["ok"], s.upstream_connects)
        connects.add_metric(["failed"], s.upstream_failures)
        yield connects
        hist = s.upstream_call_s
        duration = HistogramMetricFamily(
            PREFIX + "upstream_call_duration_seconds",
            "Time the cloud took to answer a relayed charger CALL",
        )
        duration.add_metric([], hist.cumulative(), sum_value=hist.sum)
        yield duration
        backlog = self._outbox()
        now = self._now()
        oldest = min((t for _, t in backlog.values()), default=None)
        yield GaugeMetricFamily(
            PREFIX + "outbox_pending",
            "Messages waiting for the cloud, all chargers",
            value=sum(n for n, _ in backlog.values()),
        )
        yield GaugeMetricFamily(
            PREFIX + "outbox_oldest_age_seconds",
            "Age of the oldest message waiting for the cloud (0 when none waits)",
            value=0.0 if oldest is None else max(0.0, now - oldest),
        )
        yield GaugeMetricFamily(
            PREFIX + "outbox_dead",
            "Dead letters waiting for an operator (GET /api/outbox/dead)",
            value=self._dead(),
        )


# A charger's series go once it has been disconnected this long: the label set follows the chargers
# a depot has, not every id ever seen (bounded cardinality at the central Prometheus).
CHARGER_SERIES_TTL_S = 3600.0


@dataclass(frozen=True, slots=True)
class ChargerSample:
    """What the gateway already knows of one charger, read at scrape time."""

    charger_id: str
    connected: bool  # its WebSocket to the gateway is open
    link_up: bool  # its cloud link relays (online or replaying)
    outbox_pending: int
    last_seen_at: float | None  # unix time of its last frame; None if none was seen


class FleetCollector(Collector):
    """Per-charger series, ``store_up`` and ``upstream_configured``, built from state the gateway
    keeps anyway.

    Nothing is updated per frame: at each scrape ``chargers()`` lists the sessions and the depot
    view, and this collector decides which chargers still have series. A connected charger always
    has them; a disconnected one keeps them for ``ttl_s`` after it left, measured from the first
    scrape that found it gone (or from its last frame, for one this collector never saw connected,
    e.g. after a restart). What it remembers is bounded by the chargers shown: those connected or
    gone for less than ``ttl_s``. ``link_up`` exists only while the charger is connected and only when a
    cloud is configured: a standalone gateway has no link to be down.
    """

    def __init__(
        self,
        chargers: Callable[[], Iterable[ChargerSample]],
        *,
        store_ok: Callable[[], bool],
        links: bool,
        now: Callable[[], float],
        ttl_s: float = CHARGER_SERIES_TTL_S,
    ) -> None:
        self._chargers = chargers
        self._store_ok = store_ok
        self._links = links
        self._now = now
        self._ttl_s = ttl_s
        self._shown: dict[str, ChargerSample] = {}  # at the previous scrape
        self._gone_since: dict[str, float] = {}  # disconnected, since (only those shown)

    @property
    def departed(self) -> int:
        """Disconnected chargers whose departure is remembered (those left within ``ttl_s``)."""
        return len(self._gone_since)

    def visible(self, samples: Iterable[ChargerSample], now: float) -> list[ChargerSample]:
        """The chargers that have series now, by id; remembers who left and when.

        A charger seen connected that the gateway then forgets altogether (it left with nothing
        queued and never sent a message the depot view keeps) is shown from its last sample,
        disconnected, until its hour is over.
        """
        listed = {s.charger_id: s for s in samples}
        for cid, last in self._shown.items():
            if cid not in listed and (last.connected or cid in self._gone_since):
                listed[cid] = ChargerSample(cid, False, False, 0, last.last_seen_at)
        shown: dict[str, ChargerSample] = {}
        gone: dict[str, float] = {}
        for cid, sample in listed.items():
            if sample.connected:
                shown[cid] = sample
                continue
            since = self._gone_since.get(cid)
            if since is None:
                before = self._shown.get(cid)
                since = now if before is not None and before.connected else sample.last_seen_at
            if since is not None and now - since < self._ttl_s:
                gone[cid] = since
                shown[cid] = sample
        self._shown, self._gone_since = shown, gone
        return [shown[cid] for cid in sorted(shown)]

    def describe(self) -> Iterator[Metric]:
        """The families without samples (the registry's check of names, with no scrape)."""
        yield GaugeMetricFamily(PREFIX + "store_up", "")
        yield GaugeMetricFamily(PREFIX + "upstream_configured", "")
        for name in ("link_up", "outbox_pending", "last_seen_timestamp_seconds"):
            yield GaugeMetricFamily(PREFIX + "charger_" + name, "", labels=["charger"])

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            PREFIX + "store_up",
            "1 while the store commits (GET /health store.ok), else 0",
            value=1 if self._store_ok() else 0,
        )
        # The alerts about the cloud (a queue that does not drain) do not apply to a standalone
        # gateway, whose queue nothing drains by design.
        yield GaugeMetricFamily(
            PREFIX + "upstream_configured",
            "1 when a cloud is configured (upstream.url), 0 for a standalone gateway",
            value=1 if self._links else 0,
        )
        shown = self.visible(self._chargers(), self._now())
        link = GaugeMetricFamily(
            PREFIX + "charger_link_up",
            "1 while a connected charger's cloud link is up, 0 while it is connected without one",
            labels=["charger"],
        )
        pending = GaugeMetricFamily(
            PREFIX + "charger_outbox_pending",
            "Messages of this charger waiting for the cloud",
            labels=["charger"],
        )
        seen = GaugeMetricFamily(
            PREFIX + "charger_last_seen_timestamp_seconds",
            "Unix time of the charger's last frame",
            labels=["charger"],
        )
        for s in shown:
            if self._links and s.connected:
                link.add_metric([s.charger_id], 1 if s.link_up else 0)
            pending.add_metric([s.charger_id], s.outbox_pending)
            if s.last_seen_at is not None:
                seen.add_metric([s.charger_id], s.last_seen_at)
        yield link
        yield pending
        yield seen


# The results a site guard's SetChargingProfile/ClearChargingProfile can end in (design.md).
SITE_PROFILE_RESULTS: tuple[str, ...] = ("accepted", "rejected", "timeout", "invalid")


@dataclass
class SiteFigures:
    """The site power guard's figures at one scrape (docs/site-power.md)."""

    limit_a: float
    allocated_a: float
    measured_a: float
    engaged: bool
    profile_changes: Counter[str]  # by result


class SiteCollector(Collector):
    """The site power guard's gauges and profile-change counter, read at scrape time."""

    def __init__(self, figures: Callable[[], SiteFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self._figures()
        yield GaugeMetricFamily(
            PREFIX + "site_limit_amperes", "The depot's limit for EV charging", value=f.limit_a
        )
        yield GaugeMetricFamily(
            PREFIX + "site_allocated_amperes",
            "What the chargers count at under the limit while the guard is engaged",
            value=f.allocated_a,
        )
        yield GaugeMetricFamily(
            PREFIX + "site_measured_amperes",
            "The transactions' draw from their latest MeterValues",
            value=f.measured_a,
        )
        yield GaugeMetricFamily(
            PREFIX + "site_engaged", "1 while the site guard caps the chargers", value=f.engaged
        )
        changes = CounterMetricFamily(
            PREFIX + "site_profile_changes",
            "The site guard's SetChargingProfile/ClearChargingProfile CALLs, by their end",
            labels=["result"],
        )
        for result in SITE_PROFILE_RESULTS:
            changes.add_metric([result], f.profile_changes[result])
        yield changes


def new_registry() -> CollectorRegistry:
    """A registry of the gateway's own (no process-global default registry), with the
    process metrics (resident memory, CPU seconds, open file descriptors) of this process."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return registry
