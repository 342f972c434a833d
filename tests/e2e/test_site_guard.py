"""The site power guard over real loopback sockets: the gateway in-process, chargers built with the
``ocpp`` package (which checks every CALL it receives against its version's schema and answers a
CALLERROR for one that breaks it), a fake cloud, a real SQLite store in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import httpx
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from gateway.app import Gateway
from gateway.site.profiles import PROFILE_ID
from tests.e2e.test_dashboard import LIVE_S, expect, new_page
from tests.e2e.test_dashboard import browser as browser  # the fixture
from tests.support import FakeCloud, charger, make_settings, wait_for

NOW = "2026-12-08T01:00:00Z"


class Recording:
    """Records every CALL the charger receives, as sent (before the ``ocpp`` package reads it)."""

    received: list[list[Any]]
    set_status: str = "Accepted"

    def record(self, raw: str) -> None:
        frame = json.loads(raw)
        if frame[0] == 2:
            self.received.append(frame)

    def calls(self, action: str | None = None) -> list[list[Any]]:
        return [f for f in self.received if action is None or f[2] == action]

    def caps(self) -> list[int]:
        """The limits of the gateway's SetChargingProfile CALLs, in order."""
        out = []
        for frame in self.calls("SetChargingProfile"):
            body = frame[3]
            profile = body.get("csChargingProfiles") or body.get("chargingProfile")
            schedule = profile["chargingSchedule"]
            schedule = schedule[0] if isinstance(schedule, list) else schedule
            if profile.get("chargingProfileId", profile.get("id")) == PROFILE_ID:
                out.append(schedule["chargingSchedulePeriod"][0]["limit"])
        return out


class Charger16(Recording, ChargePoint16):
    def __init__(self, cid: str, ws: Any, *, set_status: str = "Accepted") -> None:
        super().__init__(cid, ws)
        self.received = []
        self.set_status = set_status

    async def route_message(self, raw_msg: Any) -> None:
        self.record(raw_msg)
        await super().route_message(raw_msg)

    @on(Action16.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None) -> Any:
        values = {
            "ChargingScheduleAllowedChargingRateUnit": "Current",
            "ChargeProfileMaxStackLevel": "8",
        }
        return result16.GetConfiguration(
            configuration_key=[
                {"key": k, "readonly": True, "value": v}
                for k, v in values.items()
                if k in (key or ())
            ],
        )

    @on(Action16.set_charging_profile)
    def on_set_charging_profile(self, connector_id: int, cs_charging_profiles: Any) -> Any:
        return result16.SetChargingProfile(status=self.set_status)

    @on(Action16.clear_charging_profile)
    def on_clear_charging_profile(self, **kwargs: Any) -> Any:
        return result16.ClearChargingProfile(status="Accepted")


class Charger201(Recording, ChargePoint201):
    def __init__(self, cid: str, ws: Any, *, set_status: str = "Accepted") -> None:
        super().__init__(cid, ws)
        self.received = []
        self.set_status = set_status

    async def route_message(self, raw_msg: Any) -> None:
        self.record(raw_msg)
        await super().route_message(raw_msg)

    @on(Action201.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]]) -> Any:
        values = {"RateUnit": "A,W", "ProfileStackLevel": "5"}
        return result201.GetVariables(
            get_variable_result=[
                {
                    "attribute_status": "Accepted",
                    "attribute_value": values[item["variable"]["name"]],
                    "component": item["component"],
                    "variable": item["variable"],
                }
                for item in get_variable_data
            ]
        )

    @on(Action201.set_charging_profile)
    def on_set_charging_profile(self, evse_id: int, charging_profile: Any) -> Any:
        return result201.SetChargingProfile(status=self.set_status)

    @on(Action201.clear_charging_profile)
    def on_clear_charging_profile(self, **kwargs: Any) -> Any:
        return result201.ClearChargingProfile(status="Accepted")


@contextlib.asynccontextmanager
async def simulated(port: int, cid: str, version: str, **kwargs: Any) -> AsyncIterator[Any]:
    ws = await connect(
        f"ws://127.0.0.1:{port}/ocpp/{cid}", subprotocols=[Subprotocol(f"ocpp{version}")]
    )
    cp = (Charger16 if version == "1.6" else Charger201)(cid, ws, **kwargs)
    task = asyncio.create_task(cp.start())
    try:
        yield cp
    finally:
        await ws.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


@contextlib.asynccontextmanager
async def gateway(settings: Any) -> AsyncIterator[Gateway]:
    gw = Gateway(settings, reconnect_max_s=0.3)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def site(tmp_path: Any, upstream: str = "", **site: Any) -> Any:
    values = {"max_current_a": 40, "mode": "always", "min_current_a": 6, **site}
    return make_settings(
        tmp_path,
        site=values,
        chargers={"call_timeout_s": 2.0},
        offline={"unknown_tags": "accept"},
        upstream={"url": upstream},
    )


async def api(gw: Gateway, path: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as client:
        response = await client.get(path)
        assert response.status_code == 200
        return response.json() if path.startswith("/api") else response.text


async def start_16(cp: Charger16) -> int:
    result = await cp.call(
        call16.StartTransaction(connector_id=1, id_tag="TAG1", meter_start=0, timestamp=NOW)
    )
    return int(result.transaction_id)


def charger_row(body: dict[str, Any], cid: str) -> dict[str, Any]:
    return next(c for c in body["chargers"] if c["id"] == cid)


async def test_caps_reach_16_and_201_chargers_and_share_the_limit(tmp_path: Any) -> None:
    settings = site(tmp_path)
    async with (
        gateway(settings) as gw,
        simulated(gw.charger_port, "CP16", "1.6") as cp16,
        simulated(gw.charger_port, "CP201", "2.0.1") as cp201,
    ):
        # Each charger is read first (its unit and stack level), then capped; the ocpp package
        # answered Accepted, so each payload met its version's schema.
        await wait_for(lambda: bool(cp16.caps()) and bool(cp201.caps()))
        assert cp16.received[0][2] == "GetConfiguration"
        assert cp201.received[0][2] == "GetVariables"
        profile16 = cp16.calls("SetChargingProfile")[0][3]
        assert profile16["connectorId"] == 0
        assert profile16["csChargingProfiles"]["stackLevel"] == 8  # the charger's highest
        assert profile16["csChargingProfiles"]["chargingProfilePurpose"] == "ChargePointMaxProfile"
        profile201 = cp201.calls("SetChargingProfile")[0][3]
        assert profile201["evseId"] == 0
        assert profile201["chargingProfile"]["stackLevel"] == 5
        assert profile201["chargingProfile"]["chargingProfilePurpose"] == (
            "ChargingStationMaxProfile"
        )
        # Idle: each holds the minimum.
        await wait_for(lambda: cp16.caps()[-1] == 6 and cp201.caps()[-1] == 6)

        # A transaction on the 1.6 charger: it gets what the idle 2.0.1 charger leaves, up to
        # its own maximum (40 - 6 = 34, held to 32).
        await start_16(cp16)
        await wait_for(lambda: cp16.caps()[-1] == 32)
        assert cp201.caps()[-1] + cp16.caps()[-1] <= 40
        await cp16.call(
            call16.MeterValues(
                connector_id=1,
                transaction_id=None,
                meter_value=[
                    {
                        "timestamp": NOW,
                        "sampled_value": [
                            {
                                "value": "12.5",
                                "measurand": "Current.Import",
                                "phase": "L1",
                                "unit": "A",
                            }
                        ],
                    }
                ],
            )
        )
        await wait_for(lambda: gw.site_guard is not None and gw.site_guard.measured_a() == 12.5)
        body = await api(gw, "/api/site")
        assert body == {
            "maxCurrentA": 40,
            "mode": "always",
            "engaged": True,
            "allocatedA": 38,
            "measuredA": 12.5,
            "chargers": [
                {
                    "id": "CP16",
                    "maxA": 32,
                    "capA": 32,
                    "drawA": 12.5,
                    "transactions": 1,
                    "managed": True,
                },
                {
                    "id": "CP201",
                    "maxA": 32,
                    "capA": 6,
                    "drawA": None,
                    "transactions": 0,
                    "managed": True,
                },
            ],
        }
        metrics = await api(gw, "/metrics")
        assert "flipturn_gateway_site_limit_amperes 40.0" in metrics
        assert "flipturn_gateway_site_engaged 1.0" in metrics
        assert "flipturn_gateway_site_allocated_amperes 38.0" in metrics
        assert "flipturn_gateway_site_measured_amperes 12.5" in metrics
        accepted = len(cp16.caps()) + len(cp201.caps())
        assert f'flipturn_gateway_site_profile_changes_total{{result="accepted"}} {accepted}.0' in (
            metrics
        )
        assert 'flipturn_gateway_site_profile_changes_total{result="rejected"} 0.0' in metrics


async def test_a_refusing_charger_counts_at_its_maximum_and_is_not_managed(tmp_path: Any) -> None:
    async with (
        gateway(site(tmp_path)) as gw,
        simulated(gw.charger_port, "REFUSER", "1.6", set_status="Rejected") as refuser,
        simulated(gw.charger_port, "OK", "1.6") as ok,
    ):
        await wait_for(lambda: bool(refuser.caps()) and bool(ok.caps()))
        await start_16(ok)
        # The refuser counts at its 32 A: 8 A are left for the transaction.
        await wait_for(lambda: ok.caps()[-1] == 8)
        await asyncio.sleep(0.3)  # rounds meanwhile give it no more
        assert ok.caps()[-1] == 8
        body = await api(gw, "/api/site")
        assert charger_row(body, "REFUSER") == {
            "id": "REFUSER",
            "maxA": 32,
            "capA": None,
            "drawA": None,
            "transactions": 0,
            "managed": False,
        }
        assert charger_row(body, "OK")["managed"] is True
        assert body["allocatedA"] == 40
        metrics = await api(gw, "/metrics")
        assert 'flipturn_gateway_site_profile_changes_total{result="rejected"} 1.0' in metrics


async def test_an_answer_breaking_the_schema_and_a_silent_charger_are_unmanaged(
    tmp_path: Any,
) -> None:
    settings = make_settings(
        tmp_path,
        site={"max_current_a": 40, "mode": "always"},
        chargers={"call_timeout_s": 0.5},
    )
    async with gateway(settings) as gw, charger(gw.charger_port, "RAW") as raw:
        read = await asyncio.wait_for(raw.calls.get(), 5)
        assert read[2] == "GetConfiguration"
        await raw.answer(read, {})
        cap = await asyncio.wait_for(raw.calls.get(), 5)
        assert cap[2] == "SetChargingProfile"
        await raw.answer(cap, {"status": "Maybe"})  # not in the schema's enum
        await wait_for(lambda: gw.site_guard is not None and gw.site_guard.changes["invalid"] == 1)
        body = await api(gw, "/api/site")
        assert charger_row(body, "RAW")["managed"] is False
        await raw.close()
    # Reconnected, it is asked again at once; silent this time, it times out.
    async with gateway(settings) as gw, charger(gw.charger_port, "RAW") as raw:
        again = await asyncio.wait_for(raw.calls.get(), 5)
        assert again[2] == "SetChargingProfile"  # its capabilities are known by now
        await wait_for(lambda: gw.site_guard is not None and gw.site_guard.changes["timeout"] == 1)
        metrics = await api(gw, "/metrics")
        assert 'flipturn_gateway_site_profile_changes_total{result="timeout"} 1.0' in metrics
        assert charger_row(await api(gw, "/api/site"), "RAW")["managed"] is False


def station_max_16(limit: int) -> dict[str, Any]:
    return {
        "connectorId": 0,
        "csChargingProfiles": {
            "chargingProfileId": 7,
            "stackLevel": 0,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "startSchedule": NOW,
                "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
            },
        },
    }


async def test_cloud_maximum_honoured_and_caps_cleared_when_the_cloud_returns(
    tmp_path: Any,
) -> None:
    cloud = await FakeCloud().start()
    settings = site(tmp_path, cloud.url, mode="offline", engage_after_s=0.3, release_after_s=0.5)
    try:
        async with gateway(settings) as gw, simulated(gw.charger_port, "CP1", "1.6") as cp:
            await cloud.wait_connected("CP1")
            answer = await cloud.call("CP1", "SetChargingProfile", station_max_16(10))
            assert answer[2] == {"status": "Accepted"}
            await asyncio.sleep(0.6)
            assert cp.caps() == []  # the cloud is up: the guard stays released
            assert (await api(gw, "/api/site"))["engaged"] is False

            await cloud.stop()
            await wait_for(lambda: bool(cp.caps()))  # engaged after engage_after_s
            await start_16(cp)
            # The cloud's station maximum (10 A) bounds the cap (else 32 A).
            await wait_for(lambda: cp.caps()[-1] == 10)
            assert max(cp.caps()) <= 10
            assert (await api(gw, "/api/site"))["engaged"] is True

            await cloud.restart()
            await wait_for(lambda: bool(cp.calls("ClearChargingProfile")), timeout=10)
            assert cp.calls("ClearChargingProfile")[-1][3] == {"id": PROFILE_ID}
            body = await api(gw, "/api/site")
            assert body["engaged"] is False
            await wait_for(
                lambda: gw.site_guard is not None and gw.site_guard.slots["CP1"].accepted_a is None
            )
    finally:
        await cloud.stop()


async def test_a_cloud_clear_of_the_station_maximum_is_followed_by_the_cap(tmp_path: Any) -> None:
    cloud = await FakeCloud().start()
    try:
        async with (
            gateway(site(tmp_path, cloud.url)) as gw,
            simulated(gw.charger_port, "CP1", "1.6") as cp,
        ):
            await cloud.wait_connected("CP1")
            await wait_for(lambda: bool(cp.caps()))
            # While the cap is in flight: the cloud's Clear is queued after it and removes it.
            await cloud.call("CP1", "ClearChargingProfile", {})  # every profile, the cap too
            await wait_for(lambda: len(cp.caps()) == 2)
            assert [f[2] for f in cp.received][-2:] == [
                "ClearChargingProfile",
                "SetChargingProfile",
            ]
            await wait_for(
                lambda: gw.site_guard is not None and gw.site_guard.slots["CP1"].accepted_a == 6
            )
            # And once it holds its cap.
            sent = len(cp.caps())
            await cloud.call("CP1", "ClearChargingProfile", {})
            await wait_for(lambda: len(cp.caps()) > sent)
            actions = [f[2] for f in cp.received]
            last_clear = len(actions) - 1 - actions[::-1].index("ClearChargingProfile")
            assert "SetChargingProfile" in actions[last_clear + 1 :]
    finally:
        await cloud.stop()


async def test_a_restart_sends_the_caps_again_first(tmp_path: Any) -> None:
    settings = site(tmp_path)
    async with gateway(settings) as gw, simulated(gw.charger_port, "CP1", "2.0.1") as cp:
        await wait_for(lambda: bool(cp.caps()))
        await wait_for(
            lambda: gw.site_guard is not None and gw.site_guard.slots["CP1"].accepted_a == 6
        )
    async with gateway(settings) as gw:
        assert gw.site_guard is not None
        assert gw.site_guard.slots["CP1"].accepted_a == 6  # read back from the store
        async with simulated(gw.charger_port, "CP1", "2.0.1") as cp:
            await wait_for(lambda: len(cp.received) >= 2)
            # Its cap before anything else, then the capability read of this connection.
            assert [f[2] for f in cp.received[:2]] == ["SetChargingProfile", "GetVariables"]
            assert cp.caps() == [6]


async def meter_16(cp: Charger16, amperes: str) -> None:
    await cp.call(
        call16.MeterValues(
            connector_id=1,
            meter_value=[
                {
                    "timestamp": NOW,
                    "sampled_value": [
                        {
                            "value": amperes,
                            "measurand": "Current.Import",
                            "phase": "L1",
                            "unit": "A",
                        }
                    ],
                }
            ],
        )
    )


async def test_the_dashboard_shows_the_site_panel_only_with_the_guard(
    tmp_path: Any, browser: Any
) -> None:
    async with (
        gateway(site(tmp_path)) as gw,
        simulated(gw.charger_port, "CP16", "1.6") as cp16,
        simulated(gw.charger_port, "REFUSER", "1.6", set_status="Rejected") as refuser,
    ):
        await wait_for(lambda: bool(cp16.caps()) and bool(refuser.caps()))
        await start_16(cp16)
        await meter_16(cp16, "7.5")
        page = await new_page(browser)
        await page.goto(f"http://127.0.0.1:{gw.api_port}/")
        panel = page.locator("#site")
        check, opts = expect(panel)
        await check.to_be_visible(**opts)
        for tile, text in (("#s-state", "engaged"), ("#s-limit", "40 A"), ("#s-measured", "7.5 A")):
            check, opts = expect(page.locator(tile))
            await check.to_have_text(text, **opts)
        rows = page.locator("#site-chargers tbody tr")
        check, opts = expect(rows.nth(0))
        # The refuser counts at 32 A: the transaction gets the 8 A left.
        await check.to_contain_text("CP16", **opts)
        await check.to_contain_text("8 A", **opts)
        await check.to_contain_text("7.5 A", **opts)
        check, opts = expect(rows.nth(1))
        await check.to_contain_text("REFUSER", **opts)
        await check.to_contain_text("no (counted at its maximum)", **opts)
        await check.to_have_class("unmanaged", **opts)
        assert await rows.nth(0).locator("meter").evaluate("m => [m.value, m.max]") == [7.5, 8]
        check, opts = expect(page.locator("#s-allocated"))
        await check.to_have_text("40 A", **opts)
        # A new reading shows within the dashboard's second.
        await meter_16(cp16, "6.5")
        check, opts = expect(page.locator("#s-measured"), LIVE_S)
        await check.to_have_text("6.5 A", **opts)

    async with gateway(make_settings(tmp_path / "plain")) as gw:
        page = await new_page(browser)
        await page.goto(f"http://127.0.0.1:{gw.api_port}/")
        check, opts = expect(page.locator("#chargers-title"))
        await check.to_be_visible(**opts)
        check, opts = expect(page.locator("#site"))
        await check.to_be_hidden(**opts)
        assert (await api(gw, "/api/site"))["maxCurrentA"] == 0


async def test_a_new_connection_replacing_one_with_a_call_in_flight_is_capped(
    tmp_path: Any,
) -> None:
    async with gateway(site(tmp_path)) as gw, charger(gw.charger_port, "CP1") as old:
        read = await asyncio.wait_for(old.calls.get(), 5)
        assert read[2] == "GetConfiguration"  # left unanswered: the new socket replaces this one
        async with charger(gw.charger_port, "CP1") as new:
            again = await asyncio.wait_for(new.calls.get(), 5)
            assert again[2] == "GetConfiguration"
            await new.answer(again, {})
            cap = await asyncio.wait_for(new.calls.get(), 5)
            assert cap[2] == "SetChargingProfile"


async def test_a_stored_record_that_is_not_one_is_ignored_and_the_api_needs_the_token(
    tmp_path: Any,
) -> None:
    settings = make_settings(
        tmp_path, site={"max_current_a": 40, "mode": "always"}, api={"token": "s3cret"}
    )
    async with gateway(settings):
        pass  # the store and its tables
    good = {"maxA": 32, "acceptedA": 10, "unmanaged": False, "clear": "none"}
    with contextlib.closing(sqlite3.connect(settings.store.path)) as db, db:
        db.execute(
            "INSERT INTO site_chargers VALUES ('BAD', ?, 0), ('GOOD', ?, 0)",
            (json.dumps({**good, "maxA": "x"}), json.dumps(good)),
        )
    async with gateway(settings) as gw:
        assert gw.site_guard is not None
        assert set(gw.site_guard.slots) == {"GOOD"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as client:
            assert (await client.get("/api/site")).status_code == 401
            body = (
                await client.get("/api/site", headers={"Authorization": "Bearer s3cret"})
            ).json()
        # Not connected, it still holds (and counts at) the cap it accepted.
        assert body["chargers"] == [
            {
                "id": "GOOD",
                "maxA": 32,
                "capA": 10,
                "drawA": None,
                "transactions": 0,
                "managed": True,
            }
        ]
        assert body["allocatedA"] == 10
