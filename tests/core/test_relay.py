"""The relay core on strings and a fake clock: every timer behaviour without sleeping."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from typing import Any

import pytest

from gateway.core import offline
from gateway.core.events import (
    Answered,
    AnswerLocally,
    BootDelivered,
    ChargerAnswered,
    ChargerCallFailed,
    CheckResend,
    CloseLink,
    CloudCallSeen,
    DeadLetter,
    Delivered,
    Drained,
    ReadBacklog,
    RetryLater,
    SaveBoot,
)
from gateway.core.limits import LogLimiter
from gateway.core.link import LinkState
from gateway.core.relay import ChargerRelay, RelaySettings
from gateway.core.txmap import LOCAL_TX_MIN, TxIdMap
from gateway.errors import ChargerNotConnected, ChargerQueueFull
from gateway.ocpp.frames import Call, CallError, CallResult, OcppVersion
from tests.rows import Row

T0 = 1000.0  # the fake monotonic clock starts here
WALL = 1_800_000_000.0  # and the wall clock of the rows here


def relay(version: OcppVersion = "1.6", **settings: Any) -> ChargerRelay:
    ids = itertools.count(1)
    return ChargerRelay(
        "CP1", version, settings=RelaySettings(**settings), new_id=lambda: f"{next(ids):04d}"
    )


def online(version: OcppVersion = "1.6", **settings: Any) -> ChargerRelay:
    r = relay(version, **settings)
    r.charger_attached(version, T0)
    r.link_connecting(T0)
    r.link_connected(T0)
    assert r.state is LinkState.ONLINE
    return r


def call(mid: str, action: str, payload: dict[str, Any]) -> str:
    return json.dumps([2, mid, action, payload])


def result(mid: str, payload: dict[str, Any]) -> str:
    return json.dumps([3, mid, payload])


def error(mid: str, code: str, description: str = "") -> str:
    return json.dumps([4, mid, code, description, {}])


def parsed(texts: list[str]) -> list[Any]:
    return [json.loads(t) for t in texts]


HEARTBEAT = call("h1", "Heartbeat", {})
START = {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": "2026-12-01T10:00:00Z"}


def stop_payload(tx: int) -> dict[str, Any]:
    return {"meterStop": 10, "timestamp": "2026-12-01T11:00:00Z", "transactionId": tx}


METER = {
    "connectorId": 1,
    "meterValue": [{"timestamp": "2026-12-01T10:30:00Z", "sampledValue": [{"value": "5"}]}],
}
TX_EVENT = {
    "eventType": "Started",
    "timestamp": "2026-12-01T10:00:00Z",
    "triggerReason": "Authorized",
    "seqNo": 0,
    "transactionInfo": {"transactionId": "T-1"},
}


# --- online relay ---------------------------------------------------------------------------------


def test_online_call_and_answer_pass_through_unchanged() -> None:
    r = online()
    r.receive_charger(HEARTBEAT, T0)
    assert r.data_to_cloud() == [HEARTBEAT]
    answer = result("h1", {"currentTime": "2026-12-01T10:00:00Z"})
    r.receive_cloud(answer, T0 + 0.1)
    assert r.data_to_charger() == [answer]
    assert r.events() == []
    assert r.next_deadline() is None and not r.has_deadlines


def test_forwarded_boot_is_saved_as_delivered() -> None:
    r = online()
    r.receive_charger(call("b1", "BootNotification", {"chargePointVendor": "V"}), T0)
    assert [type(e) for e in r.events()] == [SaveBoot]


def test_bad_frame_gets_a_callerror_and_is_not_relayed() -> None:
    r = online()
    r.receive_charger('[2, "x1", "Heartbeat"', T0)
    [answer] = parsed(r.data_to_charger())
    assert answer[:3] == [4, "x1", "FormationViolation"] or answer[0] == 4
    assert r.data_to_cloud() == []
    assert r.errors["bad_frame_from_charger"] == 1


# --- the cloud's call timeout ---------------------------------------------------------------------


def test_cloud_call_timeout_answers_locally_and_drops_the_link() -> None:
    r = online(cloud_call_timeout_s=5.0)
    r.receive_charger(HEARTBEAT, T0)
    r.data_to_cloud()
    assert r.next_deadline() == T0 + 5.0
    r.tick(T0 + 4.9)
    assert r.events() == [] and r.state is LinkState.ONLINE
    r.tick(T0 + 5.0)
    events = r.events()
    assert events[0] == CloseLink(1011, "call timeout")
    assert isinstance(events[1], AnswerLocally) and events[1].call.message_id == "h1"
    assert r.state.value == "offline"  # (a str: mypy narrowed the enum above)
    assert r.errors["cloud_call_timeout"] == 1
    r.answered_locally(events[1].call, {"currentTime": "t"}, T0 + 5.0, stored=False)
    assert parsed(r.data_to_charger()) == [[3, "h1", {"currentTime": "t"}]]
    # The cloud's late answer is not relayed: the charger has its answer.
    r.receive_cloud(result("h1", {"currentTime": "late"}), T0 + 6)
    assert r.data_to_charger() == []
    assert r.next_deadline() is None


def test_pending_calls_of_a_lost_link_are_answered_locally_in_order() -> None:
    r = online()
    r.receive_charger(call("a", "Heartbeat", {}), T0)
    r.receive_charger(call("b", "Heartbeat", {}), T0)
    r.link_lost(T0 + 1)
    [first] = r.events()
    assert isinstance(first, AnswerLocally) and first.call.message_id == "a"
    r.answered_locally(first.call, {"currentTime": "t"}, T0 + 1, stored=False)
    [second] = r.events()
    assert isinstance(second, AnswerLocally) and second.call.message_id == "b"


# --- the charger's inbox: order kept behind I/O -----------------------------------------------------


def test_frames_behind_a_local_answer_wait_for_it() -> None:
    r = relay()
    r.charger_attached("1.6", T0)
    r.receive_charger(call("s1", "StartTransaction", START), T0)
    [ev] = r.events()
    assert isinstance(ev, AnswerLocally) and ev.rule.stored
    r.receive_charger(call("m1", "MeterValues", METER), T0)
    assert r.events() == [] and r.inbox_size == 1
    r.answered_locally(
        ev.call,
        {"idTagInfo": {"status": "Accepted"}, "transactionId": LOCAL_TX_MIN},
        T0,
        stored=True,
        local_tx_id=LOCAL_TX_MIN,
    )
    [again] = r.events()
    assert isinstance(again, AnswerLocally) and again.call.message_id == "m1"
    assert [m[1] for m in parsed(r.data_to_charger())] == ["s1"]
    assert r.backlog == 1 and r.txids.unmapped == {LOCAL_TX_MIN}


def test_not_supported_and_invalid_calls_are_answered_without_the_driver() -> None:
    r = relay()
    r.charger_attached("1.6", T0)
    r.receive_charger(call("d1", "DataTransfer", {"vendorId": "x"}), T0)
    r.receive_charger(call("s1", "StartTransaction", {"connectorId": "one"}), T0)
    assert r.events() == []
    answers = parsed(r.data_to_charger())
    assert answers[0][:3] == [4, "d1", "NotSupported"]
    assert answers[1][0] == 4 and answers[1][1] == "s1"
    assert r.errors["schema_violation"] == 1


def test_store_failure_is_internal_error_and_the_next_frame_goes_on() -> None:
    r = relay()
    r.charger_attached("1.6", T0)
    r.receive_charger(call("s1", "StatusNotification", _status()), T0)
    r.receive_charger(HEARTBEAT, T0)
    [ev] = r.events()
    assert isinstance(ev, AnswerLocally)
    r.local_answer_failed(ev.call, T0)
    assert parsed(r.data_to_charger()) == [[4, "s1", "InternalError", "", {}]]
    [nxt] = r.events()
    assert isinstance(nxt, AnswerLocally) and nxt.call.message_id == "h1"
    assert r.backlog == 0


def _status() -> dict[str, Any]:
    return {"connectorId": 1, "errorCode": "NoError", "status": "Available"}


# --- a connecting link holds a CALL briefly -------------------------------------------------------


def test_call_waits_for_a_connecting_link_then_is_forwarded() -> None:
    r = relay()
    r.charger_attached("1.6", T0)
    r.link_connecting(T0)
    r.receive_charger(HEARTBEAT, T0)
    r.receive_charger(call("h2", "Heartbeat", {}), T0)
    assert r.data_to_cloud() == [] and r.events() == []
    assert r.next_deadline() == T0 + 1.5
    r.link_connected(T0 + 0.3)
    assert [m[1] for m in parsed(r.data_to_cloud())] == ["h1", "h2"]


def test_call_held_too_long_is_answered_locally() -> None:
    r = relay(connecting_hold_s=1.5)
    r.charger_attached("1.6", T0)
    r.link_connecting(T0)
    r.receive_charger(HEARTBEAT, T0)
    r.tick(T0 + 1.49)
    assert r.events() == []
    r.tick(T0 + 1.5)
    [ev] = r.events()
    assert isinstance(ev, AnswerLocally) and ev.call.message_id == "h1"


def test_link_waiting_for_its_turn_does_not_hold_calls() -> None:
    r = relay()
    r.charger_attached("1.6", T0)
    r.link_connecting(T0, turn_in_s=3.0)
    r.receive_charger(HEARTBEAT, T0)
    [ev] = r.events()
    assert isinstance(ev, AnswerLocally)


# --- the charger's slot and queue ------------------------------------------------------------------


def test_cloud_calls_take_the_charger_slot_one_at_a_time() -> None:
    r = online()
    first, second = call("c1", "Reset", {"type": "Soft"}), call("c2", "Reset", {"type": "Hard"})
    r.receive_cloud(first, T0)
    r.receive_cloud(second, T0)
    assert r.data_to_charger() == [first] and r.queued == 1
    r.receive_charger(result("c1", {"status": "Accepted"}), T0 + 1)
    assert r.data_to_cloud() == [result("c1", {"status": "Accepted"})]
    assert r.data_to_charger() == [second]


def test_charger_timeout_counts_from_receipt_not_from_queueing() -> None:
    r = online(charger_call_timeout_s=30.0)
    r.receive_cloud(call("c1", "Reset", {"type": "Soft"}), T0)
    mid = r.call_charger("GetConfiguration", {}, T0)
    r.data_to_charger()
    r.receive_charger(result("c1", {"status": "Accepted"}), T0 + 20)  # waited 20 s behind c1
    assert parsed(r.data_to_charger())[0][1] == mid
    assert parsed(r.data_to_cloud()) == [[3, "c1", {"status": "Accepted"}]]
    assert r.next_deadline() == T0 + 50
    r.tick(T0 + 49.9)
    assert r.events() == []
    r.tick(T0 + 50)
    assert r.events() == [ChargerCallFailed(mid, "GetConfiguration", "timeout")]
    assert r.errors["charger_call_timeout"] == 1
    # Nothing more arrives: no timer left, later ticks do nothing.
    assert r.next_deadline() is None and not r.has_deadlines
    r.tick(T0 + 500)
    assert r.events() == [] and r.data_to_charger() == [] and r.data_to_cloud() == []


def test_a_timed_out_cloud_call_frees_the_slot_for_the_next() -> None:
    r = online(charger_call_timeout_s=10.0)
    r.receive_cloud(call("c1", "Reset", {"type": "Soft"}), T0)
    r.receive_cloud(call("c2", "Reset", {"type": "Hard"}), T0)
    r.data_to_charger()
    r.tick(T0 + 10)
    assert r.events() == []  # a cloud CALL's timeout is the cloud's to notice
    assert parsed(r.data_to_charger())[0][1] == "c2"
    # The late answer to c1 still goes to the cloud unchanged.
    r.receive_charger(result("c1", {"status": "Accepted"}), T0 + 11)
    assert r.data_to_cloud() == [result("c1", {"status": "Accepted"})]


def test_gateway_call_answer_is_an_event_not_a_cloud_frame() -> None:
    r = online()
    mid = r.call_charger("GetConfiguration", {}, T0)
    r.receive_charger(result(mid, {"configurationKey": []}), T0 + 1)
    [ev] = r.events()
    assert isinstance(ev, ChargerAnswered) and ev.origin == "gateway"
    assert ev.answer == CallResult(mid, {"configurationKey": []})
    assert r.data_to_cloud() == []


def test_queue_bound_refuses_cloud_and_gateway_calls() -> None:
    r = online(max_queued_calls=2)
    for n in range(3):  # one in the slot, two queued
        r.receive_cloud(call(f"c{n}", "Reset", {"type": "Soft"}), T0)
    r.receive_cloud(call("c3", "Reset", {"type": "Soft"}), T0)
    assert parsed(r.data_to_cloud()) == [[4, "c3", "GenericError", "charger queue full", {}]]
    with pytest.raises(ChargerQueueFull):
        r.call_charger("GetConfiguration", {}, T0)
    assert r.errors["charger_queue_full"] == 2
    assert r.queued == 2


def test_cancelled_gateway_call_is_never_sent() -> None:
    r = online()
    r.receive_cloud(call("c1", "Reset", {"type": "Soft"}), T0)
    mid = r.call_charger("GetConfiguration", {}, T0)
    assert r.cancel_charger_call(mid)
    r.data_to_charger()
    r.receive_charger(result("c1", {"status": "Accepted"}), T0 + 1)
    assert r.data_to_charger() == []


def test_charger_gone_fails_its_gateway_calls_and_refuses_new_ones() -> None:
    r = online()
    mid = r.call_charger("GetConfiguration", {}, T0)
    r.charger_detached(T0 + 1)
    events = r.events()
    assert ChargerCallFailed(mid, "GetConfiguration", "not_connected") in events
    assert CloseLink(1000, "charger disconnected") in events
    with pytest.raises(ChargerNotConnected):
        r.call_charger("GetConfiguration", {}, T0 + 2)
    r.receive_cloud(call("c9", "Reset", {"type": "Soft"}), T0 + 2)
    assert parsed(r.data_to_cloud())[0][:3] == [4, "c9", "GenericError"]


def test_cloud_call_is_rewritten_to_the_local_transaction_id() -> None:
    r = online()
    r.txids.bind(LOCAL_TX_MIN, 77)
    r.receive_cloud(call("c1", "RemoteStopTransaction", {"transactionId": 77}), T0)
    assert parsed(r.data_to_charger()) == [
        [2, "c1", "RemoteStopTransaction", {"transactionId": LOCAL_TX_MIN}]
    ]


def test_observed_cloud_calls_are_shown() -> None:
    r = online(observed_cloud_calls=frozenset({"SendLocalList"}))
    r.receive_cloud(call("c1", "SendLocalList", {"listVersion": 1, "updateType": "Full"}), T0)
    [ev] = r.events()
    assert isinstance(ev, CloudCallSeen) and ev.call.message_id == "c1"


# --- replay ----------------------------------------------------------------------------------------


def replaying(rows: list[Row], version: OcppVersion = "1.6", **settings: Any) -> ChargerRelay:
    r = relay(version, **settings)
    r.backlog = len(rows)
    r.charger_attached(version, T0)
    r.link_connecting(T0)
    r.link_connected(T0)
    assert r.state is LinkState.REPLAYING
    r.replay_rows(read_request(r), rows, T0, wall_now=WALL)
    return r


def read_request(r: ChargerRelay) -> ReadBacklog:
    [request] = r.events()
    assert isinstance(request, ReadBacklog)
    return request


def start_row(seq: int = 1, local: int = LOCAL_TX_MIN) -> Row:
    return Row(seq, f"s{seq}", "StartTransaction", json.dumps(START), local_tx_id=local)


def test_replay_in_order_binds_the_transaction_and_rewrites_later_rows() -> None:
    stop = Row(2, "e2", "StopTransaction", json.dumps(stop_payload(LOCAL_TX_MIN)))
    r = replaying([start_row(), stop])
    [sent] = parsed(r.data_to_cloud())
    assert sent[:3] == [2, "s1", "StartTransaction"]
    r.receive_cloud(result("s1", {"idTagInfo": {"status": "Accepted"}, "transactionId": 77}), T0)
    [delivered] = r.events()
    assert isinstance(delivered, Delivered) and delivered.tx == (LOCAL_TX_MIN, 77)
    assert r.data_to_cloud() == []  # nothing more until the delivery is recorded
    assert r.txids.local_to_cloud == {}  # nor bound
    r.outcome_recorded(delivered, T0)
    assert r.txids.local_to_cloud == {LOCAL_TX_MIN: 77}
    [stop_sent] = parsed(r.data_to_cloud())
    assert stop_sent[1:3] == ["e2", "StopTransaction"]
    assert stop_sent[3]["transactionId"] == 77
    r.receive_cloud(result("e2", {}), T0)
    [done] = r.events()
    assert isinstance(done, Delivered)
    r.outcome_recorded(done, T0)
    r.replay_rows(read_request(r), [], T0, wall_now=WALL)
    assert r.events() == [Drained()]
    assert r.state is LinkState.ONLINE and r.backlog == 0


def test_live_calls_wait_behind_the_replay() -> None:
    r = replaying([start_row()])
    r.data_to_cloud()
    r.receive_charger(HEARTBEAT, T0)
    [ev] = r.events()
    assert isinstance(ev, AnswerLocally)  # REPLAYING answers locally: order is kept
    assert r.data_to_cloud() == []


def test_row_queued_while_the_driver_read_is_read_again() -> None:
    r = relay()
    r.backlog = 1
    r.charger_attached("1.6", T0)
    r.link_connecting(T0)
    r.link_connected(T0)
    request = read_request(r)
    r.receive_charger(call("m9", "MeterValues", METER), T0)  # answered locally meanwhile
    [ev] = r.events()
    assert isinstance(ev, AnswerLocally)
    r.answered_locally(ev.call, {}, T0, stored=True)
    r.replay_rows(request, [], T0, wall_now=WALL)  # the read began before m9 was stored
    again = read_request(r)
    assert again is not request and r.state is LinkState.REPLAYING
    # The first request answered twice (a stale read) is ignored.
    r.replay_rows(request, [], T0, wall_now=WALL)
    assert r.events() == [] and r.state is LinkState.REPLAYING


def test_transient_error_retries_with_backoff_then_dead_letters() -> None:
    row = Row(1, "m1", "MeterValues", json.dumps(METER))
    r = replaying([row], max_replay_attempts=3)
    r.data_to_cloud()
    r.receive_cloud(error("m1", "InternalError", "db down"), T0)
    [retry] = r.events()
    assert isinstance(retry, RetryLater) and retry.delay_s == 2.0
    assert retry.error == "InternalError: db down"
    r.outcome_recorded(retry, T0)
    request = read_request(r)  # re-read: the row carries its next attempt time
    later = replace(row, attempts=1, next_attempt_at=WALL + 4.0)
    r.replay_rows(request, [later], T0, wall_now=WALL)
    assert r.data_to_cloud() == [] and r.next_deadline() == T0 + 4.0
    r.tick(T0 + 3.9)
    assert r.data_to_cloud() == []
    r.tick(T0 + 4.0)
    assert parsed(r.data_to_cloud())[0][1] == "m1"
    r.receive_cloud(error("m1", "InternalError"), T0 + 4)
    [retry2] = r.events()
    assert isinstance(retry2, RetryLater) and retry2.delay_s == 4.0
    r.outcome_recorded(retry2, T0 + 4)
    r.replay_rows(read_request(r), [replace(row, attempts=2)], T0 + 8, wall_now=WALL + 8)
    r.data_to_cloud()
    r.receive_cloud(error("m1", "InternalError"), T0 + 8)
    [dead] = r.events()
    assert isinstance(dead, DeadLetter) and dead.code == "InternalError"


def test_a_refusal_is_dead_lettered_at_once() -> None:
    row = Row(1, "m1", "MeterValues", json.dumps(METER))
    r = replaying([row])
    r.data_to_cloud()
    r.receive_cloud(error("m1", "FormationViolation", "no"), T0)
    [dead] = r.events()
    assert isinstance(dead, DeadLetter) and dead.description == "no"
    r.outcome_recorded(dead, T0)
    assert r.backlog == 0


def test_replayed_answer_that_breaks_the_schema_is_not_a_delivery() -> None:
    r = replaying([start_row()], max_replay_attempts=2)
    r.data_to_cloud()
    r.receive_cloud(result("s1", {"idTagInfo": {"status": "Accepted"}}), T0)  # no transactionId
    [retry] = r.events()
    assert isinstance(retry, RetryLater) and "breaks the schema" in retry.error
    r.outcome_recorded(retry, T0)
    r.replay_rows(read_request(r), [replace(start_row(), attempts=1)], T0, wall_now=WALL)
    r.data_to_cloud()
    r.receive_cloud(result("s1", {"transactionId": "x"}), T0)
    [dead] = r.events()
    assert isinstance(dead, DeadLetter)
    assert r.txids.local_to_cloud == {}


def test_unmapped_local_transaction_is_dead_lettered_not_sent() -> None:
    stop = Row(1, "e1", "StopTransaction", json.dumps(stop_payload(LOCAL_TX_MIN + 5)))
    r = replaying([stop])
    assert r.data_to_cloud() == []
    [dead] = r.events()
    assert isinstance(dead, DeadLetter) and dead.code == "UnmappedTransaction"


def test_transaction_event_is_replayed_with_the_offline_flag() -> None:
    row = Row(1, "t1", "TransactionEvent", json.dumps(TX_EVENT), version="2.0.1")
    r = replaying([row], "2.0.1")
    [sent] = parsed(r.data_to_cloud())
    assert sent[3] == {**TX_EVENT, "offline": True}


def test_replay_timeout_drops_the_link_and_replay_restarts_from_the_store() -> None:
    row = Row(1, "m1", "MeterValues", json.dumps(METER))
    r = replaying([row], cloud_call_timeout_s=5.0)
    r.data_to_cloud()
    r.tick(T0 + 5)
    assert r.events() == [CloseLink(1011, "call timeout")]
    assert r.state is LinkState.OFFLINE
    r.link_lost(T0 + 5)
    r.link_connecting(T0 + 6)
    r.link_connected(T0 + 6)
    read_request(r)


def test_stored_boot_is_replayed_first_and_delivered_once() -> None:
    r = relay()
    r.boot_stored("b1", json.dumps({"chargePointVendor": "V", "chargePointModel": "M"}), T0)
    r.backlog = 1
    r.charger_attached("1.6", T0)
    r.link_connecting(T0)
    r.link_connected(T0)
    [boot] = parsed(r.data_to_cloud())
    assert boot[1:3] == ["b1", "BootNotification"]
    answer = {"status": "Accepted", "currentTime": "2026-12-01T10:00:00Z", "interval": 60}
    r.receive_cloud(result("b1", answer), T0)
    [delivered] = r.events()
    assert delivered == BootDelivered("b1", answer)
    r.outcome_recorded(delivered, T0)
    assert r.boot is None and r.backlog == 1
    read_request(r)


def test_store_failure_holds_the_replay_until_resumed() -> None:
    row = Row(1, "m1", "MeterValues", json.dumps(METER))
    r = replaying([row, replace(row, seq=2, message_id="m2")])
    r.data_to_cloud()
    r.receive_cloud(result("m1", {}), T0)
    [delivered] = r.events()
    assert isinstance(delivered, Delivered)
    r.outcome_recorded(delivered, T0, ok=False)
    assert r.data_to_cloud() == [] and r.events() == []
    assert r.backlog == 2  # nothing assumed delivered
    r.resume_replay(T0 + 10)
    read_request(r)


def test_answers_of_observed_actions_are_shown_with_who_gave_them() -> None:
    r = online(observed_answers=frozenset({"Authorize"}))
    r.receive_charger(call("a1", "Authorize", {"idTag": "T"}), T0)
    r.receive_cloud(result("a1", {"idTagInfo": {"status": "Accepted"}}), T0)
    [ev] = r.events()
    assert ev == Answered(
        Call("a1", "Authorize", {"idTag": "T"}), {"idTagInfo": {"status": "Accepted"}}, True
    )


# --- resends --------------------------------------------------------------------------------------


def test_resend_of_a_stored_call_gets_the_first_answer_and_is_not_relayed() -> None:
    r = online()
    r.remember_stored(["s1"])
    r.receive_charger(call("s1", "StartTransaction", START), T0)
    [check] = r.events()
    assert isinstance(check, CheckResend)
    r.receive_charger(HEARTBEAT, T0)  # waits behind the check
    first = {"idTagInfo": {"status": "Accepted"}, "transactionId": LOCAL_TX_MIN}
    r.resend_checked(check.call, first, T0)
    assert parsed(r.data_to_charger()) == [[3, "s1", first]]
    assert [m[1] for m in parsed(r.data_to_cloud())] == ["h1"]
    assert r.errors["charger_resend"] == 1 and r.backlog == 0


def test_same_id_but_not_a_resend_is_relayed() -> None:
    r = online()
    r.remember_stored(["s1"])
    text = call("s1", "StartTransaction", START)
    r.receive_charger(text, T0)
    [check] = r.events()
    assert isinstance(check, CheckResend)
    r.resend_checked(check.call, None, T0)
    assert r.data_to_cloud() == [text]


def test_remembered_ids_are_bounded() -> None:
    r = relay()
    r.remember_stored(f"m{n}" for n in range(200))
    assert len(r.recent_ids) == 64 and "m199" in r.recent_ids and "m0" not in r.recent_ids


# --- 2.1 ------------------------------------------------------------------------------------------


def test_send_is_relayed_online_and_dropped_offline() -> None:
    r = online("2.1")
    text = json.dumps(
        [6, "p1", "NotifyPeriodicEventStream", {"id": 1, "pending": 0, "basetime": "t", "data": []}]
    )
    r.receive_charger(text, T0)
    assert r.data_to_cloud() == [text]
    r.link_lost(T0)
    r.receive_charger(text, T0)
    assert r.data_to_cloud() == []
    assert r.sends == {"from_charger relayed": 1, "from_charger dropped": 1}


def test_callresulterror_about_a_local_answer_is_kept_from_the_cloud() -> None:
    r = relay("2.1")
    r.charger_attached("2.1", T0)
    r.receive_charger(call("h1", "Heartbeat", {}), T0)
    [ev] = r.events()
    assert isinstance(ev, AnswerLocally)
    r.answered_locally(ev.call, {"currentTime": "t"}, T0, stored=False)
    r.link_connecting(T0)
    r.link_connected(T0)
    r.receive_charger(json.dumps([5, "h1", "FormatViolation", "bad", {}]), T0)
    assert r.data_to_cloud() == [] and r.errors["local_answer_refused"] == 1


# --- no I/O ---------------------------------------------------------------------------------------


def test_the_core_imports_no_io_library() -> None:
    code = (
        "import sys, gateway.core.relay; "
        "bad = {'asyncio', 'sqlite3', 'aiosqlite', 'httpx', 'websockets'} & set(sys.modules); "
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_offline_rule_used_for_answers_is_the_table() -> None:
    r = relay()
    r.charger_attached("1.6", T0)
    r.receive_charger(call("s1", "StartTransaction", START), T0)
    [ev] = r.events()
    assert isinstance(ev, AnswerLocally)
    assert ev.rule == offline.rule_for("1.6", "StartTransaction")
    assert isinstance(TxIdMap(), TxIdMap) and CallError("x", "y").code == "y"


# --- repeated warnings ----------------------------------------------------------------------------


def test_refused_cloud_calls_and_bad_frames_log_once_a_minute_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A silent charger flooded by the cloud, and a charger sending garbage: every refusal and
    every bad frame is answered, but each kind is logged once a minute, the rest counted."""
    caplog.set_level("WARNING", logger="gateway")
    limit = LogLimiter(60.0)
    r = ChargerRelay(
        "CP1",
        "1.6",
        settings=RelaySettings(max_queued_calls=1),
        new_id=lambda: "x",
        log_limit=limit,
    )
    r.charger_attached("1.6", T0)
    r.link_connecting(T0)
    r.link_connected(T0)
    for n in range(1000):  # c0 in the slot, c1 queued, the rest refused
        r.receive_cloud(call(f"c{n}", "Reset", {"type": "Soft"}), T0 + n / 100)
        r.receive_charger(f'[2, "b{n}", "Heartbeat"]', T0 + n / 100)
    refused = [f for f in parsed(r.data_to_cloud()) if f[0] == 4]
    assert len(refused) == 998 and {f[3] for f in refused} == {"charger queue full"}
    assert sum(1 for f in parsed(r.data_to_charger()) if f[0] == 4) == 1000
    assert [rec.getMessage() for rec in caplog.records] == [
        "CP1: bad frame from charger: CALL must have 4 elements",
        "CP1: charger queue full: 1 CALLs already wait for the charger; refusing Reset c2",
    ]
    caplog.clear()
    r.receive_charger('[2, "late", "Heartbeat"]', T0 + 60.0)  # a minute after the first
    assert [rec.getMessage() for rec in caplog.records] == [
        "CP1: bad frame from charger: … and 999 more like it in 60 s",
        "CP1: bad frame from charger: CALL must have 4 elements",
    ]
    assert [(left.kind, left.count) for left in limit.flush(T0 + 60.5)] == [
        ("charger queue full", 997)
    ]


# --- sampled CALLs (the depot view's meter readings and statuses) ---------------------------------

SAMPLED: dict[str, Any] = {
    "observed_charger_calls": frozenset({"MeterValues", "StatusNotification", "StopTransaction"}),
    "sampled_charger_calls": frozenset({"MeterValues", "StatusNotification"}),
    "sample_every_s": 1.0,
}


def meter(mid: str, wh: int, connector: int = 1, tx: int = 7) -> str:
    reading = [{"timestamp": "t", "sampledValue": [{"value": str(wh)}]}]
    return call(
        mid, "MeterValues", {"connectorId": connector, "transactionId": tx, "meterValue": reading}
    )


def seen(events: list[Any]) -> list[tuple[str, float | None]]:
    return [(e.call.message_id, e.at) for e in events]


def ids(events: list[Any]) -> list[str]:
    return [e.call.message_id for e in events]


def test_a_sampled_call_is_relayed_at_once_and_shown_once_a_second_the_latest_last() -> None:
    r = online(**SAMPLED)
    r.receive_charger(meter("m1", 100), T0)
    assert seen(r.events()) == [("m1", None)]  # the first of its key: shown at once
    for i, t in ((2, T0 + 0.2), (3, T0 + 0.5), (4, T0 + 0.9)):
        r.receive_charger(meter(f"m{i}", 100 * i), t)
    assert [m[1] for m in parsed(r.data_to_cloud())] == ["m1", "m2", "m3", "m4"]  # all relayed
    assert r.events() == [] and r.has_deadlines and r.next_deadline() == T0 + 1.0
    r.tick(T0 + 0.99)
    assert r.events() == []
    r.tick(T0 + 1.0)
    assert seen(r.events()) == [("m4", T0 + 0.9)]  # m2, m3: their reading is m4's now
    r.receive_charger(meter("m5", 500), T0 + 1.5)  # within a second of that showing: held
    assert r.events() == []
    r.tick(T0 + 2.0)
    assert seen(r.events()) == [("m5", T0 + 1.5)]


def test_each_connector_and_transaction_keeps_its_own_latest_sample() -> None:
    r = online(**SAMPLED)
    r.receive_charger(meter("a1", 1, connector=1), T0)
    r.receive_charger(meter("b1", 1, connector=2), T0)
    assert seen(r.events()) == [("a1", None), ("b1", None)]
    r.receive_charger(meter("a2", 2, connector=1), T0 + 0.1)
    r.receive_charger(meter("b2", 2, connector=2), T0 + 0.2)
    r.receive_charger(meter("a3", 3, connector=1), T0 + 0.3)
    assert r.events() == []
    r.receive_charger(meter("c1", 1, connector=2, tx=8), T0 + 0.4)  # a new key: shown at once
    assert seen(r.events()) == [("b2", T0 + 0.2), ("a3", T0 + 0.3), ("c1", None)]
    r.tick(T0 + 5)
    assert r.events() == []


def test_samples_are_shown_before_an_event_that_came_after_them() -> None:
    r = online(**SAMPLED)
    r.receive_charger(meter("m1", 1), T0)
    r.events()  # m1
    r.receive_charger(meter("m3", 3), T0 + 0.2)
    r.receive_charger(call("s1", "StopTransaction", stop_payload(7)), T0 + 0.3)
    assert seen(r.events()) == [("m3", T0 + 0.2), ("s1", None)]  # the reading, then the stop


def test_a_16_available_status_is_never_skipped() -> None:
    r = online(**SAMPLED)
    status = {"connectorId": 1, "errorCode": "NoError"}
    shown = []
    for i, state in enumerate(("Charging", "Finishing", "Available", "Preparing", "Charging")):
        r.receive_charger(call(f"s{i}", "StatusNotification", {**status, "status": state}), T0)
        shown.append(ids(r.events()))  # as the driver takes them
    r.tick(T0 + 1)
    shown.append(ids(r.events()))
    assert shown == [["s0"], [], ["s1", "s2"], [], [], ["s4"]]


def test_a_charger_leaving_shows_its_held_samples_at_once() -> None:
    r = online(**SAMPLED)
    r.receive_charger(meter("m1", 1), T0)
    assert seen(r.events()) == [("m1", None)]
    r.receive_charger(meter("m2", 2), T0 + 0.1)
    assert r.events() == []
    r.charger_detached(T0 + 0.2)
    shown, close = r.events()
    assert seen([shown]) == [("m2", T0 + 0.1)] and close == CloseLink(1000, "charger disconnected")


def test_a_sample_is_not_held_behind_an_event_not_taken_yet() -> None:
    r = online(**SAMPLED)
    r.receive_charger(meter("m1", 1), T0)
    r.receive_charger(meter("m2", 2), T0 + 0.1)  # m1's event not taken: m2 is shown too
    assert seen(r.events()) == [("m1", None), ("m2", None)]


def test_a_sampled_call_with_a_malformed_key_is_shown_and_relayed_unchanged() -> None:
    r = online(**SAMPLED)
    text = call("m1", "MeterValues", {"connectorId": [1], "meterValue": []})
    r.receive_charger(text, T0)
    r.receive_charger(call("m2", "MeterValues", {"connectorId": [1], "meterValue": []}), T0)
    assert r.data_to_cloud()[0] == text
    assert ids(r.events()) == ["m1", "m2"]
