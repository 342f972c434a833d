"""A simulated charger ↔ the relay core ↔ a simulated cloud, without sockets.

The driver here is the smallest one that does what the events ask with rows in memory, so the
flows run end to end in microseconds on a fake clock.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from gateway.core import offline
from gateway.core.events import (
    AnswerLocally,
    BootDelivered,
    CheckResend,
    CloseLink,
    DeadLetter,
    Delivered,
    ReadBacklog,
    RetryLater,
)
from gateway.core.link import LinkState
from gateway.core.relay import ChargerRelay, RelaySettings
from gateway.core.txmap import LOCAL_TX_MIN, is_local
from tests.rows import Row

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


class SimCharger:
    """A 1.6 charger: sends CALLs with fresh ids, keeps every answer by id."""

    def __init__(self) -> None:
        self.ids = itertools.count(1)
        self.answers: dict[str, list[Any]] = {}
        self.calls_from_cloud: list[list[Any]] = []

    def call(self, action: str, payload: dict[str, Any], mid: str | None = None) -> str:
        return json.dumps([2, mid or f"c{next(self.ids)}", action, payload])

    def receive(self, text: str) -> str | None:
        frame = json.loads(text)
        if frame[0] == 2:
            self.calls_from_cloud.append(frame)
            return json.dumps([3, frame[1], {"status": "Accepted"}])
        self.answers[frame[1]] = frame
        return None


class SimCloud:
    """A CSMS that assigns transaction ids and records what it received, in order."""

    def __init__(self) -> None:
        self.received: list[list[Any]] = []
        self.tx_ids = itertools.count(501)
        self.refuse: set[str] = set()  # actions answered with a CALLERROR InternalError
        self.silent = False  # receives, never answers

    def receive(self, text: str) -> str | None:
        frame = json.loads(text)
        self.received.append(frame)
        if frame[0] != 2 or self.silent:
            return None
        mid, action = frame[1], frame[2]
        if action in self.refuse:
            return json.dumps([4, mid, "InternalError", "try later", {}])
        payloads: dict[str, dict[str, Any]] = {
            "BootNotification": {"status": "Accepted", "currentTime": "t", "interval": 300},
            "Heartbeat": {"currentTime": "2026-12-01T10:00:00Z"},
            "StopTransaction": {"idTagInfo": {"status": "Accepted"}},
        }
        if action == "StartTransaction":
            payloads[action] = {
                "idTagInfo": {"status": "Accepted"},
                "transactionId": next(self.tx_ids),
            }
        return json.dumps([3, mid, payloads.get(action, {})])

    def calls(self, action: str) -> list[list[Any]]:
        return [f for f in self.received if f[0] == 2 and f[2] == action]


@dataclass
class Pair:
    """The core between the two, with an in-memory driver: the store is ``rows``."""

    charger: SimCharger = field(default_factory=SimCharger)
    cloud: SimCloud = field(default_factory=SimCloud)
    now: float = 1000.0
    cloud_up: bool = True
    rows: list[Row] = field(default_factory=list)
    delivered: list[Row] = field(default_factory=list)
    dead: list[Row] = field(default_factory=list)
    local_tx: itertools.count[int] = field(default_factory=lambda: itertools.count(LOCAL_TX_MIN))
    seqs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        ids = itertools.count(1)
        self.relay = ChargerRelay(
            "CP1", "1.6", settings=RelaySettings(), new_id=lambda: f"{next(ids):04d}"
        )
        self.relay.charger_attached("1.6", self.now)
        self.connect()

    def connect(self) -> None:
        self.relay.link_connecting(self.now)
        if self.cloud_up:
            self.relay.link_connected(self.now)
        else:
            self.relay.link_failed(self.now)
        self.run()

    def outage(self) -> None:
        self.cloud_up = False
        self.relay.link_lost(self.now)
        self.run()

    def send(self, text: str) -> None:
        self.relay.receive_charger(text, self.now)
        self.run()

    def run(self) -> None:
        """Move frames and handle events until nothing moves."""
        r = self.relay
        for _ in range(10_000):
            moved = False
            for text in r.data_to_cloud():
                moved = True
                assert self.cloud_up, "nothing is sent to a cloud that is down"
                answer = self.cloud.receive(text)
                if answer is not None:
                    r.receive_cloud(answer, self.now)
            for text in r.data_to_charger():
                moved = True
                answer = self.charger.receive(text)
                if answer is not None:
                    r.receive_charger(answer, self.now)
            for event in r.events():
                moved = True
                self.handle(event)
            if not moved:
                return
        raise AssertionError("the pair does not settle")

    def handle(self, event: object) -> None:
        r = self.relay
        if isinstance(event, AnswerLocally):
            call = event.call
            stored = self._stored(call.message_id, call.action, call.payload)
            if stored is not None:  # a resend: the first answer, nothing stored again
                r.answered_locally(
                    call, json.loads(stored.answer), self.now, stored=False, resend=True
                )
                return
            tx = next(self.local_tx) if call.action == "StartTransaction" else None
            result = offline.local_result(
                "1.6",
                call.action,
                now=NOW,
                heartbeat_interval_s=300,
                auth_info={"status": "Accepted"},
                transaction_id=tx,
            )
            if event.rule.stored:
                self.rows.append(
                    Row(
                        next(self.seqs),
                        call.message_id,
                        call.action,
                        json.dumps(call.payload),
                        local_tx_id=tx,
                        answer=json.dumps(result),
                    )
                )
            r.answered_locally(call, result, self.now, stored=event.rule.stored, local_tx_id=tx)
        elif isinstance(event, CheckResend):
            call = event.call
            stored = self._stored(call.message_id, call.action, call.payload)
            r.resend_checked(call, json.loads(stored.answer) if stored else None, self.now)
        elif isinstance(event, ReadBacklog):
            r.replay_rows(event, list(self.rows), self.now, wall_now=self.now)
        elif isinstance(event, Delivered):
            self.rows = [row for row in self.rows if row.seq != event.row.seq]
            self.delivered.append(self._find(event.row.seq, event.row))
            r.outcome_recorded(event, self.now)
        elif isinstance(event, RetryLater):
            self.rows = [
                replace(row, attempts=row.attempts + 1, next_attempt_at=self.now + event.delay_s)
                if row.seq == event.row.seq
                else row
                for row in self.rows
            ]
            r.outcome_recorded(event, self.now)
        elif isinstance(event, DeadLetter):
            self.rows = [row for row in self.rows if row.seq != event.row.seq]
            self.dead.append(self._find(event.row.seq, event.row))
            r.outcome_recorded(event, self.now)
        elif isinstance(event, BootDelivered):
            r.outcome_recorded(event, self.now)
        elif isinstance(event, CloseLink):
            r.link_lost(self.now)

    def _stored(self, message_id: str, action: str, payload: dict[str, Any]) -> Row | None:
        for row in (*self.rows, *self.delivered):
            if (row.message_id, row.action, json.loads(row.payload)) == (
                message_id,
                action,
                payload,
            ):
                return row
        return None

    def _find(self, seq: int, default: Any) -> Row:
        for row in (*self.rows, *self.delivered, *self.dead):
            if row.seq == seq:
                return row
        assert isinstance(default, Row)
        return default

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.relay.tick(self.now)
        self.run()


START = {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": "2026-12-01T10:00:00Z"}


def stop(tx: int) -> dict[str, Any]:
    return {"meterStop": 10, "timestamp": "2026-12-01T11:00:00Z", "transactionId": tx}


def meter(tx: int) -> dict[str, Any]:
    sample = {"timestamp": "2026-12-01T10:30:00Z", "sampledValue": [{"value": "5"}]}
    return {"connectorId": 1, "transactionId": tx, "meterValue": [sample]}


def test_online_relay_in_both_directions() -> None:
    pair = Pair()
    pair.send(
        pair.charger.call("BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"})
    )
    pair.send(pair.charger.call("StartTransaction", START))
    tx = pair.charger.answers["c2"][2]["transactionId"]
    assert tx == 501  # the cloud's own id, unchanged
    pair.send(pair.charger.call("StopTransaction", stop(tx)))
    assert [f[2] for f in pair.cloud.received] == [
        "BootNotification",
        "StartTransaction",
        "StopTransaction",
    ]
    # The cloud calls the charger; the answer goes back to the cloud.
    pair.relay.receive_cloud(json.dumps([2, "r1", "Reset", {"type": "Soft"}]), pair.now)
    pair.run()
    assert pair.charger.calls_from_cloud == [[2, "r1", "Reset", {"type": "Soft"}]]
    assert pair.cloud.received[-1] == [3, "r1", {"status": "Accepted"}]
    assert pair.rows == [] and pair.relay.backlog == 0


def test_outage_local_answers_then_ordered_replay_with_the_cloud_ids() -> None:
    pair = Pair()
    pair.outage()
    pair.send(pair.charger.call("StartTransaction", START))
    local = pair.charger.answers["c1"][2]["transactionId"]
    assert is_local(local)
    pair.send(pair.charger.call("MeterValues", meter(local)))
    pair.send(pair.charger.call("Heartbeat", {}))  # answered, not stored
    pair.send(pair.charger.call("StopTransaction", stop(local)))
    assert [row.action for row in pair.rows] == [
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ]
    assert pair.cloud.received == []

    pair.cloud_up = True
    pair.connect()
    assert [f[2] for f in pair.cloud.received] == [
        "StartTransaction",
        "MeterValues",
        "StopTransaction",
    ]
    cloud_tx = 501
    assert pair.cloud.received[1][3]["transactionId"] == cloud_tx
    assert pair.cloud.received[2][3]["transactionId"] == cloud_tx
    assert not any(is_local(f[3].get("transactionId")) for f in pair.cloud.received)
    assert pair.rows == [] and len(pair.delivered) == 3
    assert pair.relay.state is LinkState.ONLINE and pair.relay.backlog == 0
    # A cloud CALL about the transaction reaches the charger with the id it knows.
    pair.relay.receive_cloud(
        json.dumps([2, "r1", "RemoteStopTransaction", {"transactionId": cloud_tx}]), pair.now
    )
    pair.run()
    assert pair.charger.calls_from_cloud[-1][3] == {"transactionId": local}


def test_resend_after_reconnect_gets_the_first_answer_and_reaches_the_cloud_once() -> None:
    pair = Pair()
    pair.outage()
    first = pair.charger.call("StartTransaction", START, mid="s1")
    pair.send(first)
    answer = pair.charger.answers.pop("s1")
    # The answer was lost with the connection; the charger resends the same CALL.
    pair.relay.charger_detached(pair.now)
    pair.relay.charger_attached("1.6", pair.now)
    pair.send(first)
    assert pair.charger.answers["s1"] == answer
    assert len(pair.rows) == 1
    pair.cloud_up = True
    pair.connect()
    assert len(pair.cloud.calls("StartTransaction")) == 1
    # Once delivered, a resend online is still answered as the first time, not relayed.
    pair.send(first)
    assert pair.charger.answers["s1"] == answer
    assert len(pair.cloud.calls("StartTransaction")) == 1
    assert pair.relay.errors["charger_resend"] == 2


def test_cloud_silence_answers_locally_and_replays_once_the_link_is_back() -> None:
    pair = Pair()
    pair.cloud.silent = True
    pair.send(
        pair.charger.call(
            "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
        )
    )
    assert pair.charger.answers == {}
    pair.advance(30.0)
    assert pair.charger.answers["c1"] == [3, "c1", {}]  # answered locally after the timeout
    assert [row.action for row in pair.rows] == ["StatusNotification"]
    assert pair.relay.state is LinkState.OFFLINE


def test_transient_refusal_is_retried_after_its_backoff_in_order() -> None:
    pair = Pair()
    pair.outage()
    pair.send(pair.charger.call("StartTransaction", START))
    local = pair.charger.answers["c1"][2]["transactionId"]
    pair.send(pair.charger.call("StopTransaction", stop(local)))
    pair.cloud.refuse.add("StartTransaction")
    pair.cloud_up = True
    pair.connect()
    assert [f[2] for f in pair.cloud.calls("StartTransaction")] == ["StartTransaction"]
    assert pair.cloud.calls("StopTransaction") == []  # the Stop waits behind its Start
    assert pair.rows[0].attempts == 1
    pair.cloud.refuse.clear()
    pair.advance(1.9)
    assert len(pair.cloud.calls("StartTransaction")) == 1
    pair.advance(0.1)
    assert len(pair.cloud.calls("StartTransaction")) == 2
    assert pair.cloud.calls("StopTransaction")[0][3]["transactionId"] == 501
    assert pair.rows == [] and pair.dead == []
