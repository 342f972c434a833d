"""Store and forward at the pair tier: offline answers, the durable queue, ordered replay, 1.6
transaction ids bound and rewritten both ways, retries and dead letters (tests/pair/harness.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.core.link import LinkState
from gateway.core.txmap import LOCAL_TX_MIN, is_local
from tests.pair.harness import Pair, SimCharger, open_pair, running

T0 = "2026-12-01T10:00:00Z"
BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}


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


def status(connector: int = 1, state: str = "Available") -> dict[str, Any]:
    return {"connectorId": connector, "errorCode": "NoError", "status": state}


async def outage(pair: Pair) -> None:
    """The cloud goes away: every link drops and reconnects are refused."""
    pair.cloud.up = False
    pair.cloud.drop()
    await pair.settle()


async def back(pair: Pair, seconds: float = 5.0) -> None:
    """The cloud returns; the clock runs past the reconnect backoff and the replay."""
    pair.cloud.up = True
    await pair.advance(seconds)


def drained(pair: Pair, charger_id: str = "CP") -> bool:
    session = pair.session(charger_id)
    return session.backlog == 0 and session.state is LinkState.ONLINE


async def offline_transaction(pair: Pair, cp: SimCharger) -> int:
    """Start, MeterValues and Stop while the cloud is down; the local transaction id."""
    start = await pair.call(cp, "StartTransaction", start_tx())
    local = start[2]["transactionId"]
    assert is_local(local) and local >= LOCAL_TX_MIN
    assert start[2]["idTagInfo"]["status"] == "Accepted"
    assert (await pair.call(cp, "MeterValues", meter(local, 500)))[2] == {}
    stop = await pair.call(cp, "StopTransaction", stop_tx(local))
    assert stop[2]["idTagInfo"]["status"] == "Accepted"
    return int(local)


async def test_online_frames_are_relayed_unchanged_both_ways(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        boot = await pair.call(cp, "BootNotification", BOOT)
        assert boot[2]["status"] == "Accepted" and boot[2]["interval"] == 300
        start = await pair.call(cp, "StartTransaction", start_tx())
        assert start[2]["transactionId"] == 501  # the cloud's id, unchanged
        cloud_call = pair.cloud.call("CP", "Reset", {"type": "Soft"})
        await pair.settle()
        assert cp.calls_received == [[2, cloud_call, "Reset", {"type": "Soft"}]]
        assert pair.cloud.answer_to("CP", cloud_call) == [3, cloud_call, {"status": "Accepted"}]
        assert pair.cloud.calls("CP") == [
            [2, "CP-1", "BootNotification", BOOT],
            [2, "CP-2", "StartTransaction", start_tx()],
        ]
        assert await pair.outbox("CP") == []


async def test_offline_transaction_replayed_in_order_with_the_cloud_id(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        await pair.call(cp, "Heartbeat", {})
        await outage(pair)
        local = await offline_transaction(pair, cp)
        assert (await pair.call(cp, "Heartbeat", {}))[2]["currentTime"]  # answered, not stored
        assert [r[:2] for r in await pair.outbox("CP")] == [
            ("CP-2", "StartTransaction"),
            ("CP-3", "MeterValues"),
            ("CP-4", "StopTransaction"),
        ]
        assert pair.session("CP").backlog == 3
        assert pair.cloud.actions("CP") == ["Heartbeat"]

        await back(pair)
        replayed = pair.cloud.calls("CP")[1:]
        assert [f[1:3] for f in replayed] == [
            ["CP-2", "StartTransaction"],
            ["CP-3", "MeterValues"],
            ["CP-4", "StopTransaction"],
        ]
        assert replayed[0][3] == start_tx()
        assert replayed[1][3] == meter(501, 500)
        assert replayed[2][3] == stop_tx(501)
        assert await pair.outbox("CP") == []
        assert drained(pair)
        assert pair.session("CP").txids.local_to_cloud == {local: 501}
        await pair.call(cp, "Heartbeat", {})  # live again
        assert pair.cloud.actions("CP")[-1] == "Heartbeat"


async def test_later_messages_and_a_remote_stop_are_rewritten_both_ways(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        await outage(pair)
        local = (await pair.call(cp, "StartTransaction", start_tx()))[2]["transactionId"]
        await back(pair)
        assert drained(pair)
        assert pair.session("CP").txids.local_to_cloud == {local: 501}
        # The charger keeps its local id; the cloud sees its own.
        await pair.call(cp, "MeterValues", meter(local, 700))
        assert pair.cloud.calls("CP")[-1][3] == meter(501, 700)
        # The cloud's RemoteStopTransaction with its id reaches the charger with the local id.
        remote = pair.cloud.call("CP", "RemoteStopTransaction", {"transactionId": 501})
        await pair.settle()
        assert cp.calls_received[-1][2:] == ["RemoteStopTransaction", {"transactionId": local}]
        assert pair.cloud.answer_to("CP", remote) == [3, remote, {"status": "Accepted"}]
        await pair.call(cp, "StopTransaction", stop_tx(local))
        assert pair.cloud.calls("CP")[-1][3] == stop_tx(501)
        ids = [f[3]["transactionId"] for f in pair.cloud.calls("CP") if "transactionId" in f[3]]
        assert ids == [501, 501] and not any(is_local(i) for i in ids)


async def test_the_binding_survives_a_restart_of_the_gateway(tmp_path: Path) -> None:
    pair = await open_pair(tmp_path)
    try:
        cp = await pair.connect("CP")
        await outage(pair)
        local = (await pair.call(cp, "StartTransaction", start_tx()))[2]["transactionId"]
        await back(pair)
        assert drained(pair)
        pair = await pair.restart()
        cp = await pair.connect("CP")
        await pair.call(cp, "StopTransaction", stop_tx(local))
        assert pair.cloud.calls("CP")[-1][2:] == ["StopTransaction", stop_tx(501)]
    finally:
        await pair.close()


async def test_unanswered_call_is_answered_locally_at_the_timeout_and_replayed(
    tmp_path: Path,
) -> None:
    silent = {"on": True}

    def responder(cid: str, action: str, payload: dict[str, Any]) -> Any:
        if silent["on"] and action == "StatusNotification":
            return None
        return pair.cloud.default(cid, action, payload)

    async with running(tmp_path) as pair:
        pair.cloud.responder = responder
        cp = await pair.connect("CP")
        mid = cp.send("StatusNotification", status(1, "Charging"))
        await pair.advance(9.9)
        assert mid not in cp.answers  # the cloud has upstream.call_timeout_s (10 s)
        await pair.advance(0.2)
        assert cp.answers[mid] == [3, mid, {}]  # answered locally
        assert [r[:2] for r in await pair.outbox("CP")] == [(mid, "StatusNotification")]
        # The link was closed and opened again at once: the row is replayed, unanswered too.
        assert [f[1] for f in pair.cloud.calls("CP")] == [mid, mid]
        assert len(pair.cloud.opened) == 2
        silent["on"] = False
        await pair.advance(10.1)  # its timeout: again a new link and the same message id
        assert [f[1] for f in pair.cloud.calls("CP")] == [mid, mid, mid]
        assert await pair.outbox("CP") == [] and drained(pair)


async def test_backlog_drains_after_the_charger_left_and_the_boot_goes_first(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as pair:
        pair.cloud.up = False
        cp = await pair.connect("CP")
        assert (await pair.call(cp, "BootNotification", BOOT))[2]["status"] == "Accepted"
        await pair.call(cp, "StatusNotification", status(0))
        assert cp.link is not None
        cp.link.far.close(1000, "bye")
        await pair.settle()
        assert not pair.session("CP").connected
        await back(pair, 10)
        assert pair.cloud.calls("CP") == [
            [2, "CP-1", "BootNotification", BOOT],
            [2, "CP-2", "StatusNotification", status(0)],
        ]
        assert not pair.cloud.links["CP"].is_open  # drained: the link closed again
        assert pair.hub.get("CP") is None  # and the session forgotten
        assert await pair.outbox("CP") == []


async def test_the_cloud_refusing_a_replayed_message_dead_letters_it_and_goes_on(
    tmp_path: Path,
) -> None:
    def responder(cid: str, action: str, payload: dict[str, Any]) -> Any:
        if action == "StatusNotification" and payload["connectorId"] == 7:
            return ("error", "PropertyConstraintViolation")
        return pair.cloud.default(cid, action, payload)

    async with running(tmp_path) as pair:
        pair.cloud.responder = responder
        cp = await pair.connect("CP")
        await outage(pair)
        await pair.call(cp, "StatusNotification", status(7))
        await pair.call(cp, "StatusNotification", status(1))
        await back(pair)
        assert [f[3]["connectorId"] for f in pair.cloud.calls("CP")] == [7, 1]
        dead = await pair.store.dead_letters()
        assert [(d["action"], d["error_code"]) for d in dead] == [
            ("StatusNotification", "PropertyConstraintViolation")
        ]
        assert pair.hub.dead_letters == 1 and pair.hub.stats.dead_lettered == 1
        assert await pair.outbox("CP") == [] and drained(pair)


async def test_a_transient_callerror_is_retried_after_its_backoff_in_order(tmp_path: Path) -> None:
    refusals = {"left": 1}

    def responder(cid: str, action: str, payload: dict[str, Any]) -> Any:
        if action == "StartTransaction" and refusals["left"]:
            refusals["left"] -= 1
            return ("error", "InternalError")
        return pair.cloud.default(cid, action, payload)

    async with running(tmp_path) as pair:
        pair.cloud.responder = responder
        cp = await pair.connect("CP")
        await outage(pair)
        local = (await pair.call(cp, "StartTransaction", start_tx()))[2]["transactionId"]
        await pair.call(cp, "StopTransaction", stop_tx(local))
        pair.cloud.up = True
        while not pair.cloud.calls("CP"):
            await pair.advance(0.05)
        rows = await pair.store.pending("CP")
        assert [(r.action, r.attempts) for r in rows] == [
            ("StartTransaction", 1),
            ("StopTransaction", 0),
        ]
        assert rows[0].next_attempt_at > rows[0].created_at  # its backoff, in the row
        await pair.advance(1.9)
        assert pair.cloud.actions("CP") == ["StartTransaction"]  # the Stop waits behind it
        await pair.advance(0.35)  # 2 s after the refusal (the hub's sweep runs every 0.25 s)
        assert pair.cloud.actions("CP")[:2] == ["StartTransaction"] * 2
        await pair.advance(10)
        assert pair.cloud.actions("CP") == [
            "StartTransaction",
            "StartTransaction",
            "StopTransaction",
        ]
        assert pair.cloud.calls("CP")[-1][3] == stop_tx(501)
        assert await pair.store.dead_letter_count() == 0 and await pair.outbox("CP") == []


async def test_a_replayed_start_the_cloud_blocks_is_still_bound_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def responder(cid: str, action: str, payload: dict[str, Any]) -> Any:
        if action == "StartTransaction":
            return {"transactionId": 77, "idTagInfo": {"status": "Blocked"}}
        return pair.cloud.default(cid, action, payload)

    async with running(tmp_path) as pair:
        pair.cloud.responder = responder
        cp = await pair.connect("CP")
        await outage(pair)
        local = (await pair.call(cp, "StartTransaction", start_tx()))[2]["transactionId"]
        await pair.call(cp, "StopTransaction", stop_tx(local))
        await back(pair)
        assert pair.session("CP").txids.local_to_cloud == {local: 77}
        assert pair.cloud.calls("CP")[-1][3] == stop_tx(77)
    assert any(
        "cloud answered Blocked to the replayed StartTransaction" in r.getMessage()
        for r in caplog.records
    )


async def test_a_full_disk_answers_internal_error_and_acknowledges_nothing(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as pair:
        pair.cloud.up = False
        cp = await pair.connect("CP")
        pages = (await pair.store.fetchone("PRAGMA page_count"))[0]  # type: ignore[index]
        await pair.store.fetchone(f"PRAGMA max_page_count = {pages}")  # the disk is full
        answers = [await pair.call(cp, "StatusNotification", status()) for _ in range(60)]
        refused = [a for a in answers if a[0] == 4]
        assert refused and all(a[2] == "InternalError" for a in refused)
        acknowledged = len(answers) - len(refused)
        data = await pair.call(cp, "DataTransfer", {"vendorId": "x"})
        assert data[2] == "NotSupported"  # still serving
        await pair.store.fetchone("PRAGMA max_page_count = 1073741823")
        assert (await pair.call(cp, "StatusNotification", status()))[0] == 3
        assert len(await pair.outbox("CP")) == acknowledged + 1


async def test_the_depot_view_shows_the_local_id_offline_and_the_cloud_id_after_replay(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        await outage(pair)
        local = (await pair.call(cp, "StartTransaction", start_tx()))[2]["transactionId"]
        await pair.call(cp, "MeterValues", meter(local, 1400))
        detail = pair.hub.depot.detail("CP")
        assert detail is not None
        assert [(t["id"], t["offline"], t["energyWh"]) for t in detail["transactions"]] == [
            (local, True, 1300.0)  # meterStart 100
        ]
        await back(pair)
        detail = pair.hub.depot.detail("CP")
        assert detail is not None
        assert [(t["id"], t["offline"]) for t in detail["transactions"]] == [(501, False)]
