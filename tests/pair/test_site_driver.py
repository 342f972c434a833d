"""The site guard's driver between simulated chargers and a real store, on a fake clock.

The chargers are doubles at the end of their sessions: each answers the gateway's CALLs (it
refuses every cap if told to), holds the profile it accepted, and reports its link to the cloud.
The guard's steps run on a fake clock; its store is a real SQLite file in ``tmp_path``;
transactions reach it through the real depot view, as the relay folds them.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from gateway.config import SiteSettings
from gateway.core.depot import DepotView
from gateway.ocpp.frames import CallResult, OcppVersion
from gateway.site.driver import SiteGuard
from gateway.site.sequencer import counted_sum
from gateway.store.engine import Store

_ids = itertools.count(1)


@dataclass
class SimCharger:
    """A 1.6 charger and its link, as the guard sees them."""

    charger_id: str
    refuses: bool = False
    connected: bool = True
    upstream_connected: bool = False
    version: OcppVersion = "1.6"
    cap_a: int | None = None  # the gateway's cap it holds
    received: list[str] = field(default_factory=list)

    async def call_charger(
        self, action: str, payload: dict[str, Any], *, payload_text: str | None = None
    ) -> CallResult:
        self.received.append(action)
        await asyncio.sleep(0)  # answered on the next loop turn, like a socket
        mid = f"gw-{next(_ids)}"
        if action == "GetConfiguration":
            return CallResult(mid, {"configurationKey": []})
        if action == "ClearChargingProfile":
            self.cap_a = None
            return CallResult(mid, {"status": "Accepted"})
        if self.refuses:
            return CallResult(mid, {"status": "Rejected"})
        periods = payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"]
        self.cap_a = int(periods[0]["limit"])
        return CallResult(mid, {"status": "Accepted"})


async def settle() -> None:
    for _ in range(20):  # the programs' CALLs and answers, a few loop turns each
        await asyncio.sleep(0)


def start(depot: DepotView, charger: SimCharger, tx: int) -> None:
    request = {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2026-12-08T00:00:00Z"}
    depot.answered(
        charger.charger_id,
        "1.6",
        "StartTransaction",
        request,
        {"transactionId": tx, "idTagInfo": {"status": "Accepted"}},
        by_cloud=False,
    )


async def test_engaged_offline_the_caps_stay_under_the_limit_survive_a_restart_and_clear(
    tmp_path: Any,
) -> None:
    site = SiteSettings(max_current_a=100, mode="offline", engage_after_s=10, release_after_s=60)
    store = await Store.open(str(tmp_path / "gateway.db"))
    now = 0.0
    depot = DepotView()
    chargers = {f"CP{n:02d}": SimCharger(f"CP{n:02d}", refuses=n == 0) for n in range(12)}
    guard = SiteGuard(site, store, depot, clock=lambda: now, wall_clock=lambda: 1.8e9 + now)
    try:
        await guard.load()
        guard.start(chargers)
        for charger in chargers.values():
            guard.charger_attached(charger)
        await settle()
        assert all(c.cap_a is None for c in chargers.values())  # released: nothing sent

        engaged_at = None
        for second in range(1, 120):
            now = float(second)
            if second == 20:
                for n, charger in enumerate(list(chargers.values())[:8]):
                    start(depot, charger, 100 + n)
            guard.step(now)
            await settle()
            if guard.engaged:
                engaged_at = engaged_at or second
                # What the chargers hold (the refuser, and any charger without a cap, at its
                # maximum) and what the guard counts never exceed the limit.
                held = sum(
                    c.cap_a if c.cap_a is not None else site.charger_max_current_a
                    for c in chargers.values()
                )
                assert held <= 100, second
                assert counted_sum(guard.slots) <= 100, second
        assert engaged_at == 10  # engage_after_s after the links were seen down
        refuser = guard.describe()["chargers"][0]
        assert refuser == {
            "id": "CP00",
            "maxA": 32,
            "capA": None,
            "drawA": None,
            "transactions": 1,
            "managed": False,
        }
        # The refuser counts at 32 A; the 68 A left: 6 A for each of 4 idle chargers and each of
        # the 7 managed transactions, and the 2 A left to the earliest two transactions.
        caps = {cid: c.cap_a for cid, c in chargers.items()}
        assert [caps[f"CP{n:02d}"] for n in range(8, 12)] == [6, 6, 6, 6]
        assert sorted(caps[f"CP{n:02d}"] or 0 for n in range(1, 8)) == [6, 6, 6, 6, 6, 7, 7]
        await guard.close()

        # A restart: the caps come back from the store, and each charger gets its cap first.
        guard = SiteGuard(site, store, depot, clock=lambda: now, wall_clock=lambda: 1.8e9 + now)
        await guard.load()
        assert guard.engaged
        assert {cid: s.accepted_a for cid, s in guard.slots.items()} == caps
        guard.start(chargers)
        for charger in chargers.values():
            charger.received.clear()
            guard.charger_attached(charger)
        await settle()
        # Every charger's first CALL is its cap (the refuser's too: asked again on connect).
        assert {c.received[0] for c in chargers.values()} == {"SetChargingProfile"}

        # The cloud is back for every charger: after release_after_s, every cap is cleared.
        for charger in chargers.values():
            charger.upstream_connected = True
        for _ in range(70):
            now += 1.0
            guard.step(now)
            await settle()
        assert not guard.engaged
        assert all(c.cap_a is None for c in chargers.values())
        assert all("ClearChargingProfile" in c.received for c in chargers.values())
    finally:
        await guard.close()
        await store.close()
