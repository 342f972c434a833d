"""The per-charger series and ``store_up`` (gateway.metrics.FleetCollector), on values: which
chargers have series, when they go, and what each series says."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from gateway.metrics import CHARGER_SERIES_TTL_S, ChargerSample, FleetCollector

T0 = 1_800_000_000.0


class Depot:
    """The chargers the collector is shown, the store's state and the clock, set by each test."""

    def __init__(self, *, links: bool = True) -> None:
        self.samples: list[ChargerSample] = []
        self.store_ok = True
        self.now = T0
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = FleetCollector(
            lambda: self.samples,
            store_ok=lambda: self.store_ok,
            links=links,
            now=lambda: self.now,
        )
        self.registry.register(self.collector)

    def scrape(self) -> dict[str, dict[str, float]]:
        """metric name → charger (or "" for unlabelled) → value."""
        text = generate_latest(self.registry).decode()
        out: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, {})[sample.labels.get("charger", "")] = sample.value
        return out


def sample(
    cid: str, *, connected: bool = True, link: bool = True, pending: int = 0, seen: float = T0
) -> ChargerSample:
    return ChargerSample(cid, connected, link, pending, seen)


def series(scrape: dict[str, dict[str, float]], name: str) -> dict[str, float]:
    return scrape.get(f"flipturn_gateway_{name}", {})


def ids(values: Iterable[str]) -> list[str]:
    return sorted(values)


def test_each_connected_charger_has_its_link_queue_and_last_frame() -> None:
    depot = Depot()
    depot.samples = [
        sample("CP-1", link=True, pending=0, seen=T0 - 5),
        sample("CP-2", link=False, pending=7, seen=T0 - 60),
    ]
    got = depot.scrape()
    assert series(got, "charger_link_up") == {"CP-1": 1.0, "CP-2": 0.0}
    assert series(got, "charger_outbox_pending") == {"CP-1": 0.0, "CP-2": 7.0}
    assert series(got, "charger_last_seen_timestamp_seconds") == {
        "CP-1": T0 - 5,
        "CP-2": T0 - 60,
    }


def test_store_up_follows_the_store() -> None:
    depot = Depot()
    assert series(depot.scrape(), "store_up") == {"": 1.0}
    depot.store_ok = False
    assert series(depot.scrape(), "store_up") == {"": 0.0}
    depot.store_ok = True
    assert series(depot.scrape(), "store_up") == {"": 1.0}


def test_a_disconnected_charger_keeps_its_queue_and_last_frame_for_an_hour_then_goes() -> None:
    depot = Depot()
    depot.samples = [sample("CP-1"), sample("CP-2", seen=T0 - 1)]
    depot.scrape()
    depot.now = T0 + 100  # CP-2 left between the scrapes; its queue still waits
    depot.samples = [sample("CP-1"), sample("CP-2", connected=False, link=False, pending=3)]
    got = depot.scrape()
    assert ids(series(got, "charger_link_up")) == ["CP-1"]  # no link to speak of: not connected
    assert series(got, "charger_outbox_pending") == {"CP-1": 0.0, "CP-2": 3.0}
    assert ids(series(got, "charger_last_seen_timestamp_seconds")) == ["CP-1", "CP-2"]
    # Gone counts from the first scrape that found it gone (T0 + 100), not its last frame.
    depot.now = T0 + 100 + CHARGER_SERIES_TTL_S - 1
    assert "CP-2" in series(depot.scrape(), "charger_outbox_pending")
    depot.now = T0 + 100 + CHARGER_SERIES_TTL_S
    got = depot.scrape()
    for name in ("charger_outbox_pending", "charger_last_seen_timestamp_seconds"):
        assert ids(series(got, name)) == ["CP-1"], name


def test_a_charger_that_comes_back_has_its_series_again_and_its_hour_starts_anew() -> None:
    depot = Depot()
    depot.samples = [sample("CP-1")]
    depot.scrape()
    depot.samples = [sample("CP-1", connected=False)]
    depot.now = T0 + 10
    depot.scrape()
    depot.now = T0 + 1000
    depot.samples = [sample("CP-1")]
    assert series(depot.scrape(), "charger_link_up") == {"CP-1": 1.0}
    depot.now = T0 + 1000 + CHARGER_SERIES_TTL_S - 10
    depot.samples = [sample("CP-1", connected=False)]
    assert ids(series(depot.scrape(), "charger_outbox_pending")) == ["CP-1"]


def test_a_charger_never_seen_connected_counts_from_its_last_frame() -> None:
    """After a restart the depot view still knows the chargers of the last hour: those that have
    not come back keep their series until an hour after their last frame."""
    depot = Depot()
    depot.samples = [
        sample("RECENT", connected=False, seen=T0 - CHARGER_SERIES_TTL_S + 60),
        sample("OLD", connected=False, seen=T0 - CHARGER_SERIES_TTL_S - 1),
        ChargerSample("NEVER-SPOKE", False, False, 0, None),
    ]
    got = depot.scrape()
    assert ids(series(got, "charger_outbox_pending")) == ["RECENT"]
    depot.now = T0 + 60
    assert series(depot.scrape(), "charger_outbox_pending") == {}


def test_a_connected_charger_without_a_frame_yet_has_no_last_seen() -> None:
    depot = Depot()
    depot.samples = [ChargerSample("CP-1", True, False, 0, None)]
    got = depot.scrape()
    assert series(got, "charger_link_up") == {"CP-1": 0.0}
    assert series(got, "charger_last_seen_timestamp_seconds") == {}


def test_standalone_has_no_link_series() -> None:
    depot = Depot(links=False)
    depot.samples = [sample("CP-1", link=False, pending=2)]
    got = depot.scrape()
    assert series(got, "charger_link_up") == {}
    assert series(got, "charger_outbox_pending") == {"CP-1": 2.0}
    assert series(got, "upstream_configured") == {"": 0.0}
    assert series(Depot(links=True).scrape(), "upstream_configured") == {"": 1.0}


def test_a_charger_the_gateway_forgot_is_shown_from_its_last_sample_for_its_hour() -> None:
    """A charger that left with nothing queued and only sent Heartbeats is in neither the
    sessions nor the depot view: the collector still shows it, disconnected, for the hour."""
    depot = Depot()
    depot.samples = [sample("CP-1", seen=T0 - 3)]
    depot.scrape()
    depot.samples = []
    depot.now = T0 + 30
    got = depot.scrape()
    assert series(got, "charger_link_up") == {}
    assert series(got, "charger_outbox_pending") == {"CP-1": 0.0}
    assert series(got, "charger_last_seen_timestamp_seconds") == {"CP-1": T0 - 3}
    depot.now = T0 + 30 + CHARGER_SERIES_TTL_S
    assert series(depot.scrape(), "charger_outbox_pending") == {}


def test_memory_of_departures_is_bounded_by_the_last_hour() -> None:
    depot = Depot()
    depot.samples = [sample(f"CP-{i}") for i in range(50)]
    depot.scrape()
    depot.samples = [sample(f"CP-{i}", connected=False) for i in range(25)]  # 25 forgotten
    depot.now += 1
    assert len(series(depot.scrape(), "charger_outbox_pending")) == 50
    assert depot.collector.departed == 50
    depot.now += CHARGER_SERIES_TTL_S  # still listed or not, past the hour
    assert series(depot.scrape(), "charger_outbox_pending") == {}
    assert depot.collector.departed == 0
