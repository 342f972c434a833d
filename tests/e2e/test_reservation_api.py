"""Reservations end to end: the local API, a gateway, chargers and a fake cloud over real sockets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from gateway.config import OfflineSettings, PortMapping, Settings
from tests.support import Charger, FakeCloud, charger, make_settings, running_gateway

EXPIRY = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
EXPIRY_TEXT = EXPIRY.strftime("%Y-%m-%dT%H:%M:%S.000Z")
PORTS = (
    PortMapping(id=101, charger="CP-16", connector=1),
    PortMapping(id=102, charger="CP-16", connector=2),
    PortMapping(id=201, charger="CP-201", connector=1),
    PortMapping(id=301, charger="CP-AWAY", connector=1),
)
PORT_OF = {"1.6": (101, "CP-16"), "2.0.1": (201, "CP-201")}


def settings_for(
    tmp_path: Any,
    cloud: FakeCloud | None,
    chargers: dict[str, Any] | None = None,
    **upstream: Any,
) -> Settings:
    sections: dict[str, Any] = {"chargers": chargers or {}}
    if cloud is not None:
        sections["upstream"] = {"url": cloud.url, **upstream}
    settings = make_settings(tmp_path, **sections)
    return settings.model_copy(update={"ports": PORTS})


def body(port_id: int, reservation_id: int = 42, **extra: Any) -> dict[str, Any]:
    return {
        "portId": port_id,
        "expiryDate": EXPIRY_TEXT,
        "idTag": "04A2B3C4D5",
        "reservationId": reservation_id,
        **extra,
    }


def expected_payload(version: str, connector: int, reservation_id: int = 42) -> dict[str, Any]:
    if version == "1.6":
        return {
            "connectorId": connector,
            "expiryDate": EXPIRY_TEXT,
            "idTag": "04A2B3C4D5",
            "reservationId": reservation_id,
        }
    return {
        "id": reservation_id,
        "expiryDateTime": EXPIRY_TEXT,
        "idToken": {"idToken": "04A2B3C4D5", "type": "Central"},
        "evseId": connector,
    }


@pytest.fixture
async def api_and(
    tmp_path: Any, cloud: FakeCloud
) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    settings = settings_for(tmp_path, cloud, {"call_timeout_s": 1.0}, call_timeout_s=1.0)
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{gw.api_port}", trust_env=False, timeout=10
        ) as client,
    ):
        yield gw, client


async def next_call(cp: Charger, timeout: float = 5) -> list[Any]:
    return await asyncio.wait_for(cp.calls.get(), timeout)


async def exchange(
    client: httpx.AsyncClient, cp: Charger, path: str, json: dict[str, Any], answer: dict[str, Any]
) -> tuple[list[Any], httpx.Response]:
    """POST ``json`` while the charger answers the CALL it gets with ``answer``: (CALL, response)."""
    request = asyncio.create_task(client.post(path, json=json))
    call = await next_call(cp)
    await cp.answer(call, answer)
    return call, await request


async def listing(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    response = await client.get("/api/ocpp/reservations")
    assert response.status_code == 200
    data: list[dict[str, Any]] = response.json()["data"]
    return data


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_every_status_is_passed_through_with_the_exact_payload(
    api_and: tuple[Gateway, httpx.AsyncClient], cloud: FakeCloud, version: str
) -> None:
    gw, client = api_and
    port_id, cpid = PORT_OF[version]
    async with charger(gw.charger_port, cpid, version) as cp:
        await cloud.wait_connected(cpid)
        statuses = ["Accepted", "Faulted", "Occupied", "Rejected", "Unavailable"]
        for rid, status in enumerate(statuses, start=1):
            call, response = await exchange(
                client, cp, "/api/ocpp/reservations", body(port_id, rid), {"status": status}
            )
            assert call[2] == "ReserveNow"
            assert call[3] == expected_payload(version, 1, rid)
            assert call[1].startswith("gw-")  # cannot collide with the cloud's ids
            assert response.status_code == 200
            assert response.json() == {"status": status}
        # Gateway-originated CALLs and their answers never reach the cloud.
        assert not [f for f in cloud.received[cpid] if str(f[1]).startswith("gw-")]
        active = await listing(client)
        assert [(r["reservationId"], r["portId"], r["source"], r["state"]) for r in active] == [
            (1, port_id, "api", "active")
        ]
        assert active[0]["idTag"] == "04A2B3C4D5" and active[0]["expiryDate"] == EXPIRY_TEXT


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_cancel(
    api_and: tuple[Gateway, httpx.AsyncClient], cloud: FakeCloud, version: str
) -> None:
    gw, client = api_and
    port_id, cpid = PORT_OF[version]
    async with charger(gw.charger_port, cpid, version) as cp:
        await cloud.wait_connected(cpid)
        await reserve_accepted(client, cp, body(port_id, 7))
        assert len(await listing(client)) == 1

        for status in ("Rejected", "Accepted"):
            call, response = await exchange(
                client,
                cp,
                "/api/ocpp/reservations/cancel",
                {"portId": port_id, "reservationId": 7},
                {"status": status},
            )
            assert call[2:] == ["CancelReservation", {"reservationId": 7}]
            assert response.status_code == 200 and response.json() == {"status": status}
        assert await listing(client) == []


async def test_errors(api_and: tuple[Gateway, httpx.AsyncClient], cloud: FakeCloud) -> None:
    gw, client = api_and
    unknown = await client.post("/api/ocpp/reservations", json=body(999))
    assert unknown.status_code == 404 and "999" in unknown.json()["error"]
    away = await client.post("/api/ocpp/reservations", json=body(301))
    assert away.status_code == 409 and "CP-AWAY" in away.json()["error"]
    away_cancel = await client.post(
        "/api/ocpp/reservations/cancel", json={"portId": 301, "reservationId": 1}
    )
    assert away_cancel.status_code == 409
    too_long = await client.post("/api/ocpp/reservations", json=body(101, idTag="X" * 21))
    assert too_long.status_code == 422 and too_long.json()["error"].startswith("idTag")
    past = await client.post(
        "/api/ocpp/reservations", json=body(101, expiryDate="2020-01-01T00:00:00Z")
    )
    assert past.status_code == 422 and "expiryDate" in past.json()["error"]
    not_int = await client.post("/api/ocpp/reservations", json=body(101, reservationId="x"))
    assert not_int.status_code == 422 and "reservationId" in not_int.json()["error"]
    bad_type = await client.post("/api/ocpp/reservations", json=body(101, idTokenType="Card"))
    assert bad_type.status_code == 422 and "idTokenType" in bad_type.json()["error"]
    not_json = await client.post("/api/ocpp/reservations", content=b"{nope")
    assert not_json.status_code == 422 and "error" in not_json.json()
    cancel_bad = await client.post("/api/ocpp/reservations/cancel", json={"portId": 101})
    assert cancel_bad.status_code == 422 and "reservationId" in cancel_bad.json()["error"]

    async with charger(gw.charger_port, "CP-201", "2.0.1") as cp:
        await cloud.wait_connected("CP-201")
        parent = await client.post("/api/ocpp/reservations", json=body(201, parentIdTag="FLEET"))
        assert parent.status_code == 422 and parent.json()["error"].startswith("parentIdTag")
        assert cp.received == []  # nothing was sent for an invalid request


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_silent_charger_gives_504(
    api_and: tuple[Gateway, httpx.AsyncClient], cloud: FakeCloud, version: str
) -> None:
    gw, client = api_and
    port_id, cpid = PORT_OF[version]
    async with charger(gw.charger_port, cpid, version) as cp:
        await cloud.wait_connected(cpid)
        response = await client.post("/api/ocpp/reservations", json=body(port_id))
        assert response.status_code == 504 and "did not answer" in response.json()["error"]
        call = cp.calls.get_nowait()
        assert call[2] == "ReserveNow"
        cancel = await client.post(
            "/api/ocpp/reservations/cancel", json={"portId": port_id, "reservationId": 42}
        )
        assert cancel.status_code == 504
        assert await listing(client) == []


async def test_unsupported_reservation_profile_is_rejected(
    api_and: tuple[Gateway, httpx.AsyncClient], cloud: FakeCloud
) -> None:
    gw, client = api_and
    async with charger(gw.charger_port, "CP-16", "1.6") as cp:
        await cloud.wait_connected("CP-16")
        request = asyncio.create_task(client.post("/api/ocpp/reservations", json=body(101)))
        call = await next_call(cp)
        cp.outstanding_calls_to_me -= 1  # answered, with a CALLERROR
        await cp.send_raw(f'[4, "{call[1]}", "NotImplemented", "no Reservation profile", {{}}]')
        assert (await request).json() == {"status": "Rejected"}  # Flipturn: "not supported"
        request = asyncio.create_task(client.post("/api/ocpp/reservations", json=body(101, 43)))
        call = await next_call(cp)
        await cp.answer(call, {"status": "Booked"})
        bad = await request
        assert bad.status_code == 502 and "Booked" in bad.json()["error"]


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_reservation_waits_behind_an_unanswered_cloud_call(
    api_and: tuple[Gateway, httpx.AsyncClient], cloud: FakeCloud, version: str
) -> None:
    gw, client = api_and
    port_id, cpid = PORT_OF[version]
    async with charger(gw.charger_port, cpid, version) as cp:
        await cloud.wait_connected(cpid)
        action = "GetConfiguration" if version == "1.6" else "GetVariables"
        cloud_call = asyncio.create_task(cloud.call(cpid, action, {}, message_id="cloud-7"))
        first = await next_call(cp)
        assert first[1:3] == ["cloud-7", action]
        reserve = asyncio.create_task(client.post("/api/ocpp/reservations", json=body(port_id)))
        await asyncio.sleep(0.3)
        assert cp.calls.empty()  # the reservation waits while the cloud's CALL is unanswered
        await cp.answer(
            first, {"configurationKey": []} if version == "1.6" else {"getVariableResult": []}
        )
        assert (await cloud_call)[:2] == [3, "cloud-7"]
        second = await next_call(cp)
        assert second[2] == "ReserveNow"
        await cp.answer(second, {"status": "Accepted"})
        assert (await reserve).json() == {"status": "Accepted"}
        assert cp.max_outstanding_calls_to_me == 1


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_cloud_reserve_now_is_relayed_unchanged_and_recorded(
    api_and: tuple[Gateway, httpx.AsyncClient], cloud: FakeCloud, version: str
) -> None:
    gw, client = api_and
    _, cpid = PORT_OF[version]
    payload = expected_payload(version, 2 if version == "1.6" else 1, 77)
    if version == "1.6":
        payload["parentIdTag"] = "FLEET"
    else:
        payload["idToken"]["type"] = "ISO14443"
    async with charger(gw.charger_port, cpid, version) as cp:
        await cloud.wait_connected(cpid)
        relayed = asyncio.create_task(cloud.call(cpid, "ReserveNow", payload, message_id="c-77"))
        call = await next_call(cp)
        assert call == [2, "c-77", "ReserveNow", payload]
        await cp.answer(call, {"status": "Accepted"})
        assert await relayed == [3, "c-77", {"status": "Accepted"}]

        async def recorded() -> list[dict[str, Any]]:
            return await listing(client)

        await wait_for_async(recorded, lambda rows: len(rows) == 1)
        (row,) = await recorded()
        assert (row["reservationId"], row["source"], row["status"]) == (77, "cloud", "Accepted")
        assert row["chargerId"] == cpid
        assert row["portId"] == (102 if version == "1.6" else 201)
        assert row["parentIdTag"] == ("FLEET" if version == "1.6" else None)

        cancelled = asyncio.create_task(
            cloud.call(cpid, "CancelReservation", {"reservationId": 77}, message_id="c-78")
        )
        call = await next_call(cp)
        assert call == [2, "c-78", "CancelReservation", {"reservationId": 77}]
        await cp.answer(call, {"status": "Accepted"})
        assert await cancelled == [3, "c-78", {"status": "Accepted"}]
        await wait_for_async(recorded, lambda rows: rows == [])


async def wait_for_async(fetch: Any, ok: Any, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not ok(await fetch()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("version", "action", "payload"),
    [
        (
            "1.6",
            "StartTransaction",
            {
                "connectorId": 1,
                "idTag": "04A2B3C4D5",
                "meterStart": 0,
                "reservationId": 42,
                "timestamp": "2026-11-21T12:00:00Z",
            },
        ),
        (
            "2.0.1",
            "ReservationStatusUpdate",
            {"reservationId": 42, "reservationUpdateStatus": "Expired"},
        ),
    ],
)
async def test_charger_messages_close_the_reservation(
    api_and: tuple[Gateway, httpx.AsyncClient],
    cloud: FakeCloud,
    version: str,
    action: str,
    payload: dict[str, Any],
) -> None:
    gw, client = api_and
    port_id, cpid = PORT_OF[version]
    async with charger(gw.charger_port, cpid, version) as cp:
        await cloud.wait_connected(cpid)
        await reserve_accepted(client, cp, body(port_id))
        answer = await cp.call(action, payload)
        assert answer[0] == 3
        assert cloud.calls(cpid, action)[-1][3] == payload  # relayed unchanged
        await wait_for_async(lambda: listing(client), lambda rows: rows == [])


async def test_reservation_is_logged_and_counted(
    api_and: tuple[Gateway, httpx.AsyncClient], cloud: FakeCloud, caplog: pytest.LogCaptureFixture
) -> None:
    gw, client = api_and
    caplog.set_level(logging.INFO, logger="gateway")
    async with charger(gw.charger_port, "CP-16", "1.6") as cp:
        await cloud.wait_connected("CP-16")
        _, response = await exchange(
            client, cp, "/api/ocpp/reservations", body(101), {"status": "Occupied"}
        )
        assert response.json() == {"status": "Occupied"}
    metrics = (await client.get("/metrics")).text
    assert (
        'flipturn_gateway_reservation_requests_total{action="ReserveNow",outcome="Occupied",source="api"} 1.0'
        in metrics
    )
    assert (
        'flipturn_gateway_reservation_requests_total{action="ReserveNow",outcome="NotConnected",source="api"}'
        not in metrics
    )
    messages = [r.getMessage() for r in caplog.records]
    assert any("reserving port 101 (CP-16 connector 1) as reservation 42" in m for m in messages)
    assert any("reservation 42 on CP-16 connector 1" in m and "Occupied" in m for m in messages)


async def test_api_token_guards_reservations(tmp_path: Any) -> None:
    settings = make_settings(tmp_path, api={"token": "s3cret"}).model_copy(update={"ports": PORTS})
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}", trust_env=False) as client,
    ):
        refused = await client.post("/api/ocpp/reservations", json=body(101))
        assert refused.status_code == 401
        allowed = await client.get(
            "/api/ocpp/reservations", headers={"Authorization": "Bearer s3cret"}
        )
        assert allowed.status_code == 200 and allowed.json() == {"data": []}


async def reserve_accepted(client: httpx.AsyncClient, cp: Charger, json: dict[str, Any]) -> None:
    _, response = await exchange(client, cp, "/api/ocpp/reservations", json, {"status": "Accepted"})
    assert response.json() == {"status": "Accepted"}


def start_16(tag: str, connector: int = 1) -> dict[str, Any]:
    return {
        "connectorId": connector,
        "idTag": tag,
        "meterStart": 0,
        "timestamp": "2026-11-21T12:00:00Z",
    }


def started_201(tag: str, evse: int = 1) -> dict[str, Any]:
    return {
        "eventType": "Started",
        "timestamp": "2026-11-21T12:00:00Z",
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": f"tx-{tag}"},
        "evse": {"id": evse, "connectorId": 1},
        "idToken": {"idToken": tag, "type": "ISO14443"},
    }


async def test_offline_reserved_connector_accepts_only_the_reserved_tag_16(
    tmp_path: Any, cloud: FakeCloud
) -> None:
    settings = settings_for(tmp_path, cloud, call_timeout_s=1.0).model_copy(
        update={"offline": OfflineSettings(unknown_tags="accept")}
    )
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}", trust_env=False) as client,
        charger(gw.charger_port, "CP-16", "1.6") as cp,
    ):
        await cloud.wait_connected("CP-16")
        expiry = datetime.now(UTC) + timedelta(seconds=1)
        await reserve_accepted(
            client, cp, body(101, 5, idTag="alice", expiryDate=expiry.isoformat())
        )
        await cloud.stop()  # the cloud goes away: the gateway answers from here on

        bob = await cp.call("StartTransaction", start_16("bob"))
        assert bob[2]["idTagInfo"] == {"status": "Invalid"}
        alice = await cp.call("StartTransaction", start_16(" Alice "))
        assert alice[2]["idTagInfo"]["status"] == "Accepted"
        other_connector = await cp.call("StartTransaction", start_16("bob", connector=2))
        assert other_connector[2]["idTagInfo"]["status"] == "Accepted"
        # Authorize names no connector; CP-16 has a free connector 2, so it is not refused.
        authorize = await cp.call("Authorize", {"idTag": "bob"})
        assert authorize[2]["idTagInfo"]["status"] == "Accepted"

        await asyncio.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds()) + 0.05)
        after = await cp.call("StartTransaction", start_16("bob"))
        assert after[2]["idTagInfo"]["status"] == "Accepted"


async def test_offline_reserved_evse_accepts_only_the_reserved_token_201(tmp_path: Any) -> None:
    settings = settings_for(tmp_path, None).model_copy(
        update={"offline": OfflineSettings(unknown_tags="accept")}
    )
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}", trust_env=False) as client,
        charger(gw.charger_port, "CP-201", "2.0.1") as cp,
    ):
        boot = {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}
        assert (await cp.call("BootNotification", boot))[2]["status"] == "Accepted"
        expiry = datetime.now(UTC) + timedelta(seconds=1)
        await reserve_accepted(
            client, cp, body(201, 5, idTag="alice", expiryDate=expiry.isoformat())
        )

        # CP-201 has one known EVSE, so even an Authorize (no EVSE named) is refused for bob.
        authorize = await cp.call("Authorize", {"idToken": {"idToken": "bob", "type": "ISO14443"}})
        assert authorize[2]["idTokenInfo"]["status"] == "NotAtThisTime"
        refused = await cp.call("TransactionEvent", started_201("bob"))
        assert refused[2]["idTokenInfo"]["status"] == "NotAtThisTime"
        assert refused[2]["idTokenInfo"]["cacheExpiryDateTime"].startswith(
            expiry.strftime("%Y-%m-%dT%H:%M:%S")
        )
        alice = await cp.call("TransactionEvent", started_201("ALICE"))
        assert alice[2]["idTokenInfo"]["status"] == "Accepted"

        await asyncio.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds()) + 0.05)
        after = await cp.call("Authorize", {"idToken": {"idToken": "bob", "type": "ISO14443"}})
        assert after[2]["idTokenInfo"]["status"] == "Accepted"
