"""OCPP 2.0.1 and 2.1 at the pair tier: offline answers, ``offline: true`` on the TransactionEvents
the gateway answered (OCPP 2.0.1 E02/E04: the CSMS must know the charger's answer came from
offline operation), 2.1 SEND and CALLRESULTERROR frames, and the ordered replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.pair.harness import running
from tests.pair.test_store_forward import back, drained, outage

NOW = "2026-12-01T10:00:00.000Z"
BOOT = {"chargingStation": {"model": "M21", "vendorName": "Flipturn"}, "reason": "PowerUp"}
TOKEN = {"idToken": "04A2B3C4", "type": "ISO14443"}
STREAM = {"id": 123, "pending": 0, "basetime": NOW, "data": [{"t": 0, "v": "230.4"}]}


def event(kind: str, seq: int, **extra: Any) -> dict[str, Any]:
    return {
        "eventType": kind,
        "seqNo": seq,
        "timestamp": NOW,
        "transactionInfo": {"transactionId": "tx-21"},
        "triggerReason": "Authorized" if kind == "Started" else "MeterValuePeriodic",
        "evse": {"id": 1, "connectorId": 1},
        **extra,
    }


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_transaction_events_answered_offline_are_replayed_in_order_with_offline_true(
    tmp_path: Path, version: Any
) -> None:
    async with running(tmp_path) as pair:
        ev = await pair.connect("EV", version)
        live = await pair.call(ev, "TransactionEvent", event("Started", 0, idToken=TOKEN))
        assert live[2] == {"idTokenInfo": {"status": "Accepted"}}
        await outage(pair)
        assert (await pair.call(ev, "TransactionEvent", event("Updated", 1)))[2] == {}
        assert (await pair.call(ev, "TransactionEvent", event("Ended", 2)))[2] == {}
        assert [r[2]["seqNo"] for r in await pair.outbox("EV")] == [1, 2]
        await back(pair)
        sent = pair.cloud.calls("EV", "TransactionEvent")
        assert [f[3]["seqNo"] for f in sent] == [0, 1, 2]
        # Relayed live: the charger's payload unchanged; answered by the gateway: offline true.
        assert sent[0][3] == event("Started", 0, idToken=TOKEN)
        assert sent[1][3] == {**event("Updated", 1), "offline": True}
        assert sent[2][3] == {**event("Ended", 2), "offline": True}
        assert drained(pair, "EV")


async def test_a_transaction_event_the_cloud_does_not_answer_in_time_is_replayed_offline(
    tmp_path: Path,
) -> None:
    silent = {"on": True}

    def responder(cid: str, action: str, payload: dict[str, Any]) -> Any:
        if silent["on"] and action == "TransactionEvent":
            return None
        return pair.cloud.default(cid, action, payload)

    async with running(tmp_path) as pair:
        pair.cloud.responder = responder
        ev = await pair.connect("EV", "2.0.1")
        mid = ev.send("TransactionEvent", event("Started", 0, idToken=TOKEN))
        await pair.advance(10.3)  # upstream.call_timeout_s
        assert ev.answers[mid] == [3, mid, {"idTokenInfo": {"status": "Accepted"}}]
        silent["on"] = False
        await pair.advance(11)
        sent = pair.cloud.calls("EV", "TransactionEvent")
        assert [f[1] for f in sent] == [mid] * len(sent) and len(sent) >= 2
        assert "offline" not in sent[0][3]  # the live attempt: the charger's payload
        assert sent[-1][3] == {**event("Started", 0, idToken=TOKEN), "offline": True}
        assert await pair.outbox("EV") == [] and drained(pair, "EV")


async def test_2_1_offline_send_frames_callresulterror_and_replay(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        pair.cloud.up = False  # the cloud is down when the charger comes
        cs = await pair.connect("CS", "2.1")
        assert (await pair.call(cs, "BootNotification", BOOT, mid="b-1"))[2]["status"] == (
            "Accepted"
        )
        auth = await pair.call(cs, "Authorize", {"idToken": TOKEN}, mid="a-1")
        assert auth[2]["idTokenInfo"]["status"] == "Accepted"
        started = await pair.call(
            cs, "TransactionEvent", event("Started", 0, idToken=TOKEN), mid="t-0"
        )
        assert started[2]["idTokenInfo"]["status"] == "Accepted"
        cs.send_raw(json.dumps([6, "s-1", "NotifyPeriodicEventStream", STREAM]))  # a SEND
        await pair.call(cs, "TransactionEvent", event("Updated", 1), mid="t-1")
        settlement = {
            "pspRef": "psp-9",
            "status": "Settled",
            "settlementAmount": 12.5,
            "settlementTime": NOW,
            "transactionId": "tx-21",
        }
        assert (await pair.call(cs, "NotifySettlement", settlement, mid="n-1"))[0] == 3
        # A 2.1 CALL only the CSMS can answer: NotSupported, not stored.
        stream = {"constantStreamData": {"id": 1, "variableMonitoringId": 7, "params": {}}}
        refused = await pair.call(cs, "OpenPeriodicEventStream", stream, mid="o-1")
        assert refused[:3] == [4, "o-1", "NotSupported"]
        # §4.1.4: a retry may reuse its message id; it is answered like the first time.
        first = await pair.call(cs, "TransactionEvent", event("Ended", 2), mid="t-2")
        del cs.answers["t-2"]
        assert await pair.call(cs, "TransactionEvent", event("Ended", 2), mid="t-2") == first
        assert "s-1" not in cs.answers  # a SEND gets no answer, not even offline
        assert pair.hub.stats.sends == {"from_charger dropped": 1}
        # The refused CALLRESULT of a locally answered CALL is not the cloud's business (§6.4).
        cs.send_raw('[5, "b-1", "PropertyConstraintViolation", "interval", {}]')
        await pair.settle()
        assert pair.hub.stats.errors["local_answer_refused"] == 1

        await back(pair)
        replayed = pair.cloud.calls("CS")
        assert [f[1] for f in replayed] == ["b-1", "t-0", "t-1", "n-1", "t-2"]
        assert [f for f in pair.cloud.frames("CS") if f[0] != 2] == []  # no 5 or 6 frames
        assert replayed[0][3] == BOOT
        assert replayed[1][3] == {**event("Started", 0, idToken=TOKEN), "offline": True}
        assert replayed[3][3] == settlement
        assert replayed[4][3] == {**event("Ended", 2), "offline": True}
        assert drained(pair, "CS")


async def test_2_1_message_types_relayed_unchanged_both_ways(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        cs = await pair.connect("CS", "2.1")
        assert pair.cloud.opened[0][:2] == ("CS", "2.1")  # the same version upstream
        cs.send_raw(json.dumps([6, "s-1", "NotifyPeriodicEventStream", STREAM]))
        await pair.settle()
        assert pair.cloud.frames("CS") == [[6, "s-1", "NotifyPeriodicEventStream", STREAM]]
        # The cloud's CALL refused by the charger with a CALLRESULTERROR reaches the cloud.
        cs.answers_to["GetVariables"] = {"getVariableResult": []}
        call = pair.cloud.call("CS", "GetVariables", {"getVariableData": []})
        await pair.settle()
        assert pair.cloud.answer_to("CS", call) == [3, call, {"getVariableResult": []}]
        link = pair.cloud.links["CS"]
        link.far.send(json.dumps([5, call, "FormatViolation", "late", {}]))
        await pair.settle()
        assert [f for f in cs.received if f[0] == 5] == [[5, call, "FormatViolation", "late", {}]]


async def test_a_2_0_1_transaction_answered_offline_throughout_is_replayed_in_order(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as pair:
        ev = await pair.connect("EV", "2.0.1")
        await pair.call(ev, "Heartbeat", {})
        await outage(pair)
        started = await pair.call(ev, "TransactionEvent", event("Started", 0, idToken=TOKEN))
        assert started[2] == {"idTokenInfo": {"status": "Accepted"}}
        updated = await pair.call(ev, "TransactionEvent", event("Updated", 1))
        assert updated == [3, updated[1], {}]
        ended = await pair.call(ev, "TransactionEvent", event("Ended", 2))
        assert ended == [3, ended[1], {}]
        await back(pair)
        events = pair.cloud.calls("EV", "TransactionEvent")
        assert [e[1] for e in events] == [started[1], updated[1], ended[1]]
        assert [e[3]["seqNo"] for e in events] == [0, 1, 2]
        assert [e[3]["eventType"] for e in events] == ["Started", "Updated", "Ended"]
        assert all(e[3]["offline"] is True for e in events)
        assert drained(pair, "EV")
