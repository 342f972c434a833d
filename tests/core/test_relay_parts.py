"""The relay's parts on their own, on values and a fake clock: what the facade tests in
test_relay.py do not reach (per-CALL timeouts, the order of failures, the replay cursor's
bookkeeping of the backlog and of transaction binding, the identity of what it waits for)."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

from gateway.core.charger_slot import ChargerSlot, OutCall
from gateway.core.events import (
    Answered,
    BootDelivered,
    ChargerAnswered,
    ChargerCallFailed,
    DeadLetter,
    Delivered,
    ReadBacklog,
    RelayOutput,
    RetryLater,
    SaveBoot,
)
from gateway.core.inbox import LOCAL_ANSWERS_KEPT, RECENT_IDS, ChargerInbox
from gateway.core.pending import PendingCalls
from gateway.core.relay import ChargerRelay, RelaySettings
from gateway.core.replay import Backlog, ReplayCursor
from gateway.core.txmap import LOCAL_TX_MIN, TxIdMap
from gateway.ocpp.frames import Call, CallError, CallResult
from tests.rows import Row

T0 = 1000.0  # the fake monotonic clock
WALL = 1_800_000_000.0  # the wall clock of the rows


METER = {
    "connectorId": 1,
    "meterValue": [{"timestamp": "2026-12-01T10:30:00Z", "sampledValue": [{"value": "5"}]}],
}
START = {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": "2026-12-01T10:00:00Z"}
BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}
BOOT_ANSWER = {"status": "Accepted", "currentTime": "2026-12-01T10:00:00Z", "interval": 60}


def meter_row(seq: int) -> Row:
    return Row(seq, f"m{seq}", "MeterValues", json.dumps(METER))


def reset(mid: str) -> Call:
    return Call(mid, "Reset", {"type": "Soft"})


def ids(texts: list[str]) -> list[str]:
    return [json.loads(text)[1] for text in texts]


# --- the charger's slot ----------------------------------------------------------------------------


def slot(
    output: RelayOutput,
    *,
    max_queued_calls: int = 16,
    errors: Counter[str] | None = None,
    observed_answers: frozenset[str] = frozenset(),
) -> ChargerSlot:
    return ChargerSlot(
        "CP1",
        output,
        max_queued_calls=max_queued_calls,
        call_timeout_s=30.0,
        observed_answers=observed_answers,
        errors=errors if errors is not None else Counter(),
    )


def cloud_call(mid: str) -> OutCall:
    call = reset(mid)
    return OutCall(call, call.serialize(), "cloud")


def test_a_gateway_call_s_own_timeout_counts_from_when_the_charger_gets_it() -> None:
    out = RelayOutput()
    s = slot(out)
    assert s.enqueue(cloud_call("c1"), T0)
    s.call("gw-1", "GetConfiguration", {}, T0, timeout_s=5.0)  # queued behind c1
    assert s.deadline == T0 + 30.0
    s.answered(CallResult("c1", {"status": "Accepted"}), "answer", T0 + 20, out.to_cloud)
    assert ids(out.to_charger) == ["c1", "gw-1"] and s.deadline == T0 + 25.0
    s.tick(T0 + 24.9)
    assert out.events == []
    s.tick(T0 + 25.0)
    assert out.events == [ChargerCallFailed("gw-1", "GetConfiguration", "timeout")]
    assert s.current is None and s.deadline is None


def test_the_bound_counts_the_calls_waiting_not_the_one_in_the_slot() -> None:
    out, errors = RelayOutput(), Counter[str]()
    s = slot(out, max_queued_calls=0, errors=errors)
    assert s.enqueue(cloud_call("c1"), T0)  # straight into the free slot
    assert not s.enqueue(cloud_call("c2"), T0)
    assert errors["charger_queue_full"] == 1
    s.answered(CallResult("c1", {}), "answer", T0, out.to_cloud)
    assert s.enqueue(cloud_call("c3"), T0)
    assert ids(out.to_charger) == ["c1", "c3"]


def test_an_answer_while_the_cloud_is_away_frees_the_slot_and_goes_nowhere() -> None:
    out = RelayOutput()
    s = slot(out)
    s.enqueue(cloud_call("c1"), T0)
    s.enqueue(cloud_call("c2"), T0)
    s.answered(CallResult("c1", {}), "answer to c1", T0, None)
    assert out.to_cloud == [] and ids(out.to_charger) == ["c1", "c2"]
    # Late answers (their CALL no longer in the slot): a cloud id's goes on, the gateway's not.
    s.answered(CallResult("c0", {}), "late c0", T0, out.to_cloud)
    s.answered(CallResult("gw-9", {}), "late gw-9", T0, out.to_cloud)
    assert out.to_cloud == ["late c0"]
    assert s.current is not None and s.current.call.message_id == "c2"


def test_observed_cloud_calls_answered_are_events_beside_the_frame() -> None:
    out = RelayOutput()
    s = slot(out, observed_answers=frozenset({"Reset"}))
    s.enqueue(cloud_call("c1"), T0)
    answer = CallError("c1", "InternalError", "")
    s.answered(answer, "answer", T0, out.to_cloud)
    assert out.to_cloud == ["answer"]
    assert out.events == [ChargerAnswered(reset("c1"), answer, "cloud")]


def test_charger_gone_fails_the_gateway_calls_in_order_and_forgets_the_cloud_ones() -> None:
    out = RelayOutput()
    s = slot(out)
    s.call("gw-1", "GetConfiguration", {}, T0)  # in the slot
    s.enqueue(cloud_call("c1"), T0)
    s.call("gw-2", "TriggerMessage", {"requestedMessage": "Heartbeat"}, T0)
    s.fail_all()
    assert out.events == [
        ChargerCallFailed("gw-1", "GetConfiguration", "not_connected"),
        ChargerCallFailed("gw-2", "TriggerMessage", "not_connected"),
    ]
    assert s.current is None and s.queued == 0


def test_a_call_already_sent_cannot_be_cancelled() -> None:
    out = RelayOutput()
    s = slot(out)
    s.call("gw-1", "GetConfiguration", {}, T0)
    s.call("gw-2", "GetConfiguration", {}, T0)
    assert not s.cancel("gw-1") and not s.cancel("gw-unknown")
    assert s.cancel("gw-2") and s.queued == 0


# --- the pending table -----------------------------------------------------------------------------


def test_expiry_takes_the_overdue_calls_in_order_and_leaves_the_rest() -> None:
    out, errors = RelayOutput(), Counter[str]()
    p = PendingCalls("CP1", out, call_timeout_s=10.0, errors=errors)
    p.forward([2, "a", "Heartbeat", {}], "a", T0)
    p.forward([2, "b", "BootNotification", BOOT], "b", T0 + 1)
    p.forward([2, "c", "Heartbeat", {}], "c", T0 + 5)
    assert out.to_cloud == ["a", "b", "c"]
    assert out.events == [SaveBoot(Call("b", "BootNotification", BOOT))]
    assert p.expire(T0 + 9.9) == []
    assert [c.message_id for c in p.expire(T0 + 11)] == ["a", "b"]
    assert p.ids == frozenset({"c"}) and p.deadlines() == [T0 + 15]
    assert errors["cloud_call_timeout"] == 2
    assert [c.message_id for c in p.take_all()] == ["c"] and len(p) == 0


def test_the_cloud_s_answer_time_is_observed_and_an_unknown_answer_dropped() -> None:
    out, observed = RelayOutput(), list[float]()
    p = PendingCalls(
        "CP1",
        out,
        call_timeout_s=30.0,
        observed_answers=frozenset({"Authorize"}),
        observe_answer_s=observed.append,
        errors=Counter(),
    )
    p.forward([2, "a1", "Authorize", {"idTag": "T"}], "a1", T0)
    p.forward([2, "a2", "Authorize", {"idTag": "U"}], "a2", T0)
    p.answered([3, "a1", {"idTagInfo": {"status": "Accepted"}}], "r1", T0 + 0.25, True)
    # The charger is gone: the answer is not sent, but the CALL is answered all the same.
    p.answered([4, "a2", "InternalError", "", {}], "r2", T0 + 0.5, False)
    p.answered([3, "zz", {}], "r3", T0 + 1, True)
    assert out.to_charger == ["r1"] and observed == [0.25, 0.5] and len(p) == 0
    assert out.events == [
        Answered(
            Call("a1", "Authorize", {"idTag": "T"}), {"idTagInfo": {"status": "Accepted"}}, True
        )
    ]


# --- the inbox ---------------------------------------------------------------------------------------


def test_the_inbox_s_id_lists_are_bounded_and_a_repeated_id_counts_once() -> None:
    inbox = ChargerInbox(RelayOutput(), errors=Counter(), observed_answers=frozenset())
    inbox.remember_stored(["first", "first"])
    inbox.remember_stored([f"m{n}" for n in range(RECENT_IDS - 1)])
    assert "first" in inbox.recent_ids and len(inbox.recent_ids) == RECENT_IDS
    inbox.remember_stored(["one more"])
    assert "first" not in inbox.recent_ids and len(inbox.recent_ids) == RECENT_IDS
    for n in range(LOCAL_ANSWERS_KEPT + 1):
        inbox.send_answer(Call(f"h{n}", "Heartbeat", {}), {}, resend=False)
    assert list(inbox.answered_ids) == [f"h{n}" for n in range(1, LOCAL_ANSWERS_KEPT + 1)]


# --- the replay cursor -----------------------------------------------------------------------------


def cursor(backlog: Backlog, txids: TxIdMap | None = None) -> tuple[ReplayCursor, RelayOutput]:
    out = RelayOutput()
    c = ReplayCursor(
        "CP1",
        backlog,
        txids if txids is not None else TxIdMap(),
        out,
        call_timeout_s=30.0,
        max_attempts=8,
        max_retry_delay_s=300.0,
        errors=Counter(),
    )
    return c, out


def asked(out: RelayOutput) -> Any:
    [event] = out.events
    out.events.clear()
    return event


def sent(out: RelayOutput) -> list[str]:
    frames = ids(out.to_cloud)
    out.to_cloud.clear()
    return frames


def test_a_delivery_binds_the_transaction_only_once_it_is_recorded() -> None:
    txids = TxIdMap()
    txids.add_local(LOCAL_TX_MIN)
    backlog = Backlog(count=1)
    c, out = cursor(backlog, txids)
    c.next(T0)
    row = Row(1, "s1", "StartTransaction", json.dumps(START), local_tx_id=LOCAL_TX_MIN)
    assert not c.receive_rows(asked(out), [row], T0, wall_now=WALL)
    assert sent(out) == ["s1"]
    answer = {"idTagInfo": {"status": "Accepted"}, "transactionId": 77}
    c.answered(CallResult("s1", answer), T0)
    first = asked(out)
    assert isinstance(first, Delivered) and first.tx == (LOCAL_TX_MIN, 77)
    c.recorded(first, T0, ok=False)  # the store could not write it
    assert txids.local_to_cloud == {} and backlog.count == 1
    assert out.events == [] and out.to_cloud == [] and c.deadline() is None
    c.resume(T0 + 5)
    c.receive_rows(asked(out), [row], T0 + 5, wall_now=WALL + 5)  # still queued: sent again
    assert sent(out) == ["s1"]
    c.answered(CallResult("s1", answer), T0 + 5)
    again = asked(out)
    c.recorded(again, T0 + 5)
    assert txids.local_to_cloud == {LOCAL_TX_MIN: 77} and backlog.count == 0
    assert isinstance(asked(out), ReadBacklog)


def test_the_backlog_counts_down_on_delivery_and_dead_letter_not_on_retry() -> None:
    backlog = Backlog(count=1)  # the store holds more than the relay was told
    c, out = cursor(backlog)
    c.next(T0)
    c.receive_rows(asked(out), [meter_row(1), meter_row(2), meter_row(3)], T0, wall_now=WALL)
    assert backlog.count == 3
    for mid, answer, kind, left in (
        ("m1", CallResult("m1", {}), Delivered, 2),
        ("m2", CallError("m2", "FormationViolation", "no"), DeadLetter, 1),
        ("m3", CallError("m3", "InternalError", "busy"), RetryLater, 1),
    ):
        assert sent(out) == [mid]
        c.answered(answer, T0)
        outcome = asked(out)
        assert isinstance(outcome, kind)
        c.recorded(outcome, T0)
        assert backlog.count == left
    # After a retry the rows are read again: the row now carries its next attempt time.
    request = asked(out)
    assert isinstance(request, ReadBacklog)
    due = Row(3, "m3", "MeterValues", json.dumps(METER), attempts=1, next_attempt_at=WALL + 2)
    c.receive_rows(request, [due], T0, wall_now=WALL)
    assert out.to_cloud == [] and c.deadline() == T0 + 2


def test_the_cursor_goes_on_only_for_what_it_asked_not_an_equal_value() -> None:
    backlog = Backlog(count=1)
    c, out = cursor(backlog)
    c.next(T0)
    request = asked(out)
    assert ReadBacklog() == request  # every read request is equal: identity decides
    assert not c.receive_rows(ReadBacklog(), [], T0, wall_now=WALL)
    assert out.events == [] and out.to_cloud == [] and backlog.count == 1
    c.receive_rows(request, [meter_row(1)], T0, wall_now=WALL)
    sent(out)
    c.answered(CallResult("m1", {}), T0)
    outcome = asked(out)
    assert isinstance(outcome, Delivered)
    c.recorded(Delivered(outcome.row, outcome.call, outcome.result, outcome.tx), T0)
    assert out.events == [] and out.to_cloud == [] and backlog.count == 1
    c.recorded(outcome, T0)
    assert backlog.count == 0
    # Nothing queued since the read and no rows: drained.
    assert c.receive_rows(asked(out), [], T0, wall_now=WALL) and backlog.count == 0


def test_a_refused_stored_boot_is_left_for_the_next_link_and_the_rows_go_on() -> None:
    backlog = Backlog(count=1, boot=("b1", json.dumps(BOOT)))
    c, out = cursor(backlog)
    c.next(T0)
    assert sent(out) == ["b1"]
    c.answered(CallError("b1", "InternalError", ""), T0)
    assert backlog.boot == ("b1", json.dumps(BOOT))
    assert isinstance(asked(out), ReadBacklog)  # on with the rows, the Boot not tried again


def test_a_boot_stored_while_the_older_one_is_recorded_is_replayed_next() -> None:
    ids_ = itertools.count(1)
    r = ChargerRelay("CP1", "1.6", settings=RelaySettings(), new_id=lambda: str(next(ids_)))
    r.boot_stored("b1", json.dumps(BOOT), T0)
    r.charger_attached("1.6", T0)
    r.link_connecting(T0)
    r.link_connected(T0)
    assert ids(r.data_to_cloud()) == ["b1"]
    r.receive_cloud(json.dumps([3, "b1", BOOT_ANSWER]), T0)
    [delivered] = r.events()
    assert delivered == BootDelivered("b1", BOOT_ANSWER)
    r.boot_stored("b2", json.dumps(BOOT), T0)  # the charger booted again meanwhile
    r.outcome_recorded(delivered, T0)
    assert r.boot == ("b2", json.dumps(BOOT))
    assert ids(r.data_to_cloud()) == ["b2"]


# --- the output ----------------------------------------------------------------------------------------


def test_the_frames_handed_out_are_the_caller_s() -> None:
    ids_ = itertools.count(1)
    r = ChargerRelay("CP1", "1.6", settings=RelaySettings(), new_id=lambda: str(next(ids_)))
    r.charger_attached("1.6", T0)
    r.link_connecting(T0)
    r.link_connected(T0)
    r.receive_cloud(reset("c1").serialize(), T0)
    taken = r.data_to_charger()
    taken.append("the caller's own")
    r.receive_charger(json.dumps([3, "c1", {"status": "Accepted"}]), T0)
    r.receive_cloud(reset("c2").serialize(), T0)
    assert ids(taken[:1]) == ["c1"] and len(taken) == 2
    assert ids(r.data_to_charger()) == ["c2"] and r.data_to_charger() == []
