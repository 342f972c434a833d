"""The relay at the pair tier: live traffic behind a replay, chargers isolated from each other,
frames answered in order behind local answers, bad frames, and the standalone gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.core.link import LinkState
from tests.pair.harness import make_settings, running
from tests.pair.test_store_forward import back, drained, outage, status


async def test_live_calls_during_the_replay_are_answered_locally_and_queued_behind(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        await outage(pair)
        for n in (1, 2, 3):
            await pair.call(cp, "StatusNotification", status(n))
        pair.cloud.answer_delay_s = 1.0  # each replayed answer takes a second
        pair.cloud.up = True
        while not pair.cloud.calls("CP"):
            await pair.advance(0.1)
        assert pair.session("CP").state is LinkState.REPLAYING
        live = await pair.call(cp, "StatusNotification", status(4))
        assert live[2] == {}  # answered at once by the gateway, not by the cloud
        assert [f[3]["connectorId"] for f in pair.cloud.calls("CP")] == [1]
        assert [r[2]["connectorId"] for r in await pair.outbox("CP")] == [1, 2, 3, 4]
        await pair.advance(5)
        assert [f[3]["connectorId"] for f in pair.cloud.calls("CP")] == [1, 2, 3, 4]
        assert drained(pair)
        pair.cloud.answer_delay_s = 0.0
        await pair.call(cp, "Heartbeat", {})  # online: relayed live again
        assert pair.cloud.actions("CP")[-1] == "Heartbeat"


async def test_chargers_are_isolated_from_each_other(tmp_path: Path) -> None:
    def responder(cid: str, action: str, payload: dict[str, Any]) -> Any:
        if cid == "A" and action == "StatusNotification":
            return ("error", "InternalError")  # A's backlog is stuck in retries
        return pair.cloud.default(cid, action, payload)

    async with running(tmp_path) as pair:
        pair.cloud.responder = responder
        a, b = await pair.connect("A"), await pair.connect("B")
        await outage(pair)
        a.send("StatusNotification", status(1))
        b.send("StatusNotification", status(1))
        await pair.advance(2)  # held while the links try to connect, then answered locally
        assert len(await pair.outbox("A")) == 1 and len(await pair.outbox("B")) == 1
        # A bad frame from A: A gets a CALLERROR, B is unaffected.
        a.send_raw('[2, "x1", "Heartbeat", "not-an-object"]')
        await pair.settle()
        assert a.answers["x1"][:3] == [4, "x1", "FormationViolation"]
        await back(pair)
        assert drained(pair, "B") and not drained(pair, "A")
        assert pair.session("A").state is LinkState.REPLAYING
        assert len(await pair.outbox("A")) == 1 and await pair.outbox("B") == []
        assert (await pair.call(b, "Heartbeat", {}))[0] == 3
        assert pair.cloud.actions("B") == ["StatusNotification", "Heartbeat"]
        # A's closing closes A's link only.
        assert a.link is not None and b.link is not None
        b.link.far.close(1000, "bye")
        await pair.settle()
        assert not pair.cloud.links["B"].is_open and pair.cloud.links["A"].is_open


async def test_frames_sent_back_to_back_are_answered_in_order(tmp_path: Path) -> None:
    """Local answers wait for the store; frames behind them wait their turn, none overtakes,
    also beyond what the inbox holds before reading pauses."""
    async with running(tmp_path, make_settings(tmp_path, upstream={"url": ""})) as pair:
        cp = await pair.connect("CP")
        for i in range(40):
            action, payload = ("StatusNotification", status()) if i % 2 else ("Heartbeat", {})
            cp.send_raw(json.dumps([2, f"b{i}", action, payload]))
        await pair.settle()
        assert [f[1] for f in cp.received] == [f"b{i}" for i in range(40)]
        assert all(f[0] == 3 for f in cp.received)
        assert pair.session("CP").backlog == 20


async def test_invalid_json_gets_a_callerror_with_an_unknown_id(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        cp.send_raw("{not json")
        await pair.settle()
        assert cp.received[0][:3] == [4, "-1", "FormationViolation"]
        assert (await pair.call(cp, "Heartbeat", {}))[0] == 3
        assert pair.cloud.frames("CP") == [[2, "CP-1", "Heartbeat", {}]]


async def test_a_charger_s_callerror_to_a_cloud_call_reaches_the_cloud(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        cp.refused.add("UnlockConnector")
        call = pair.cloud.call("CP", "UnlockConnector", {"connectorId": 1})
        await pair.settle()
        assert pair.cloud.answer_to("CP", call) == [4, call, "NotSupported", "refused", {}]


async def test_standalone_answers_and_keeps_everything_it_must(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, upstream={"url": ""}, offline={"heartbeat_interval_s": 120})
    async with running(tmp_path, settings) as pair:
        ev = await pair.connect("CP", "2.0.1")
        boot = {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"}
        answer = await pair.call(ev, "BootNotification", boot)
        assert answer[2]["status"] == "Accepted" and answer[2]["interval"] == 120
        assert "currentTime" in (await pair.call(ev, "Heartbeat", {}))[2]
        state = {
            "timestamp": "2026-12-01T10:00:00Z",
            "connectorStatus": "Available",
            "evseId": 1,
            "connectorId": 1,
        }
        assert (await pair.call(ev, "StatusNotification", state))[2] == {}
        unsupported = await pair.call(ev, "DataTransfer", {"vendorId": "x"})
        assert unsupported[2] == "NotSupported"
        await pair.advance(60)
        assert pair.cloud.opened == []  # never dialled
        assert [r[1] for r in await pair.outbox("CP")] == ["StatusNotification"]
