"""Per-charger series on a running gateway's ``/metrics``: chargers over loopback, a fake cloud
that goes away, the real store."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import Gateway
from tests.support import FakeCloud, charger, make_settings, running_gateway, wait_for


async def scrape(gw: Gateway) -> dict[str, dict[str, float]]:
    """metric name → charger (or "" for unlabelled) → value, from GET /metrics."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api:
        text = (await api.get("/metrics")).text
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[sample.labels.get("charger", "")] = sample.value
    return out


def status(connector: int) -> dict[str, object]:
    return {"connectorId": connector, "errorCode": "NoError", "status": "Available"}


async def test_link_queue_and_last_frame_per_charger(tmp_path: Path, cloud: FakeCloud) -> None:
    settings = make_settings(tmp_path, upstream={"url": cloud.url, "call_timeout_s": 0.5})
    started = time.time()
    async with running_gateway(settings) as gw:
        async with charger(gw.charger_port, "CP-1") as cp1, charger(gw.charger_port, "CP-2"):
            await cloud.wait_connected("CP-1")
            await cloud.wait_connected("CP-2")
            await cp1.call("Heartbeat", {})
            got = await scrape(gw)
            assert got["flipturn_gateway_store_up"] == {"": 1.0}
            assert got["flipturn_gateway_upstream_configured"] == {"": 1.0}
            assert got["flipturn_gateway_charger_link_up"] == {"CP-1": 1.0, "CP-2": 1.0}
            assert got["flipturn_gateway_charger_outbox_pending"] == {"CP-1": 0.0, "CP-2": 0.0}
            seen = got["flipturn_gateway_charger_last_seen_timestamp_seconds"]
            assert list(seen) == ["CP-1"] and started <= seen["CP-1"] <= time.time()

            await cloud.stop()
            await wait_for(lambda: gw.hub is not None and gw.hub.upstreams_connected() == 0)
            await cp1.call("StatusNotification", status(1))  # answered locally, queued
            await cp1.call("StatusNotification", status(2))
            got = await scrape(gw)
            assert got["flipturn_gateway_charger_link_up"] == {"CP-1": 0.0, "CP-2": 0.0}
            assert got["flipturn_gateway_charger_outbox_pending"] == {"CP-1": 2.0, "CP-2": 0.0}
        # Both left: no link series; CP-1's queue still waits and shows, CP-2 idle shows 0.
        await wait_for(lambda: gw.hub is not None and gw.hub.chargers_connected() == 0)
        got = await scrape(gw)
        assert got.get("flipturn_gateway_charger_link_up", {}) == {}
        assert got["flipturn_gateway_charger_outbox_pending"] == {"CP-1": 2.0, "CP-2": 0.0}
        assert list(got["flipturn_gateway_charger_last_seen_timestamp_seconds"]) == ["CP-1"]
