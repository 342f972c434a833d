"""Relay counters and their Prometheus exposition.

The relay path only increments plain integers (no locks, no label lookups per frame); the
collector turns them into metric families when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

__all__ = ["GatewayCollector", "RelayStats", "new_registry"]


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
    # OCPP 2.1 SEND frames (no answer, never stored) by "<direction> <outcome>",
    # e.g. "from_charger relayed", "from_charger dropped" (no link to pass it on).
    sends: Counter[str] = field(default_factory=Counter)


class GatewayCollector(Collector):
    """Reads :class:`RelayStats` and live gauges at scrape time."""

    def __init__(
        self,
        stats: RelayStats,
        *,
        chargers_connected: Callable[[], int],
        upstreams_connected: Callable[[], int],
        outbox: Callable[[], dict[str, tuple[int, float]]],
        now: Callable[[], float],
    ) -> None:
        self._stats = stats
        self._chargers = chargers_connected
        self._upstreams = upstreams_connected
        self._outbox = outbox
        self._now = now

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        yield GaugeMetricFamily(
            "flipturn_chargers_connected",
            "Chargers connected to the gateway",
            value=self._chargers(),
        )
        yield GaugeMetricFamily(
            "flipturn_upstream_connected",
            "Upstream (cloud) links currently open",
            value=self._upstreams(),
        )
        frames = CounterMetricFamily(
            "flipturn_frames", "OCPP-J frames moved, by direction", labels=["direction"]
        )
        frames.add_metric(["from_charger"], s.frames_from_chargers)
        frames.add_metric(["to_charger"], s.frames_to_chargers)
        frames.add_metric(["from_cloud"], s.frames_from_cloud)
        frames.add_metric(["to_cloud"], s.frames_to_cloud)
        yield frames
        local = CounterMetricFamily(
            "flipturn_local_answers",
            "Charger CALLs answered by the gateway itself",
            labels=["action"],
        )
        for action, n in sorted(s.local_answers.items()):
            local.add_metric([action], n)
        yield local
        errors = CounterMetricFamily("flipturn_errors", "Errors by kind", labels=["kind"])
        for kind, n in sorted(s.errors.items()):
            errors.add_metric([kind], n)
        yield errors
        sends = CounterMetricFamily(
            "flipturn_gateway_send_frames",
            "OCPP 2.1 SEND frames (never answered, never stored), relayed or dropped",
            labels=["direction", "outcome"],
        )
        for key, n in sorted(s.sends.items()):
            sends.add_metric(key.split(" ", 1), n)
        yield sends
        yield CounterMetricFamily(
            "flipturn_replayed_messages", "Queued messages delivered to the cloud", value=s.replayed
        )
        yield CounterMetricFamily(
            "flipturn_dead_letters",
            "Queued messages the cloud refused for good",
            value=s.dead_lettered,
        )
        yield CounterMetricFamily(
            "flipturn_upstream_connects", "Upstream connections opened", value=s.upstream_connects
        )
        yield CounterMetricFamily(
            "flipturn_upstream_failures",
            "Upstream connection attempts that failed",
            value=s.upstream_failures,
        )
        pending = GaugeMetricFamily(
            "flipturn_outbox_pending", "Messages waiting for the cloud", labels=["charger"]
        )
        age = GaugeMetricFamily(
            "flipturn_outbox_oldest_age_seconds",
            "Age of the oldest waiting message",
            labels=["charger"],
        )
        now = self._now()
        for charger, (count, oldest) in sorted(self._outbox().items()):
            pending.add_metric([charger], count)
            age.add_metric([charger], max(0.0, now - oldest))
        yield pending
        yield age


def new_registry() -> CollectorRegistry:
    """A registry of the gateway's own (no process-global default registry)."""
    return CollectorRegistry(auto_describe=True)
