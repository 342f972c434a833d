"""End to end over real sockets: sync from a local fake Flipturn API, learn while online, then
answer Authorize / StartTransaction / TransactionEvent from the cache with the cloud down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.app import Gateway
from gateway.tags.sync import sync_status
from tests.flipturn_fake import FakeFlipturn, access_id, serving, vehicle
from tests.support import FakeCloud, charger, make_settings, running_gateway

FUTURE = "2099-01-01T00:00:00Z"
PAST = "2020-01-01T00:00:00Z"

FLEET = [
    # Flipturn stores ocppIdTag normalised (access-ids.txt: "This value is normalized").
    access_id(1, tag="AABBCCDDEEFF", kind="Vehicle"),
    access_id(2, tag="RFID-OK"),
    access_id(3, tag="RFID-REVOKED", status="Revoked"),
]
VEHICLES = [
    vehicle(
        1, access_ids=[{"id": 1, "ocppIdTag": "AABBCCDDEEFF", "authorizationStatus": "Authorized"}]
    )
]


def cloud_answers(charger_id: str, action: str, payload: dict[str, Any]) -> Any:
    """The cloud knows two guests the Flipturn list does not: one valid, one expired."""
    expiry = {"guest-1": FUTURE, "guest-old": PAST}
    if action == "Authorize" and "idTag" in payload:
        return {"idTagInfo": {"status": "Accepted", "expiryDate": expiry[payload["idTag"]]}}
    if action == "Authorize":
        token = payload["idToken"]["idToken"]
        return {"idTokenInfo": {"status": "Accepted", "cacheExpiryDateTime": expiry[token]}}
    if action == "BootNotification":
        return {"status": "Accepted", "currentTime": "2026-11-21T12:00:00Z", "interval": 60}
    return {}


@pytest.fixture
def flipturn_url() -> Iterator[str]:
    with serving(FakeFlipturn(FLEET, VEHICLES, page_size=2)) as url:
        yield url


async def wait_synced(gw: Gateway, count: int) -> None:
    assert gw.store is not None
    for _ in range(500):
        if (await sync_status(gw.store))["accessIds"] == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("sync did not complete")


async def wait_learned(gw: Gateway, key: str) -> None:
    assert gw.store is not None
    for _ in range(500):
        if await gw.store.find_learned_tag(key) is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{key} was not learned")


async def test_offline_authorize_16(tmp_path: Any, flipturn_url: str) -> None:
    cloud = await FakeCloud(responder=cloud_answers).start()
    settings = make_settings(
        tmp_path,
        upstream={"url": cloud.url, "call_timeout_s": 0.5},
        flipturn={"api_url": flipturn_url, "api_key": "secret-key"},
    )
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP-1") as cp:
        await wait_synced(gw, 3)
        # Online: the cloud answers, and the gateway learns what it said.
        online = await cp.call("Authorize", {"idTag": "guest-1"})
        assert online[2] == {"idTagInfo": {"status": "Accepted", "expiryDate": FUTURE}}
        await cp.call("Authorize", {"idTag": "guest-old"})
        await wait_learned(gw, "GUEST-1")
        await wait_learned(gw, "GUEST-OLD")
        assert len(cloud.calls("CP-1", "Authorize")) == 2

        await cloud.stop()
        expected = {
            "aa:bb:cc:dd:ee:ff": {"status": "Accepted"},
            "AA-BB-CC-DD-EE-FF": {"status": "Accepted"},
            "vid:aabbccddeeff": {"status": "Accepted"},  # 1.6 idTag is at most 20 characters
            "rfid-ok": {"status": "Accepted"},
            "RFID-REVOKED": {"status": "Blocked"},
            "Guest-1": {"status": "Accepted", "expiryDate": FUTURE},
            "guest-old": {"status": "Expired", "expiryDate": PAST},
            "nobody": {"status": "Invalid"},
        }
        for tag, info in expected.items():
            answer = await cp.call("Authorize", {"idTag": tag})
            assert answer[0] == 3 and answer[2] == {"idTagInfo": info}, tag

        start = {"connectorId": 1, "idTag": "rfid-revoked", "meterStart": 0, "timestamp": FUTURE}
        started = await cp.call("StartTransaction", start)
        assert started[2]["idTagInfo"] == {"status": "Blocked"}
        assert isinstance(started[2]["transactionId"], int)

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api:
            metrics = (await api.get("/metrics")).text
        assert (
            'flipturn_gateway_local_authorizations_total{source="synced",status="Accepted"} 4.0'
            in metrics
        )
        assert (
            'flipturn_gateway_local_authorizations_total{source="synced",status="Blocked"} 2.0'
            in metrics
        )
        assert (
            'flipturn_gateway_local_authorizations_total{source="learned",status="Expired"} 1.0'
            in metrics
        )
        assert (
            'flipturn_gateway_local_authorizations_total{source="policy",status="Invalid"} 1.0'
            in metrics
        )
        assert "flipturn_gateway_sync_access_ids 3.0" in metrics


@pytest.mark.parametrize(("policy", "status"), [("reject", "Invalid"), ("accept", "Accepted")])
async def test_unknown_tag_policy_standalone(tmp_path: Any, policy: str, status: str) -> None:
    settings = make_settings(tmp_path, offline={"unknown_tags": policy})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP-1") as cp:
        answer = await cp.call("Authorize", {"idTag": "stranger"})
        assert answer[2] == {"idTagInfo": {"status": status}}
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP-2", "2.0.1") as cp:
        token = {"idToken": {"idToken": "stranger", "type": "ISO14443"}}
        answer = await cp.call("Authorize", token)
        assert answer[2] == {"idTokenInfo": {"status": status}}


async def test_offline_authorize_201(tmp_path: Any, flipturn_url: str) -> None:
    cloud = await FakeCloud(responder=cloud_answers).start()
    settings = make_settings(
        tmp_path,
        upstream={"url": cloud.url, "call_timeout_s": 0.5},
        flipturn={"api_url": flipturn_url, "api_key": "secret-key"},
    )
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CS-1", "2.0.1") as cs:
        await wait_synced(gw, 3)
        for token in ("guest-1", "guest-old"):
            await cs.call("Authorize", {"idToken": {"idToken": token, "type": "ISO14443"}})
        await wait_learned(gw, "GUEST-1")
        await wait_learned(gw, "GUEST-OLD")

        await cloud.stop()
        expected = {
            ("aa:bb:cc:dd:ee:ff", "MacAddress"): {"status": "Accepted"},
            ("VID:AA-BB-CC-DD-EE-FF", "MacAddress"): {"status": "Accepted"},
            ("rfid-ok", "ISO14443"): {"status": "Accepted"},
            ("rfid-revoked", "ISO14443"): {"status": "Blocked"},
            ("guest-1", "ISO14443"): {"status": "Accepted", "cacheExpiryDateTime": FUTURE},
            ("guest-old", "ISO14443"): {"status": "Expired", "cacheExpiryDateTime": PAST},
            ("nobody", "ISO14443"): {"status": "Invalid"},
        }
        for (token, kind), info in expected.items():
            answer = await cs.call("Authorize", {"idToken": {"idToken": token, "type": kind}})
            assert answer[0] == 3 and answer[2] == {"idTokenInfo": info}, token

        event = {
            "eventType": "Started",
            "timestamp": "2026-11-21T12:00:00Z",
            "triggerReason": "Authorized",
            "seqNo": 0,
            "transactionInfo": {"transactionId": "tx-1"},
            "idToken": {"idToken": "vid:aa:bb:cc:dd:ee:ff", "type": "MacAddress"},
        }
        answer = await cs.call("TransactionEvent", event)
        assert answer[2] == {"idTokenInfo": {"status": "Accepted"}}
        without_token = {k: v for k, v in event.items() if k != "idToken"} | {
            "eventType": "Updated",
            "seqNo": 1,
            "triggerReason": "MeterValuePeriodic",
        }
        assert (await cs.call("TransactionEvent", without_token))[2] == {}


async def test_local_api_views_and_sync(tmp_path: Any) -> None:
    fake = FakeFlipturn(FLEET, VEHICLES, page_size=2)
    with serving(fake) as url:
        settings = make_settings(
            tmp_path,
            flipturn={"api_url": url, "api_key": "secret-key"},
            api={"token": "local-token"},
        )
        async with running_gateway(settings) as gw:
            await wait_synced(gw, 3)
            headers = {"Authorization": "Bearer local-token"}
            base = f"http://127.0.0.1:{gw.api_port}"
            async with httpx.AsyncClient(base_url=base, headers=headers) as api:
                first = (await api.get("/api/access-ids", params={"limit": 2})).json()
                assert [a["id"] for a in first["data"]] == [1, 2]
                assert first["pagination"]["hasNextPage"] is True
                cursor = first["pagination"]["nextPageCursor"]
                rest = (await api.get("/api/access-ids", params={"cursor": cursor})).json()
                assert rest["data"] == [FLEET[2]]
                assert rest["pagination"] == {"hasNextPage": False, "nextPageCursor": None}

                detail = await api.get("/api/access-ids/1")
                assert detail.json() == {"accessId": FLEET[0]}
                missing = await api.get("/api/access-ids/999")
                assert missing.status_code == 404 and "error" in missing.json()
                assert (await api.get("/api/access-ids/abc")).status_code == 404
                bad = await api.get("/api/access-ids", params={"cursor": "zz"})
                assert bad.status_code == 422 and "error" in bad.json()

                vehicles = (await api.get("/api/vehicles")).json()
                assert vehicles["data"] == VEHICLES
                assert (await api.get("/api/vehicles/1")).json() == {"vehicle": VEHICLES[0]}
                assert (await api.get("/api/vehicles/2")).status_code == 404

                fake.access_ids = [*FLEET, access_id(4, tag="NEW")]
                synced = await api.post("/api/sync")
                assert synced.status_code == 200
                body = synced.json()
                assert body["accessIds"] == 4 and body["vehicles"] == 1
                assert isinstance(body["durationS"], float)

                fake.fail[("/api/access-ids", 0)] = [401]
                failed = await api.post("/api/sync")
                assert failed.status_code == 502 and "401" in failed.json()["error"]
                assert "secret-key" not in failed.text

                health = (await api.get("/health")).json()
                assert health["sync"]["accessIds"] == 4
                assert health["sync"]["lastSuccessAt"] is not None
                assert "401" in health["sync"]["lastError"]
                assert health["status"] == "degraded"  # the cache is going stale
            async with httpx.AsyncClient(base_url=base) as anonymous:
                assert (await anonymous.post("/api/sync")).status_code == 401


async def test_sync_disabled_without_api_key(tmp_path: Any) -> None:
    async with running_gateway(make_settings(tmp_path)) as gw:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api:
            answer = await api.post("/api/sync")
            health = (await api.get("/health")).json()
        assert answer.status_code == 503 and "api_key" in answer.json()["error"]
        assert health["sync"] == {"lastSuccessAt": None, "lastError": None, "accessIds": 0}
        assert gw.sync is None
