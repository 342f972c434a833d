"""Cloud links at the pair tier: recovery after an outage (the probe, the wake-up of waiting links),
pacing of new handshakes, a storm of chargers attaching at once, and what the cloud's closes and
the charger's reconnects do to the other side."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.core.backoff import BackoffPolicy
from gateway.core.link import LinkState
from gateway.net.link import CONNECTING_HOLD_S
from tests.pair.harness import Close, Pair, Store, make_settings, open_pair, running
from tests.pair.test_store_forward import BOOT, outage, status

FAST_TO_CAP = BackoffPolicy(initial_s=0.05, factor=1200.0)  # the 60 s cap after one step


def all_drained_and_online(pair: Pair, ids: list[str]) -> bool:
    sessions = pair.hub.sessions
    return all(
        cid in sessions and sessions[cid].backlog == 0 and sessions[cid].state is LinkState.ONLINE
        for cid in ids
    )


async def test_after_a_long_outage_every_link_is_back_within_the_bound(tmp_path: Path) -> None:
    """Every link at the default 60 s cap; the cloud returns; one probe (every 3 s) connects,
    which wakes every waiting link: all back and replayed within 5 s + chargers / rate."""
    ids = [f"CP-{i:02d}" for i in range(20)]
    async with running(tmp_path, backoff=FAST_TO_CAP) as pair:
        assert pair.settings.upstream.reconnect_max_s == 60.0
        pair.cloud.up = False
        chargers = [await pair.connect(cid) for cid in ids]
        sent = [cp.send("StatusNotification", status()) for cp in chargers]
        await pair.advance(CONNECTING_HOLD_S)  # a CALL waits that long for a link connecting
        for cp, mid in zip(chargers, sent, strict=True):
            assert cp.answers[mid][0] == 3  # answered locally, queued
        await pair.advance(120)
        assert all(pair.session(cid).backoff_capped for cid in ids)
        tries = pair.cloud.refused_opens
        assert tries < 20 * 30  # backoff, not a retry loop
        pair.cloud.up = True
        back = pair.now
        while not all_drained_and_online(pair, ids):
            await pair.advance(0.1)
            assert pair.now - back <= 5.0 + len(ids) / 50.0
        assert all(len(pair.cloud.calls(cid, "StatusNotification")) == 1 for cid in ids)


async def test_one_charger_at_the_cap_is_found_by_the_probe(tmp_path: Path) -> None:
    async with running(tmp_path, backoff=FAST_TO_CAP) as pair:
        pair.cloud.up = False
        cp = await pair.connect("SOLO")
        await pair.call(cp, "StatusNotification", status())
        await pair.advance(120)
        assert pair.session("SOLO").backoff_capped
        pair.cloud.up = True
        back = pair.now
        while not all_drained_and_online(pair, ["SOLO"]):
            await pair.advance(0.1)
        assert pair.now - back <= 3.5  # not the 30-60 s of its backoff
        assert pair.cloud.actions("SOLO") == ["StatusNotification"]


async def test_a_link_that_stays_down_logs_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway")
    settings = make_settings(tmp_path, upstream={"reconnect_max_s": 0.05})
    async with running(tmp_path, settings) as pair:
        pair.cloud.up = False
        cp = await pair.connect("LOUD")
        await pair.call(cp, "StatusNotification", status())
        await pair.advance(3)
        assert pair.hub.stats.upstream_failures >= 20
    lines = [r for r in caplog.records if "LOUD" in r.getMessage() and "cloud" in r.getMessage()]
    warnings = [r for r in lines if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cloud link down" in warnings[0].getMessage()
    assert len(lines) <= 2


async def test_new_links_are_paced(tmp_path: Path) -> None:
    ids = [f"P-{i:02d}" for i in range(30)]
    settings = make_settings(tmp_path, upstream={"max_connects_per_s": 10.0})
    async with running(tmp_path, settings) as pair:
        for cid in ids:
            await pair.connect(cid, settle=False)
        await pair.advance(5)
        assert len(pair.cloud.opened_at) == len(ids)
        times = sorted(pair.cloud.opened_at)
        for i in range(len(times)):  # no second holds more than rate + 1 new links
            assert sum(1 for t in times[i:] if t - times[i] < 1.0) <= 11
        assert times[-1] - times[0] >= (len(ids) - 11) / 10.0


class CountingStore(Store):
    """The real store, counting the reads of charger state a new charger costs."""

    state_reads: list[int] = []

    async def charger_states(self, charger_ids: Sequence[str], *, recent: int = 0) -> Any:
        self.state_reads.append(len(charger_ids))
        return await super().charger_states(charger_ids, recent=recent)


async def test_a_storm_of_chargers_behind_a_slow_handshake(tmp_path: Path) -> None:
    """200 chargers attach and boot at once; the cloud takes 0.3 s per handshake."""
    CountingStore.state_reads = []
    pair = await open_pair(tmp_path, store_type=CountingStore)
    try:
        pair.cloud.handshake_delay_s = 0.3
        # No rate cap by default: at most K (50 at first) handshakes in flight (gateway.core.pacer).
        assert pair.settings.upstream.max_connects_per_s == 0.0
        ids = [f"STORM-{i:03d}" for i in range(200)]
        for cid in ids:
            cp = await pair.connect(cid, settle=False)
            cp.send("BootNotification", BOOT, "boot-1")
        await pair.advance(CONNECTING_HOLD_S + 0.05)
        # Every Boot answered within the hold bound: live, or locally when the turn is far.
        for cid in ids:
            answer = pair.chargers[cid].answers["boot-1"]
            assert answer[2]["status"] == "Accepted", cid
        # The arrivals shared batched reads of their state, not one read each.
        assert sum(CountingStore.state_reads) == len(ids)
        assert len(CountingStore.state_reads) < len(ids) / 4
        await pair.advance(6)  # 200 links, 0.3 s each, at most K at once: well within 6 s
        assert len(pair.cloud.opened) == len(ids)
        for cid in ids:  # the cloud gets every Boot exactly once, live or replayed
            boots = pair.cloud.calls(cid, "BootNotification")
            assert [b[1] for b in boots] == ["boot-1"] and boots[0][3] == BOOT, cid
        assert all(pair.session(cid).upstream_connected for cid in ids)
        assert not any(pair.session(cid).boot_undelivered for cid in ids)
        assert pair.hub.pacer.in_flight == 0  # every handshake's end was reported
    finally:
        await pair.close()


async def test_a_boot_answered_locally_is_delivered_once_when_the_link_comes_up(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as pair:
        pair.cloud.handshake_delay_s = CONNECTING_HOLD_S + 1.0
        cp = await pair.connect("SLOW")
        cp.send("BootNotification", BOOT, "b1")
        await pair.advance(CONNECTING_HOLD_S + 0.05)
        assert cp.answers["b1"][2]["status"] == "Accepted"  # not after the 2.5 s handshake
        assert pair.cloud.calls("SLOW") == []
        await pair.advance(1.5)
        assert [b[1] for b in pair.cloud.calls("SLOW", "BootNotification")] == ["b1"]
        assert pair.session("SLOW").state is LinkState.ONLINE
        await pair.call(cp, "BootNotification", BOOT, "b2")
        assert [b[1] for b in pair.cloud.calls("SLOW", "BootNotification")] == ["b1", "b2"]
        assert await pair.store.undelivered_boot("SLOW") is None


async def test_the_cloud_closing_on_purpose_closes_the_charger_likewise(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        await pair.call(cp, "Heartbeat", {})
        pair.cloud.close("CP", 1008, "unknown charger")
        await pair.settle()
        assert cp.closes == [Close(1008, "unknown charger")]


async def test_an_outage_close_keeps_the_charger_connected_and_answered(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        pair.cloud.up = False
        pair.cloud.close("CP", 1012, "service restart")
        await pair.settle()
        assert cp.closes == [] and pair.session("CP").connected
        assert (await pair.call(cp, "StatusNotification", status()))[0] == 3
        assert len(await pair.outbox("CP")) == 1


async def test_a_charger_reconnecting_replaces_its_old_socket_and_keeps_the_link(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        await pair.call(cp, "Heartbeat", {})
        old = cp.link
        await pair.connect("CP")
        assert old is not None and not old.is_open
        assert cp.closes == [Close(1000, "replaced by a new connection")]
        assert len(pair.cloud.opened) == 1 and pair.cloud.links["CP"].is_open
        assert (await pair.call(cp, "Heartbeat", {}))[0] == 3
        assert pair.cloud.actions("CP") == ["Heartbeat", "Heartbeat"]  # none answered locally


@pytest.mark.parametrize("standalone", [False, True])
async def test_the_sessions_of_departed_chargers_are_forgotten(
    tmp_path: Path, standalone: bool
) -> None:
    settings = make_settings(tmp_path, upstream={"url": ""} if standalone else {})
    async with running(tmp_path, settings) as pair:
        for n in range(5):
            cp = await pair.connect(f"CP-{n}")
            mid = cp.send("Heartbeat", {})
            await pair.advance(0.1)  # the next link's turn at the pacer comes 20 ms later
            assert cp.answers[mid][0] == 3
            assert cp.link is not None
            cp.link.far.close(1000, "bye")
        await pair.settle()
        assert pair.hub.sessions == {}
        assert not any(link.is_open for link in pair.cloud.links.values())
        assert len(pair.cloud.links) == (0 if standalone else 5)
        if not standalone:  # relayed, not answered locally
            assert all(pair.cloud.actions(f"CP-{n}") == ["Heartbeat"] for n in range(5))


async def test_the_charger_s_authorization_header_is_passed_upstream(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        await pair.connect("CP", headers={"Authorization": "Basic Q1A6c2VjcmV0"})
        assert pair.cloud.opened == [("CP", "1.6", {"Authorization": "Basic Q1A6c2VjcmV0"})]


async def test_outage_mid_replay_resumes_in_order_on_the_next_link(tmp_path: Path) -> None:
    answered = {"n": 0}

    def responder(cid: str, action: str, payload: dict[str, Any]) -> Any:
        if action == "StatusNotification":
            answered["n"] += 1
            if answered["n"] == 3:  # the link fails before the third answer
                pair.cloud.up = False
                pair.cloud.drop()
                return None
        return pair.cloud.default(cid, action, payload)

    async with running(tmp_path) as pair:
        pair.cloud.responder = responder
        cp = await pair.connect("CP")
        await outage(pair)
        for n in range(1, 6):
            await pair.call(cp, "StatusNotification", status(n))
        pair.cloud.up = True
        await pair.advance(2)
        assert [r[2]["connectorId"] for r in await pair.outbox("CP")] == [3, 4, 5]
        pair.cloud.up = True
        await pair.advance(5)
        sent = [f[3]["connectorId"] for f in pair.cloud.calls("CP")]
        assert sent == [1, 2, 3, 3, 4, 5]  # the unanswered one again, then the rest in order
        assert await pair.outbox("CP") == []
