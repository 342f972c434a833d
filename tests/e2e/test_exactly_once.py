"""Exactly once: a charger's resend is answered as the first time and reaches the cloud once;
what the cloud receives on replay is the charger's payload (parsed JSON) except the documented
rewrites; a replayed answer that breaks the schema is not a delivery."""

from __future__ import annotations

import copy
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import Settings
from gateway.core.link import LinkState
from gateway.core.txmap import is_local
from gateway.ocpp.validation import validate_call
from gateway.store.engine import RESEND_WINDOW_S, Store, call_digest
from tests.procs import GatewayProcess, base_config
from tests.support import (
    FakeCloud,
    charger,
    make_settings,
    running_gateway,
    wait_for,
)

T0 = "2026-11-21T12:00:00Z"
START = {"connectorId": 1, "idTag": "TAG-1", "meterStart": 100, "timestamp": T0}


def config(tmp_path: Path, cloud: FakeCloud) -> Path:
    return base_config(
        tmp_path,
        f'[upstream]\nurl = "{cloud.url}"\ncall_timeout_s = 1\n[offline]\nunknown_tags = "accept"\n',
    )


async def down_cloud() -> FakeCloud:
    cloud = await FakeCloud().start()
    await cloud.stop()  # keeps its port: the gateway is configured with it
    return cloud


async def drained(gateway: GatewayProcess, charger_id: str) -> bool:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gateway.api_port}") as client:
        rows = (await client.get("/api/chargers")).json()["data"]
    return any(
        r["id"] == charger_id and r["outboxPending"] == 0 and r["linkState"] == "online"
        for r in rows
    )


async def wait_drained(gateway: GatewayProcess, charger_id: str, timeout: float = 15) -> None:
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while not await drained(gateway, charger_id):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("backlog not drained in time")
        await asyncio.sleep(0.05)


def reordered(payload: dict[str, Any]) -> str:
    """The same payload as other JSON text: keys reversed, with spaces."""
    return json.dumps(dict(reversed(list(payload.items()))), indent=1)


async def test_v16_start_transaction_resent_after_kill9_gets_the_same_transaction_id(
    tmp_path: Path,
) -> None:
    cloud = await down_cloud()
    gateway = await GatewayProcess(config(tmp_path, cloud)).start()
    async with charger(gateway.charger_port, "CP") as cp:
        first = await cp.call("StartTransaction", START, message_id="start-1")
        assert first[0] == 3 and is_local(first[2]["transactionId"])
    await gateway.kill9()  # the charger cannot know its answer was durable: it resends

    try:
        async with GatewayProcess(config(tmp_path, cloud)) as gateway:
            async with charger(gateway.charger_port, "CP") as cp:
                text = f'[2, "start-1", "StartTransaction", {reordered(START)}]'
                again = await cp.expect_raw_answer(text, "start-1")
                assert again == first  # the same transactionId, the same idTagInfo
                with sqlite3.connect(tmp_path / "gw.db") as db:
                    assert db.execute("SELECT COUNT(*) FROM outbox").fetchone() == (1,)

                await cloud.restart()
                await wait_drained(gateway, "CP")
                # Resent once more after it was delivered: answered, not sent to the cloud.
                assert await cp.call("StartTransaction", START, message_id="start-1") == first
                await cp.call("Heartbeat", {})  # relayed live: the cloud has seen what it will
                await wait_for(lambda: len(cloud.calls("CP", "Heartbeat")) == 1)
            assert [f[1] for f in cloud.calls("CP", "StartTransaction")] == ["start-1"]
            assert cloud.calls("CP", "StartTransaction")[0][3] == START
    finally:
        await cloud.stop()


async def test_v201_transaction_event_resent_after_kill9_is_stored_and_sent_once(
    tmp_path: Path,
) -> None:
    event = {
        "eventType": "Started",
        "timestamp": T0,
        "triggerReason": "Authorized",
        "seqNo": 0,
        "transactionInfo": {"transactionId": "tx-1"},
        "idToken": {"idToken": "ABC", "type": "ISO14443"},
    }
    cloud = await down_cloud()
    gateway = await GatewayProcess(config(tmp_path, cloud)).start()
    async with charger(gateway.charger_port, "EV", "2.0.1") as cp:
        first = await cp.call("TransactionEvent", event, message_id="te-1")
        assert first == [3, "te-1", {"idTokenInfo": {"status": "Accepted"}}]
    await gateway.kill9()
    try:
        async with GatewayProcess(config(tmp_path, cloud)) as gateway:
            async with charger(gateway.charger_port, "EV", "2.0.1") as cp:
                text = f'[2, "te-1", "TransactionEvent", {reordered(event)}]'
                assert await cp.expect_raw_answer(text, "te-1") == first
                # Same id, different payload: a new message, stored and answered on its own.
                other = {
                    **event,
                    "seqNo": 1,
                    "eventType": "Updated",
                    "triggerReason": "MeterValuePeriodic",
                }
                del other["idToken"]
                assert await cp.call("TransactionEvent", other, message_id="te-1") == [
                    3,
                    "te-1",
                    {},
                ]
                await cloud.restart()
                await wait_drained(gateway, "EV")
                assert await cp.call("TransactionEvent", event, message_id="te-1") == first
                await cp.call("Heartbeat", {})
                await wait_for(lambda: len(cloud.calls("EV", "Heartbeat")) == 1)
            sent = cloud.calls("EV", "TransactionEvent")
            assert [f[3]["seqNo"] for f in sent] == [0, 1]
    finally:
        await cloud.stop()


# --- fidelity ------------------------------------------------------------------------------------

V16_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}),
    ("StartTransaction", START),
    (
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": 0,  # replaced by the local id below
            "meterValue": [{"timestamp": T0, "sampledValue": [{"value": "150"}]}],
        },
    ),
    ("StopTransaction", {"transactionId": 0, "meterStop": 900, "timestamp": T0}),
]

V201_CALLS: list[tuple[str, dict[str, Any]]] = [
    (
        "StatusNotification",
        {"timestamp": T0, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1},
    ),
    (
        "TransactionEvent",
        {
            "eventType": "Started",
            "timestamp": T0,
            "triggerReason": "CablePluggedIn",
            "seqNo": 0,
            "transactionInfo": {"transactionId": "tx-9"},
        },
    ),
    (
        "TransactionEvent",
        {
            "eventType": "Updated",
            "timestamp": T0,
            "triggerReason": "MeterValuePeriodic",
            "seqNo": 1,
            "transactionInfo": {"transactionId": "tx-9"},
            "meterValue": [
                {
                    "timestamp": T0,
                    "sampledValue": [{"value": 1234.5, "unitOfMeasure": {"unit": "Wh"}}],
                }
            ],
        },
    ),
    (
        "MeterValues",
        {
            "evseId": 1,
            "meterValue": [
                {"timestamp": T0, "sampledValue": [{"value": 7.0, "unitOfMeasure": {}}]}
            ],
        },
    ),
]


def accepting(tmp_path: Path, cloud: FakeCloud) -> Settings:
    """An in-process gateway relaying to ``cloud`` that accepts unknown tags while it is down."""
    return make_settings(
        tmp_path,
        upstream={"url": cloud.url, "call_timeout_s": 1.0},
        offline={"unknown_tags": "accept"},
    )


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_stored_and_replayed_payloads_are_the_chargers(
    tmp_path: Path, cloud: FakeCloud, version: str
) -> None:
    settings = accepting(tmp_path, cloud)
    calls = copy.deepcopy(V16_CALLS if version == "1.6" else V201_CALLS)
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP", version) as cp:
        await cp.call("Heartbeat", {})
        await cloud.stop()
        local_tx = None
        for action, payload in calls:
            if "transactionId" in payload and local_tx is not None and version == "1.6":
                payload["transactionId"] = local_tx
            answer = await cp.call(action, payload)
            assert answer[0] == 3
            if action == "StartTransaction":
                local_tx = answer[2]["transactionId"]
        assert gw.store is not None
        stored = [json.loads(r.payload) for r in await gw.store.pending("CP")]
        assert stored == [payload for _, payload in calls]  # byte for byte what was sent

        await cloud.restart()
        await wait_for(lambda: len(cloud.calls("CP")) >= len(calls), timeout=10)
        session = gw.hub.sessions["CP"]  # type: ignore[union-attr]
        await wait_for(lambda: session.state is LinkState.ONLINE and session.backlog == 0)
        received = [f[3] for f in cloud.calls("CP")][-len(calls) :]
        expected = []
        for action, payload in calls:
            if (
                version == "1.6"
                and local_tx is not None
                and payload.get("transactionId") == local_tx
            ):
                payload = {**payload, "transactionId": session.txids.local_to_cloud[local_tx]}
            if action == "TransactionEvent":
                payload = {**payload, "offline": True}  # answered by the gateway itself
            expected.append(payload)
        assert received == expected


def test_validation_never_adds_defaults() -> None:
    for action, payload in V201_CALLS:
        before = copy.deepcopy(payload)
        validate_call("2.0.1", action, payload, "m1")
        assert payload == before
    for action, payload in V16_CALLS:
        before = copy.deepcopy(payload)
        validate_call("1.6", action, payload, "m1")
        assert payload == before


# --- replayed answers that break the schema ------------------------------------------------------


# --- the resend keys in the store ----------------------------------------------------------------


async def test_resend_keys_are_kept_24h_after_delivery_and_pruned(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "g.db")
    try:
        payload = {"connectorId": 1, "status": "Available", "errorCode": "NoError"}
        key = call_digest("StatusNotification", payload)
        assert key == call_digest("StatusNotification", dict(reversed(list(payload.items()))))
        assert key != call_digest("StatusNotification", {**payload, "status": "Charging"})
        assert key != call_digest("MeterValues", payload)
        now = time.time()
        await store.enqueue(
            "CP",
            "1.6",
            "m1",
            "StatusNotification",
            json.dumps(payload),
            now,
            digest=key,
            answer="{}",
        )
        assert await store.earlier_answer("CP", "m1", key, now=now) == "{}"
        assert await store.earlier_answer("CP", "m2", key, now=now) is None
        assert await store.earlier_answer("OTHER", "m1", key, now=now) is None
        (row,) = await store.pending("CP")
        await store.delivered(row.seq)
        delivered_at = time.time()
        assert await store.pending("CP") == []
        assert await store.earlier_answer("CP", "m1", key, now=now + RESEND_WINDOW_S - 1) == "{}"
        later = delivered_at + RESEND_WINDOW_S + 1
        assert await store.earlier_answer("CP", "m1", key, now=later) is None
        assert await store.recent_message_ids("CP", 10) == ["m1"]
        assert await store.prune_answered(now + 60) == 0  # still within the window
        assert await store.prune_answered(later) == 1
        assert await store.recent_message_ids("CP", 10) == []
    finally:
        await store.close()
