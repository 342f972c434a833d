"""The depot view through the real gateway: chargers over loopback, the API over HTTP, SQLite."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from gateway.api.server import SESSION_COOKIE
from gateway.core.txmap import is_local
from gateway.net.depot_recorder import DepotRecorder
from tests.support import FakeCloud, charger, make_settings, running_gateway, wait_for

T0 = "2027-01-15T08:00:00Z"
BOOT = {"chargePointVendor": "Alfen", "chargePointModel": "Eve", "firmwareVersion": "6.1"}
START = {"connectorId": 1, "idTag": "04A1B2", "meterStart": 1000, "timestamp": T0}


def meter(tx: int, wh: int) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "transactionId": tx,
        "meterValue": [{"timestamp": T0, "sampledValue": [{"value": str(wh)}]}],
    }


def settings_for(tmp_path: Any, cloud: FakeCloud | None = None, **api: Any) -> Any:
    upstream = {"url": cloud.url, "call_timeout_s": 1.0} if cloud is not None else {}
    return make_settings(tmp_path, upstream=upstream, offline={"unknown_tags": "accept"}, api=api)


def api(gw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}")


async def test_detail_of_an_online_charger_and_404_for_an_unknown_one(
    tmp_path: Any, cloud: FakeCloud
) -> None:
    async with (
        running_gateway(settings_for(tmp_path, cloud)) as gw,
        charger(gw.charger_port, "CP-1") as cp,
        api(gw) as client,
    ):
        await cp.call("BootNotification", BOOT)
        await cp.call(
            "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
        )
        tx = (await cp.call("StartTransaction", START))[2]["transactionId"]
        await cp.call("MeterValues", meter(tx, 3500))
        response = await client.get("/api/chargers/CP-1")
        missing = await client.get("/api/chargers/nobody")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {
        "id", "ocppVersion", "connected", "linkState", "lastSeenAt", "outboxPending",
        "vendor", "model", "firmware", "connectors", "transactions", "localList", "cloudVersion",
    }  # fmt: skip
    assert body["id"] == "CP-1" and body["ocppVersion"] == "1.6" and body["connected"] is True
    assert body["cloudVersion"] == "1.6"  # the version the cloud selected for its link
    assert body["linkState"] == "online" and body["outboxPending"] == 0
    assert body["lastSeenAt"] is not None
    assert (body["vendor"], body["model"], body["firmware"]) == ("Alfen", "Eve", "6.1")
    (connector,) = body["connectors"]
    assert (connector["id"], connector["status"], connector["errorCode"]) == (
        "1",
        "Charging",
        "NoError",
    )
    assert body["transactions"] == [
        {
            "id": tx,
            "connectorId": "1",
            "idTag": "04A1B2",
            "startedAt": T0,
            "energyWh": 2500.0,
            "powerW": None,
            "offline": False,
        }
    ]
    assert body["localList"] == {"owner": "none", "version": None, "entries": 0, "truncated": False}
    assert missing.status_code == 404 and "error" in missing.json()


async def test_offline_transaction_shows_the_cloud_id_after_replay(
    tmp_path: Any, cloud: FakeCloud
) -> None:
    async with (
        running_gateway(settings_for(tmp_path, cloud)) as gw,
        charger(gw.charger_port, "CP-1") as cp,
        api(gw) as client,
    ):
        await cp.call("Heartbeat", {})
        await cloud.stop()
        local = (await cp.call("StartTransaction", START))[2]["transactionId"]
        assert is_local(local)
        await cp.call("MeterValues", meter(local, 1400))
        offline = (await client.get("/api/chargers/CP-1")).json()
        assert offline["outboxPending"] == 2 and offline["linkState"] != "online"
        assert [(t["id"], t["offline"], t["energyWh"]) for t in offline["transactions"]] == [
            (local, True, 400.0)
        ]
        await cloud.restart()
        await wait_for(lambda: len(cloud.calls("CP-1", "MeterValues")) == 1, timeout=10)
        cloud_id = cloud.calls("CP-1", "MeterValues")[0][3]["transactionId"]
        online = (await client.get("/api/chargers/CP-1")).json()
    assert not is_local(cloud_id)
    assert [(t["id"], t["offline"]) for t in online["transactions"]] == [(cloud_id, False)]


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_201_and_21_charger_detail_by_evse_and_connector(tmp_path: Any, version: str) -> None:
    async with (
        running_gateway(settings_for(tmp_path)) as gw,  # standalone: answered by the gateway
        charger(gw.charger_port, "CS-2", version) as cs,
        api(gw) as client,
    ):
        await cs.call(
            "StatusNotification",
            {"timestamp": T0, "connectorStatus": "Faulted", "evseId": 2, "connectorId": 1},
        )
        tx = {
            "eventType": "Started",
            "timestamp": T0,
            "triggerReason": "Authorized",
            "seqNo": 0,
            "transactionInfo": {"transactionId": "tx-1"},
            "evse": {"id": 2, "connectorId": 1},
            "idToken": {"idToken": "AABB", "type": "ISO14443"},
        }
        assert (await cs.call("TransactionEvent", tx))[0] == 3
        body = (await client.get("/api/chargers/CS-2")).json()
    assert body["ocppVersion"] == version
    assert [(c["id"], c["status"]) for c in body["connectors"]] == [("2/1", "Faulted")]
    assert [
        (t["id"], t["connectorId"], t["idTag"], t["offline"]) for t in body["transactions"]
    ] == [
        ("tx-1", "2/1", "AABB", True)  # answered by the gateway alone
    ]


async def test_a_restart_shows_the_same_picture(tmp_path: Any) -> None:
    settings = settings_for(tmp_path)  # standalone: every CALL answered locally
    async with (
        running_gateway(settings) as gw,
        charger(gw.charger_port, "CP-1") as cp,
        api(gw) as client,
    ):
        await cp.call("BootNotification", BOOT)
        await cp.call(
            "StatusNotification",
            {"connectorId": 2, "errorCode": "GroundFailure", "status": "Faulted"},
        )
        tx = (await cp.call("StartTransaction", {**START, "connectorId": 1}))[2]["transactionId"]
        await cp.call("MeterValues", meter(tx, 1900))
        before = (await client.get("/api/chargers/CP-1")).json()
    async with running_gateway(settings) as gw, api(gw) as client:
        after = (await client.get("/api/chargers/CP-1")).json()
    assert before["connected"] is True and after["connected"] is False
    for key in ("vendor", "model", "firmware", "connectors", "transactions", "lastSeenAt"):
        assert after[key] == before[key], key
    assert after["transactions"][0]["energyWh"] == 900.0  # the meter reading was flushed at stop


async def test_flush_writes_changed_chargers_in_one_transaction(tmp_path: Any) -> None:
    settings = settings_for(tmp_path)
    async with running_gateway(settings) as gw:
        assert gw.store is not None
        recorder = DepotRecorder(gw.depot, gw.store)  # a second recorder, flushed by hand
        async with charger(gw.charger_port, "CP-1") as cp, charger(gw.charger_port, "CP-2") as cp2:
            for c in (cp, cp2):
                await c.call("BootNotification", BOOT)
        written = await recorder.flush(meters=False)
        assert (written, recorder.writes) == (2, 1)
        assert await recorder.flush(meters=False) == 0  # nothing changed since
        assert recorder.writes == 1
        assert sorted(cid for cid, _ in await gw.store.depot_records()) == ["CP-1", "CP-2"]


async def test_token_login_sets_an_http_only_cookie_the_api_accepts(tmp_path: Any) -> None:
    async with (
        running_gateway(settings_for(tmp_path, token="s3cret-token")) as gw,
        api(gw) as client,
    ):
        assert (await client.get("/api/depot")).status_code == 401
        assert (await client.get("/api/chargers/CP-1")).status_code == 401
        wrong = await client.post("/api/login", json={"token": "guess"})
        assert wrong.status_code == 401 and SESSION_COOKIE not in client.cookies
        right = await client.post("/api/login", json={"token": "s3cret-token"})
        assert right.status_code == 200
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        assert "s3cret-token" not in cookie  # the cookie is derived from the token, not it
        depot = await client.get("/api/depot")
        assert depot.status_code == 200 and depot.json()["tokenRequired"] is True
        assert (await client.get("/api/ocpp/reservations")).status_code == 200
        await client.post("/api/logout")
        assert (await client.get("/api/depot")).status_code == 401
        bearer = await client.get("/api/depot", headers={"Authorization": "Bearer s3cret-token"})
        assert bearer.status_code == 200
        client.cookies.set(SESSION_COOKIE, "0" * 64)
        assert (await client.get("/api/depot")).status_code == 401


async def test_dashboard_page_and_assets_are_served_from_the_package(tmp_path: Any) -> None:
    async with (
        running_gateway(settings_for(tmp_path, token="t0ken-t0ken")) as gw,
        api(gw) as client,
    ):
        page = await client.get("/")
        css = await client.get("/static/dashboard.css")
        js = await client.get("/static/dashboard.js")
        missing = await client.get("/static/other.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<script src="/static/dashboard.js"' in page.text and "http" not in page.text.split(
        "<body>"
    )[0].replace("http-equiv", "")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert missing.status_code == 404


async def test_certificate_expiry_is_in_the_dashboard_data_when_tls_is_used(
    tmp_path: Any, certificate: tuple[str, str]
) -> None:
    cert, key = certificate  # valid for one day
    plain = settings_for(tmp_path)
    async with running_gateway(plain) as gw, api(gw) as client:
        assert (await client.get("/api/depot")).json()["certificates"] == []
    tls = plain.model_copy(
        update={"chargers": plain.chargers.model_copy(update={"tls_cert": cert, "tls_key": key})}
    )
    async with running_gateway(tls) as gw, api(gw) as client:
        (entry,) = (await client.get("/api/depot")).json()["certificates"]
    assert entry["name"] == "chargers" and entry["daysLeft"] == 0
    assert entry["notAfter"].endswith("Z")


async def test_dashboard_data_survives_a_store_that_cannot_answer(tmp_path: Any) -> None:
    async with (
        running_gateway(settings_for(tmp_path)) as gw,
        charger(gw.charger_port, "CP-1") as cp,
        api(gw) as client,
    ):
        await cp.call("BootNotification", BOOT)
        assert gw.store is not None
        await gw.store.close()  # every read of the store now fails
        response = await client.get("/api/depot")
    assert response.status_code == 200
    body = response.json()
    assert body["outbox"]["deadLetters"] is None
    assert [(c["id"], c["vendor"]) for c in body["chargers"]] == [("CP-1", "Alfen")]


async def test_meter_readings_in_quick_succession_all_relayed_and_the_last_one_shown(
    tmp_path: Any, cloud: FakeCloud
) -> None:
    settings = settings_for(tmp_path, cloud)
    readings = [1500, 1700, 1900, 2300]  # back to back: the view folds them at most once a second
    async with (
        running_gateway(settings) as gw,
        charger(gw.charger_port, "CP-1") as cp,
        api(gw) as client,
    ):
        tx = (await cp.call("StartTransaction", START))[2]["transactionId"]
        for wh in readings:
            assert (await cp.call("MeterValues", meter(tx, wh)))[0] == 3

        async def energy() -> float:
            body = (await client.get("/api/chargers/CP-1")).json()
            return float(body["transactions"][0]["energyWh"])

        assert await energy() >= 500.0  # the first reading was shown at once
        deadline = asyncio.get_running_loop().time() + 5
        while await energy() != 1300.0:  # the last one within about a second
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await cp.call("MeterValues", meter(tx, 2400))  # within a second: may be held...
        await cp.call("MeterValues", meter(tx, 2500))
    sent = [
        c[3]["meterValue"][0]["sampledValue"][0]["value"]
        for c in cloud.calls("CP-1", "MeterValues")
    ]
    assert sent == [str(wh) for wh in [*readings, 2400, 2500]]  # every frame relayed, in order
    async with running_gateway(settings) as gw, api(gw) as client:
        after = (await client.get("/api/chargers/CP-1")).json()
    assert after["transactions"][0]["energyWh"] == 1500.0  # ...and the last one kept
