"""Offline answers, durable queue and in-order replay, over real sockets and a real SQLite file."""

from __future__ import annotations

from typing import Any

import httpx

from gateway.core.link import LinkState
from gateway.core.txmap import LOCAL_TX_MIN, is_local
from tests.support import FakeCloud, charger, make_settings, running_gateway, wait_for

T0 = "2026-11-21T12:00:00Z"


def start_tx(tag: str = "TAG-1") -> dict[str, Any]:
    return {"connectorId": 1, "idTag": tag, "meterStart": 100, "timestamp": T0}


def meter(tx: int, wh: int) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "transactionId": tx,
        "meterValue": [{"timestamp": T0, "sampledValue": [{"value": str(wh)}]}],
    }


def stop_tx(tx: int) -> dict[str, Any]:
    return {"transactionId": tx, "meterStop": 900, "timestamp": T0, "idTag": "TAG-1"}


def settings_for(tmp_path: Any, cloud: FakeCloud, **upstream: Any) -> Any:
    return make_settings(
        tmp_path,
        upstream={"url": cloud.url, "call_timeout_s": 1.0, **upstream},
        offline={"unknown_tags": "accept"},
    )


def drained_and_online(gw: Any, charger_id: str) -> bool:
    """Queue empty and the link relaying live again (until then live CALLs queue behind)."""
    session = gw.hub.sessions.get(charger_id) if gw.hub is not None else None
    return session is not None and session.backlog == 0 and session.state is LinkState.ONLINE


def transaction_ids_seen(cloud: FakeCloud, charger_id: str) -> list[int]:
    return [f[3]["transactionId"] for f in cloud.calls(charger_id) if "transactionId" in f[3]]


async def test_offline_transaction_replayed_in_order_with_cloud_id(
    tmp_path: Any, cloud: FakeCloud
) -> None:
    async with (
        running_gateway(settings_for(tmp_path, cloud)) as gw,
        charger(gw.charger_port, "CP") as cp,
    ):
        await cp.call("Heartbeat", {})
        await cloud.stop()
        start = await cp.call("StartTransaction", start_tx())
        local_tx = start[2]["transactionId"]
        assert is_local(local_tx) and local_tx >= LOCAL_TX_MIN
        assert start[2]["idTagInfo"]["status"] == "Accepted"
        assert await cp.call("MeterValues", meter(local_tx, 500)) == [3, "m3", {}]
        stop = await cp.call("StopTransaction", stop_tx(local_tx))
        assert stop[0] == 3 and stop[2]["idTagInfo"]["status"] == "Accepted"
        assert gw.hub is not None and gw.hub.sessions["CP"].backlog == 3

        await cloud.restart()
        await wait_for(lambda: len(cloud.calls("CP")) >= 3, timeout=10)
        replayed = cloud.calls("CP")
        assert [f[2] for f in replayed] == ["StartTransaction", "MeterValues", "StopTransaction"]
        assert [f[1] for f in replayed] == ["m2", "m3", "m4"]  # the charger's own message ids
        assert replayed[0][3] == start_tx()
        ids = transaction_ids_seen(cloud, "CP")
        assert len(set(ids)) == 1 and not any(is_local(i) for i in ids)
        cloud_tx = ids[0]
        assert replayed[1][3] == meter(cloud_tx, 500)
        assert replayed[2][3] == stop_tx(cloud_tx)
        await wait_for(lambda: drained_and_online(gw, "CP"))
        # Back online: live traffic relays again.
        await cp.call("Heartbeat", {})
        assert cloud.calls("CP")[-1][2] == "Heartbeat"


async def test_refused_message_dead_lettered_and_visible(tmp_path: Any, cloud: FakeCloud) -> None:
    def responder(cid: str, action: str, payload: dict[str, Any]) -> Any:
        if action == "StatusNotification" and payload["connectorId"] == 7:
            return ("error", "PropertyConstraintViolation")
        return {"currentTime": T0} if action == "Heartbeat" else {}

    cloud.responder = responder
    async with (
        running_gateway(settings_for(tmp_path, cloud)) as gw,
        charger(gw.charger_port, "CP") as cp,
    ):
        await cp.call("Heartbeat", {})
        await cloud.stop()
        for connector in (7, 1):
            await cp.call(
                "StatusNotification",
                {"connectorId": connector, "errorCode": "NoError", "status": "Available"},
            )
        await cloud.restart()
        await wait_for(lambda: len(cloud.calls("CP", "StatusNotification")) == 2, timeout=10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as client:
            await wait_for(lambda: drained_and_online(gw, "CP"))
            dead = (await client.get("/api/outbox/dead")).json()["data"]
            health = (await client.get("/health")).json()
            metrics = (await client.get("/metrics")).text
        assert [d["error"].split(":")[0] for d in dead] == ["PropertyConstraintViolation"]
        assert health["outbox"]["deadLetters"] == 1 and health["status"] == "degraded"
        assert "flipturn_gateway_dead_lettered_total 1.0" in metrics
