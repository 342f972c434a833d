"""Exactly once at the pair tier: resends across a restart of the gateway over the same store
file, replayed answers that break the schema, and dead letters requeued or dropped through the
store's operations (the hub's, and another process's as ``outbox requeue`` does it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.core.txmap import is_local
from tests.pair.harness import Pair, Store, open_pair, running
from tests.pair.test_store_forward import back, drained, outage, start_tx, stop_tx

T0 = "2026-12-01T10:00:00Z"
EVENT = {
    "eventType": "Started",
    "timestamp": T0,
    "triggerReason": "Authorized",
    "seqNo": 0,
    "transactionInfo": {"transactionId": "tx-1"},
    "idToken": {"idToken": "ABC", "type": "ISO14443"},
}


def reordered(payload: dict[str, Any]) -> str:
    """The same payload as other JSON text: keys reversed, with spaces."""
    return json.dumps(dict(reversed(list(payload.items()))), indent=1)


async def rows_in_outbox(pair: Pair) -> int:
    row = await pair.store.fetchone("SELECT COUNT(*) FROM outbox")
    assert row is not None
    return int(row[0])


async def test_a_start_resent_after_a_restart_gets_the_same_answer_and_is_stored_once(
    tmp_path: Path,
) -> None:
    pair = await open_pair(tmp_path)
    try:
        pair.cloud.up = False
        cp = await pair.connect("CP")
        first = await pair.call(cp, "StartTransaction", start_tx(), mid="start-1")
        assert is_local(first[2]["transactionId"])
        pair = await pair.restart()  # the answer may not have reached the charger: it resends
        cp = await pair.connect("CP")
        del cp.answers["start-1"]
        cp.send_raw(f'[2, "start-1", "StartTransaction", {reordered(start_tx())}]')
        await pair.settle()
        assert cp.answers["start-1"] == first  # the same transactionId and idTagInfo
        assert await rows_in_outbox(pair) == 1

        await back(pair)
        assert drained(pair)
        # Resent once more after it was delivered: answered as the first time, not relayed.
        del cp.answers["start-1"]
        assert await pair.call(cp, "StartTransaction", start_tx(), mid="start-1") == first
        await pair.call(cp, "Heartbeat", {})
        assert pair.cloud.calls("CP") == [
            [2, "start-1", "StartTransaction", start_tx()],
            [2, "CP-1", "Heartbeat", {}],
        ]
        assert pair.hub.stats.errors["charger_resend"] == 2
    finally:
        await pair.close()


async def test_a_2_0_1_transaction_event_resent_after_a_restart_is_stored_and_sent_once(
    tmp_path: Path,
) -> None:
    pair = await open_pair(tmp_path)
    try:
        pair.cloud.up = False
        ev = await pair.connect("EV", "2.0.1")
        first = await pair.call(ev, "TransactionEvent", EVENT, mid="te-1")
        assert first == [3, "te-1", {"idTokenInfo": {"status": "Accepted"}}]
        pair = await pair.restart()
        ev = await pair.connect("EV", "2.0.1")
        del ev.answers["te-1"]
        ev.send_raw(f'[2, "te-1", "TransactionEvent", {reordered(EVENT)}]')
        await pair.settle()
        assert ev.answers["te-1"] == first
        # The same id with another payload is a new message: stored and answered on its own.
        other = {**EVENT, "seqNo": 1, "eventType": "Updated", "triggerReason": "MeterValuePeriodic"}
        del other["idToken"]
        assert await pair.call(ev, "TransactionEvent", other, mid="te-1") == [3, "te-1", {}]
        assert [(r[0], r[2]["seqNo"]) for r in await pair.outbox("EV")] == [
            ("te-1", 0),
            ("te-1", 1),
        ]
        await back(pair)
        assert drained(pair, "EV")
        assert await pair.call(ev, "TransactionEvent", EVENT, mid="te-1") == first
        sent = pair.cloud.calls("EV", "TransactionEvent")
        assert [(f[1], f[3]["seqNo"]) for f in sent] == [("te-1", 0), ("te-1", 1)]
        assert all(f[3]["offline"] is True for f in sent)
    finally:
        await pair.close()


async def test_replayed_payloads_are_the_chargers_as_parsed_json(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        await outage(pair)
        status = {"status": "Charging", "errorCode": "NoError", "connectorId": 1, "info": "ü"}
        cp.send_raw('[2,"s-1","StatusNotification",' + json.dumps(status, indent=3) + "]")
        await pair.settle()
        await back(pair)
        assert pair.cloud.calls("CP") == [[2, "s-1", "StatusNotification", status]]


async def test_an_invalid_start_answer_is_retried_not_delivered(tmp_path: Path) -> None:
    answers = iter([{"transactionId": "not-a-number", "idTagInfo": {"status": "Accepted"}}])

    def responder(cid: str, action: str, payload: dict[str, Any]) -> Any:
        if action == "StartTransaction":
            return next(answers, {"transactionId": 4711, "idTagInfo": {"status": "Accepted"}})
        return pair.cloud.default(cid, action, payload)

    async with running(tmp_path) as pair:
        pair.cloud.responder = responder
        cp = await pair.connect("CP")
        await outage(pair)
        local = (await pair.call(cp, "StartTransaction", start_tx()))[2]["transactionId"]
        await pair.call(cp, "StopTransaction", stop_tx(local))
        pair.cloud.up = True
        await pair.advance(1)
        assert pair.cloud.actions("CP") == ["StartTransaction"]  # not a delivery: no Stop yet
        assert [r.attempts for r in await pair.store.pending("CP")] == [1, 0]
        await pair.advance(10)
        assert pair.cloud.actions("CP") == [
            "StartTransaction",
            "StartTransaction",
            "StopTransaction",
        ]
        assert pair.cloud.calls("CP")[-1][3] == stop_tx(4711)
        assert await pair.store.dead_letter_count() == 0


async def test_an_invalid_answer_at_the_last_attempt_is_dead_lettered_with_the_reason(
    tmp_path: Path,
) -> None:
    def responder(cid: str, action: str, payload: dict[str, Any]) -> Any:
        if action == "StartTransaction":
            return {"transactionId": "not-a-number", "idTagInfo": {"status": "Accepted"}}
        return pair.cloud.default(cid, action, payload)

    async with running(tmp_path) as pair:
        pair.cloud.responder = responder
        cp = await pair.connect("CP")
        await outage(pair)
        local = (await pair.call(cp, "StartTransaction", start_tx()))[2]["transactionId"]
        await pair.call(cp, "StopTransaction", stop_tx(local))
        await pair.store.write(
            [("UPDATE outbox SET attempts = 7 WHERE action = 'StartTransaction'", ())]
        )
        await back(pair)
        dead = {d["action"]: d for d in await pair.store.dead_letters()}
        assert "breaks the schema" in dead["StartTransaction"]["error_description"]
        assert "transactionId" in dead["StartTransaction"]["error_description"]
        assert dead["StopTransaction"]["error_code"] == "UnmappedTransaction"
        assert pair.cloud.actions("CP") == ["StartTransaction"]  # nothing with a local id
        assert await pair.outbox("CP") == [] and pair.hub.dead_letters == 2


def refusing_starts(pair: Pair, refusing: dict[str, bool]) -> Any:
    def responder(cid: str, action: str, payload: dict[str, Any]) -> Any:
        if action == "StartTransaction":
            if refusing["on"]:
                return ("error", "OccurrenceConstraintViolation")
            return {"transactionId": 555, "idTagInfo": {"status": "Accepted"}}
        return pair.cloud.default(cid, action, payload)

    return responder


async def dead_start_and_stop(pair: Pair) -> int:
    """A Start the cloud refuses for good takes its Stop with it; the local id."""
    cp = await pair.connect("CP")
    await outage(pair)
    local = (await pair.call(cp, "StartTransaction", start_tx()))[2]["transactionId"]
    await pair.call(cp, "StopTransaction", stop_tx(local))
    await back(pair)
    dead = await pair.store.dead_letter_rows()
    assert [(d.action, d.error_code) for d in dead] == [
        ("StartTransaction", "OccurrenceConstraintViolation"),
        ("StopTransaction", "UnmappedTransaction"),
    ]
    assert pair.cloud.actions("CP") == ["StartTransaction"]
    return int(local)


async def test_requeued_dead_letters_replay_in_order_and_the_stop_gets_the_cloud_id(
    tmp_path: Path,
) -> None:
    refusing = {"on": True}
    async with running(tmp_path) as pair:
        pair.cloud.responder = refusing_starts(pair, refusing)
        local = await dead_start_and_stop(pair)
        refusing["on"] = False
        for row in await pair.store.dead_letter_rows():
            assert await pair.hub.requeue_dead_letter(row.seq)
        assert not await pair.hub.requeue_dead_letter(999)  # no such id
        await pair.advance(2)
        assert pair.cloud.calls("CP")[1:] == [
            [2, "CP-1", "StartTransaction", start_tx()],
            [2, "CP-2", "StopTransaction", stop_tx(555)],
        ]
        assert pair.session("CP").txids.local_to_cloud == {local: 555}
        assert await pair.store.dead_letter_count() == 0 and pair.hub.dead_letters == 0
        assert await pair.outbox("CP") == []


async def test_dead_letters_requeued_by_another_process_reach_the_running_gateway(
    tmp_path: Path,
) -> None:
    refusing = {"on": True}
    async with running(tmp_path) as pair:
        pair.cloud.responder = refusing_starts(pair, refusing)
        await dead_start_and_stop(pair)
        refusing["on"] = False
        shell = await Store.open(pair.settings.store.path)  # flipturn-gateway outbox requeue
        try:
            for row in await shell.dead_letter_rows():
                assert await shell.requeue_dead_letter(row.seq) is not None
        finally:
            await shell.close()
        assert pair.cloud.actions("CP") == ["StartTransaction"]
        await pair.advance(1.5)  # the hub asks the store for another process's commit each second
        assert pair.cloud.actions("CP") == ["StartTransaction"] * 2 + ["StopTransaction"]
        assert pair.cloud.calls("CP")[-1][3] == stop_tx(555)
        assert pair.hub.dead_letters == 0 and await pair.outbox("CP") == []


async def test_a_dropped_dead_letter_is_gone_for_good(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        pair.cloud.responder = refusing_starts(pair, {"on": True})
        await dead_start_and_stop(pair)
        first, second = await pair.store.dead_letter_rows()
        assert await pair.hub.drop_dead_letter(first.seq)
        assert not await pair.hub.drop_dead_letter(first.seq)
        assert [d.seq for d in await pair.store.dead_letter_rows()] == [second.seq]
        assert pair.hub.dead_letters == 1
        await pair.advance(5)
        assert pair.cloud.actions("CP") == ["StartTransaction"]  # nothing replayed
