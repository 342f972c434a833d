"""The depot fold on strings: OCPP 1.6 and 2.0.1 sequences in, per-charger state out."""

from __future__ import annotations

import json
from typing import Any

from gateway.core.depot import FOLDED_ANSWERS, FOLDED_CALLS, DepotView, decode_meter
from gateway.core.txmap import LOCAL_TX_MIN

T0 = 1_800_000_000.0


def feed(view: DepotView, charger: str, version: str, frames: list[str], now: float = T0) -> None:
    """Fold charger CALLs and their answers given as OCPP-J text, as the session would.

    An answer frame is folded against the CALL with its id; ``"local:"`` before an answer means
    the gateway gave it (the cloud was unreachable).
    """
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    for text in frames:
        by_cloud = not text.startswith("local:")
        frame = json.loads(text.removeprefix("local:"))
        if frame[0] == 2:
            _, mid, action, payload = frame
            calls[mid] = (action, payload)
            if action in FOLDED_CALLS:
                view.charger_call(charger, version, action, payload, now)
        else:
            action, payload = calls.pop(frame[1])
            if action in FOLDED_ANSWERS:
                view.answered(charger, version, action, payload, frame[2], by_cloud=by_cloud)


def mv(tx: int | None, wh: float, w: float | None = None, connector: int = 1) -> dict[str, Any]:
    samples: list[dict[str, Any]] = [
        {"value": str(wh), "measurand": "Energy.Active.Import.Register", "unit": "Wh"}
    ]
    if w is not None:
        samples.append({"value": str(w / 1000), "measurand": "Power.Active.Import", "unit": "kW"})
    body: dict[str, Any] = {
        "connectorId": connector,
        "meterValue": [{"timestamp": "2027-01-15T08:05:00Z", "sampledValue": samples}],
    }
    if tx is not None:
        body["transactionId"] = tx
    return body


def call(mid: str, action: str, payload: dict[str, Any]) -> str:
    return json.dumps([2, mid, action, payload])


def result(mid: str, payload: dict[str, Any], *, local: bool = False) -> str:
    return ("local:" if local else "") + json.dumps([3, mid, payload])


BOOT_16 = call(
    "b",
    "BootNotification",
    {"chargePointVendor": "Alfen", "chargePointModel": "Eve", "firmwareVersion": "6.1"},
)
START_16 = call(
    "s",
    "StartTransaction",
    {"connectorId": 1, "idTag": "04A1B2", "meterStart": 1000, "timestamp": "2027-01-15T08:00:00Z"},
)


def test_16_online_session_from_boot_to_stop() -> None:
    view = DepotView()
    feed(
        view,
        "CP-1",
        "1.6",
        [
            BOOT_16,
            result("b", {"status": "Accepted"}),
            call(
                "st",
                "StatusNotification",
                {"connectorId": 1, "errorCode": "NoError", "status": "Charging"},
            ),
            call(
                "st0",
                "StatusNotification",
                {"connectorId": 0, "errorCode": "NoError", "status": "Available"},
            ),
            START_16,
            result("s", {"transactionId": 42, "idTagInfo": {"status": "Accepted"}}),
            call("m", "MeterValues", mv(42, 3500, 11000)),
        ],
    )
    d = view.detail("CP-1")
    assert d is not None
    assert (d["vendor"], d["model"], d["firmware"]) == ("Alfen", "Eve", "6.1")
    assert d["connectors"] == [
        {
            "id": "0",
            "status": "Available",
            "errorCode": "NoError",
            "updatedAt": "2027-01-15T08:00:00.000Z",
        },
        {
            "id": "1",
            "status": "Charging",
            "errorCode": "NoError",
            "updatedAt": "2027-01-15T08:00:00.000Z",
        },
    ]
    assert d["transactions"] == [
        {
            "id": 42,
            "connectorId": "1",
            "idTag": "04A1B2",
            "startedAt": "2027-01-15T08:00:00Z",
            "energyWh": 2500.0,
            "powerW": 11000.0,
            "offline": False,
        }
    ]
    feed(
        view,
        "CP-1",
        "1.6",
        [
            call(
                "x",
                "StopTransaction",
                {"transactionId": 42, "meterStop": 4000, "timestamp": "2027-01-15T09:00:00Z"},
            )
        ],
    )
    assert view.detail("CP-1")["transactions"] == []  # type: ignore[index]


def test_16_offline_transaction_gets_its_cloud_id_when_replay_binds_it() -> None:
    view = DepotView()
    local = LOCAL_TX_MIN + 7
    feed(
        view,
        "CP-1",
        "1.6",
        [
            START_16,
            result("s", {"transactionId": local, "idTagInfo": {"status": "Accepted"}}, local=True),
            call("m", "MeterValues", mv(local, 1800)),  # the charger uses the local id
        ],
    )
    (tx,) = view.detail("CP-1")["transactions"]  # type: ignore[index]
    assert (tx["id"], tx["offline"], tx["energyWh"]) == (local, True, 800.0)
    view.take_dirty(touched=True)

    view.bind("CP-1", local, 9001)  # the replayed StartTransaction was answered
    (tx,) = view.detail("CP-1")["transactions"]  # type: ignore[index]
    assert (tx["id"], tx["offline"]) == (9001, False)
    assert [cid for cid, _ in view.take_dirty(touched=False)] == ["CP-1"]

    # The charger keeps using its local id; the view follows it under the cloud's id.
    feed(view, "CP-1", "1.6", [call("m2", "MeterValues", mv(local, 2300))])
    assert view.detail("CP-1")["transactions"][0]["energyWh"] == 1300.0  # type: ignore[index]
    feed(
        view,
        "CP-1",
        "1.6",
        [
            call(
                "x",
                "StopTransaction",
                {"transactionId": local, "meterStop": 2300, "timestamp": "2027-01-15T09:00:00Z"},
            )
        ],
    )
    assert view.detail("CP-1")["transactions"] == []  # type: ignore[index]


def test_16_replayed_start_answer_binds_through_answered() -> None:
    view = DepotView()
    local = LOCAL_TX_MIN
    feed(view, "CP-1", "1.6", [START_16, result("s", {"transactionId": local}, local=True)])
    start = json.loads(START_16)[3]
    view.answered(
        "CP-1",
        "1.6",
        "StartTransaction",
        start,
        {"transactionId": 77},
        by_cloud=True,
        local_tx_id=local,
    )
    (tx,) = view.detail("CP-1")["transactions"]  # type: ignore[index]
    assert (tx["id"], tx["offline"]) == (77, False)


def test_16_meter_values_of_a_transaction_whose_start_was_not_seen() -> None:
    view = DepotView()
    feed(view, "CP-1", "1.6", [call("m", "MeterValues", mv(555, 12000, 7400))])
    (tx,) = view.detail("CP-1")["transactions"]  # type: ignore[index]
    assert tx == {
        "id": 555,
        "connectorId": "1",
        "idTag": None,
        "startedAt": None,
        "energyWh": None,
        "powerW": 7400.0,
        "offline": False,
    }


def test_16_meter_values_without_transaction_id_go_to_the_connectors_transaction() -> None:
    view = DepotView()
    feed(
        view,
        "CP-1",
        "1.6",
        [START_16, result("s", {"transactionId": 5}), call("m", "MeterValues", mv(None, 1250))],
    )
    assert view.detail("CP-1")["transactions"][0]["energyWh"] == 250.0  # type: ignore[index]
    feed(view, "CP-1", "1.6", [call("m", "MeterValues", mv(None, 9999, connector=2))])
    assert view.detail("CP-1")["transactions"][0]["energyWh"] == 250.0  # type: ignore[index]


BOOT_201 = call(
    "b",
    "BootNotification",
    {
        "chargingStation": {"vendorName": "ABB", "model": "Terra AC", "firmwareVersion": "1.8"},
        "reason": "PowerUp",
    },
)


def te(mid: str, event: str, seq: int, **extra: Any) -> str:
    payload: dict[str, Any] = {
        "eventType": event,
        "timestamp": "2027-01-15T08:00:00Z",
        "triggerReason": "Authorized",
        "seqNo": seq,
        "transactionInfo": {"transactionId": "tx-abc"},
        **extra,
    }
    return call(mid, "TransactionEvent", payload)


def meter_201(wh: float, w: float) -> list[dict[str, Any]]:
    return [
        {
            "timestamp": "2027-01-15T08:00:00Z",
            "sampledValue": [
                {
                    "value": wh / 1000,
                    "measurand": "Energy.Active.Import.Register",
                    "unitOfMeasure": {"unit": "kWh"},
                },
                {"value": w / 3, "measurand": "Power.Active.Import", "phase": "L1"},
                {"value": w / 3, "measurand": "Power.Active.Import", "phase": "L2"},
                {"value": w / 3, "measurand": "Power.Active.Import", "phase": "L3"},
            ],
        }
    ]


def test_201_transaction_events_by_evse_and_connector() -> None:
    view = DepotView()
    feed(
        view,
        "CS-2",
        "2.0.1",
        [
            BOOT_201,
            call(
                "st",
                "StatusNotification",
                {
                    "timestamp": "2027-01-15T08:00:00Z",
                    "connectorStatus": "Occupied",
                    "evseId": 1,
                    "connectorId": 1,
                },
            ),
            te(
                "t1",
                "Started",
                0,
                evse={"id": 1, "connectorId": 1},
                idToken={"idToken": "AABBCC", "type": "ISO14443"},
                meterValue=meter_201(10000, 0),
            ),
            result("t1", {"idTokenInfo": {"status": "Accepted"}}),
            te("t2", "Updated", 1, meterValue=meter_201(12500, 22000)),
            result("t2", {}),
        ],
    )
    d = view.detail("CS-2")
    assert d is not None
    assert (d["vendor"], d["model"], d["firmware"]) == ("ABB", "Terra AC", "1.8")
    assert d["connectors"] == [
        {
            "id": "1/1",
            "status": "Occupied",
            "errorCode": None,
            "updatedAt": "2027-01-15T08:00:00.000Z",
        }
    ]
    assert d["transactions"] == [
        {
            "id": "tx-abc",
            "connectorId": "1/1",
            "idTag": "AABBCC",
            "startedAt": "2027-01-15T08:00:00Z",
            "energyWh": 2500.0,
            "powerW": 22000.0,
            "offline": False,
        }
    ]
    feed(view, "CS-2", "2.0.1", [te("t3", "Ended", 2), result("t3", {})])
    assert view.detail("CS-2")["transactions"] == []  # type: ignore[index]


def test_201_offline_transaction_until_the_cloud_answers_one_of_its_events() -> None:
    view = DepotView()
    feed(
        view,
        "CS-2",
        "2.0.1",
        [te("t1", "Started", 0, evse={"id": 2, "connectorId": 1}), result("t1", {}, local=True)],
    )
    (tx,) = view.detail("CS-2")["transactions"]  # type: ignore[index]
    assert (tx["id"], tx["offline"], tx["connectorId"]) == ("tx-abc", True, "2/1")
    feed(view, "CS-2", "2.0.1", [te("t2", "Updated", 1), result("t2", {}, local=True)])
    assert view.detail("CS-2")["transactions"][0]["offline"] is True  # type: ignore[index]
    # Replay delivers the Started event: the cloud knows the transaction now.
    started = json.loads(te("t1", "Started", 0))[3]
    view.answered("CS-2", "2.0.1", "TransactionEvent", started, {}, by_cloud=True)
    assert view.detail("CS-2")["transactions"][0]["offline"] is False  # type: ignore[index]


def test_21_is_folded_like_201() -> None:
    view = DepotView()
    feed(
        view,
        "CS-3",
        "2.1",
        [BOOT_201, te("t1", "Started", 0, evse={"id": 1, "connectorId": 2}), result("t1", {})],
    )
    d = view.detail("CS-3")
    assert d is not None and d["vendor"] == "ABB" and d["transactions"][0]["connectorId"] == "1/2"


def test_dirty_only_on_change_and_meter_readings_only_touch() -> None:
    view = DepotView()
    status = call(
        "st", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging"}
    )
    feed(view, "CP-1", "1.6", [BOOT_16, status])
    assert [c for c, _ in view.take_dirty(touched=False)] == ["CP-1"]
    feed(view, "CP-1", "1.6", [BOOT_16, status], now=T0 + 60)  # the same picture again
    assert view.take_dirty(touched=False) == []
    assert view.detail("CP-1")["connectors"][0]["updatedAt"] == "2027-01-15T08:00:00.000Z"  # type: ignore[index]
    feed(view, "CP-1", "1.6", [call("m", "MeterValues", mv(42, 5000))])  # adopts tx 42: a change
    view.take_dirty(touched=False)
    feed(view, "CP-1", "1.6", [call("m", "MeterValues", mv(42, 5100))])
    assert view.take_dirty(touched=False) == []
    assert view.touched == {"CP-1"}
    (record,) = view.take_dirty(touched=True)
    assert record[1]["transactions"][0]["registerWh"] == 5100.0
    assert view.touched == set()


def test_record_round_trip_restores_the_same_picture() -> None:
    view = DepotView()
    local = LOCAL_TX_MIN + 1
    feed(
        view,
        "CP-1",
        "1.6",
        [
            BOOT_16,
            START_16,
            result("s", {"transactionId": local}, local=True),
            call("m", "MeterValues", mv(local, 1500, 3000)),
        ],
    )
    feed(
        view, "CS-2", "2.0.1", [BOOT_201, te("t1", "Started", 0, evse={"id": 1, "connectorId": 1})]
    )
    records = view.take_dirty(touched=True)
    restored = DepotView()
    for charger_id, record in records:
        restored.load(charger_id, json.loads(json.dumps(record)))
    for charger_id in ("CP-1", "CS-2"):
        assert restored.detail(charger_id) == view.detail(charger_id)
    assert restored.dirty == set()
    restored.bind("CP-1", local, 4242)  # keys survive the JSON round trip (int in 1.6)
    assert restored.detail("CP-1")["transactions"][0]["id"] == 4242  # type: ignore[index]


def test_malformed_payloads_are_ignored_not_raised() -> None:
    view = DepotView()
    malformed: list[tuple[str, dict[str, Any]]] = [
        ("StatusNotification", {"connectorId": [1], "status": {"x": 1}}),
        ("MeterValues", {"connectorId": 1, "transactionId": [1], "meterValue": "x"}),
        (
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": 3,
                "meterValue": [{"sampledValue": [{"value": "n/a"}, 5]}],
            },
        ),
        ("StopTransaction", {"transactionId": {"a": 1}}),
        ("BootNotification", {"chargePointVendor": 5}),
    ]
    for action, payload in malformed:
        view.charger_call("CP-1", "1.6", action, payload, T0)
    view.charger_call(
        "CS-2", "2.0.1", "TransactionEvent", {"eventType": "Started", "transactionInfo": "x"}, T0
    )
    view.charger_call(
        "CS-2",
        "2.0.1",
        "TransactionEvent",
        {
            "eventType": "Updated",
            "transactionInfo": {"transactionId": "t"},
            "evse": {"id": 1},
            "idToken": 7,
        },
        T0,
    )
    view.answered(
        "CP-1",
        "1.6",
        "StartTransaction",
        {"connectorId": 1},
        {"transactionId": "nope"},
        by_cloud=True,
    )
    d = view.detail("CP-1")
    assert d is not None and d["vendor"] is None
    assert [t["id"] for t in d["transactions"]] == [3]
    assert d["transactions"][0]["energyWh"] is None
    assert view.detail("CS-2")["transactions"][0]["connectorId"] == "1/1"  # type: ignore[index]


def test_bounds_on_chargers_connectors_and_transactions() -> None:
    view = DepotView(max_chargers=2)
    for n in range(3):
        view.charger_call(
            f"CP-{n}", "1.6", "StatusNotification", {"connectorId": 1, "status": "Available"}, T0
        )
    assert sorted(view.chargers) == ["CP-0", "CP-1"]
    for n in range(100):
        view.charger_call(
            "CP-0", "1.6", "StatusNotification", {"connectorId": n, "status": "Available"}, T0
        )
        view.charger_call("CP-0", "1.6", "MeterValues", mv(n, 1), T0)
    assert len(view.chargers["CP-0"].connectors) == 64
    txs = view.chargers["CP-0"].transactions
    assert len(txs) == 64 and next(iter(txs)) == 36  # the oldest went first


def test_decode_meter_units_totals_and_phases() -> None:
    assert decode_meter([{"sampledValue": [{"value": "12.5", "unit": "kWh"}]}]) == (12500.0, None)
    assert decode_meter(
        [
            {
                "sampledValue": [
                    {
                        "value": 2.0,
                        "measurand": "Power.Active.Import",
                        "unitOfMeasure": {"unit": "W", "multiplier": 3},
                    }
                ]
            }
        ]
    ) == (None, 2000.0)
    both = [
        {"value": "100", "measurand": "Power.Active.Import", "phase": "L1"},
        {"value": "7000", "measurand": "Power.Active.Import"},
        {"value": "5", "measurand": "Energy.Active.Import.Register", "phase": "L1"},
    ]
    assert decode_meter([{"sampledValue": both}]) == (None, 7000.0)
    assert decode_meter(None) == (None, None)


def test_16_available_connector_ends_a_transaction_whose_stop_was_not_seen() -> None:
    view = DepotView()
    feed(view, "CP-1", "1.6", [START_16, result("s", {"transactionId": 5})])
    other = call("s2", "StartTransaction", {**json.loads(START_16)[3], "connectorId": 2})
    feed(view, "CP-1", "1.6", [other, result("s2", {"transactionId": 6})])
    view.take_dirty(touched=True)
    available = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
    feed(view, "CP-1", "1.6", [call("a", "StatusNotification", available)])
    assert [t["id"] for t in view.detail("CP-1")["transactions"]] == [6]  # type: ignore[index]
    assert view.dirty == {"CP-1"}


def test_sample_keys_name_what_a_later_call_makes_redundant() -> None:
    from gateway.core.depot import sample_key

    meter = {"connectorId": 1, "transactionId": 5, "meterValue": []}
    assert sample_key("1.6", "MeterValues", meter) == ("MeterValues", 1, None, 5)
    assert sample_key("1.6", "MeterValues", {**meter, "transactionId": 6}) != sample_key(
        "1.6", "MeterValues", meter
    )
    status = {"connectorId": 2, "errorCode": "NoError", "status": "Charging"}
    assert sample_key("1.6", "StatusNotification", status) == ("StatusNotification", 2, None)
    assert sample_key("1.6", "StatusNotification", {**status, "status": "Available"}) is None
    available = {"evseId": 1, "connectorId": 1, "connectorStatus": "Available"}
    assert sample_key("2.0.1", "StatusNotification", available) == ("StatusNotification", 1, 1)
    assert sample_key("1.6", "MeterValues", {"connectorId": {"x": 1}}) is None  # unhashable
    assert sample_key("1.6", "StopTransaction", {"transactionId": 5}) is None
