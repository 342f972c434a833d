"""The charger's slot at the pair tier: the cloud's and the gateway's CALLs to a charger wait in
one queue, one outstanding at a time (OCPP-J 1.6 §4.1.1), each timed from the charger receiving
it; a full queue refuses at once; reservations go through the same slot and are recorded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.config import PortMapping
from gateway.errors import ChargerNotConnected, ChargerQueueFull, ChargerTimeout
from gateway.ocpp.frames import CallResult
from tests.pair.harness import make_settings, running
from tests.pair.test_store_forward import outage, start_tx


async def test_cloud_calls_wait_one_at_a_time_and_a_full_queue_refuses_at_once(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, chargers={"max_queued_calls": 5, "call_timeout_s": 30.0})
    async with running(tmp_path, settings) as pair:
        cp = await pair.connect("MUTE")
        cp.silent.add("GetConfiguration")
        ids = [pair.cloud.call("MUTE", "GetConfiguration", {}) for _ in range(7)]
        await pair.settle()
        assert [f[1] for f in cp.calls_received] == [ids[0]]  # in the slot; 5 wait; 1 too many
        assert pair.cloud.frames("MUTE") == [[4, ids[6], "GenericError", "charger queue full", {}]]
        # The gateway's own CALL is refused at once too.
        session = pair.session("MUTE")
        with pytest.raises(ChargerQueueFull):
            await session.call_charger("ReserveNow", {"connectorId": 1})
        # The charger wakes up: the queued CALLs reach it in order, one at a time.
        cp.silent.clear()
        cp.answer(cp.calls_received[0], {"configurationKey": []})
        await pair.settle()
        assert [f[1] for f in cp.calls_received] == ids[:6]
        assert [f[1] for f in pair.cloud.frames("MUTE") if f[0] == 3] == ids[:6]
        assert cp.max_outstanding == 1  # never a second CALL before the first was answered


async def test_a_cloud_call_s_timeout_counts_from_the_charger_receiving_it(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, chargers={"call_timeout_s": 1.0})
    async with running(tmp_path, settings) as pair:
        cp = await pair.connect("CP")
        cp.silent.add("GetConfiguration")
        a = pair.cloud.call("CP", "GetConfiguration", {})
        b = pair.cloud.call("CP", "GetConfiguration", {})
        await pair.advance(0.8)
        cp.answer(cp.calls_received[0], {"configurationKey": []})
        await pair.settle()
        assert [f[1] for f in cp.calls_received] == [a, b]
        await pair.advance(0.8)  # 1.6 s after b was queued: still within its own timeout
        cp.answer(cp.calls_received[1], {"configurationKey": []})
        await pair.settle()
        assert [f[:2] for f in pair.cloud.frames("CP")] == [[3, a], [3, b]]


async def test_a_silent_charger_times_out_and_the_next_call_gets_the_slot(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, chargers={"call_timeout_s": 2.0})
    async with running(tmp_path, settings) as pair:
        cp = await pair.connect("CP")
        cp.silent.add("GetConfiguration")
        a = pair.cloud.call("CP", "GetConfiguration", {})
        b = pair.cloud.call("CP", "Reset", {"type": "Soft"})
        await pair.advance(1.9)
        assert [f[1] for f in cp.calls_received] == [a]
        await pair.advance(0.2)
        # The cloud's own CALL timeout decides what it makes of the silence: nothing is sent
        # back for a; b gets the slot.
        assert [f[1] for f in cp.calls_received] == [a, b]
        assert pair.cloud.answer_to("CP", b) == [3, b, {"status": "Accepted"}]
        assert pair.cloud.answer_to("CP", a) is None


async def test_the_gateway_s_call_waits_behind_a_slow_cloud_call_and_succeeds(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, chargers={"call_timeout_s": 1.5})
    async with running(tmp_path, settings) as pair:
        cp = await pair.connect("CP")
        cp.silent.update({"GetConfiguration", "ReserveNow"})
        slow = pair.cloud.call("CP", "GetConfiguration", {})
        await pair.settle()
        session = pair.session("CP")
        reserve = asyncio.ensure_future(session.call_charger("ReserveNow", {"connectorId": 1}))
        await pair.advance(1.2)  # 0.8 x the timeout on the cloud's CALL
        assert not reserve.done() and [f[1] for f in cp.calls_received] == [slow]
        cp.answer(cp.calls_received[0], {"configurationKey": []})
        await pair.settle()
        assert cp.calls_received[1][2] == "ReserveNow"
        await pair.advance(1.2)  # and again on the reservation: 1.6 x the timeout in all
        cp.answer(cp.calls_received[1], {"status": "Accepted"})
        await pair.settle()
        answer = reserve.result()
        assert isinstance(answer, CallResult) and answer.payload == {"status": "Accepted"}
        assert pair.cloud.answer_to("CP", slow) == [3, slow, {"configurationKey": []}]


async def test_the_gateway_s_call_times_out_only_from_the_charger_receiving_it(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, chargers={"call_timeout_s": 1.0})
    async with running(tmp_path, settings) as pair:
        cp = await pair.connect("CP")
        cp.silent.update({"GetConfiguration", "ReserveNow"})
        pair.cloud.call("CP", "GetConfiguration", {})
        await pair.settle()
        reserve = asyncio.ensure_future(
            pair.session("CP").call_charger("ReserveNow", {"connectorId": 1})
        )
        await pair.advance(0.8)
        cp.answer(cp.calls_received[0], {"configurationKey": []})
        await pair.settle()
        await pair.advance(0.9)
        assert not reserve.done()  # 1.7 s after it was asked, 0.9 s after the charger got it
        await pair.advance(0.35)  # the hub's deadline sweep runs every 0.25 s
        assert isinstance(reserve.exception(), ChargerTimeout)


async def test_the_charger_leaving_fails_the_gateway_s_call(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        cp = await pair.connect("CP")
        cp.silent.add("ReserveNow")
        reserve = asyncio.ensure_future(
            pair.session("CP").call_charger("ReserveNow", {"connectorId": 1})
        )
        await pair.settle()
        assert cp.link is not None
        cp.link.drop()
        await pair.settle()
        assert isinstance(reserve.exception(), ChargerNotConnected)


PORTS = (
    PortMapping(id=101, charger="CP", connector=1),
    PortMapping(id=102, charger="CP", connector=2),
)


def reserve_payload(tag: str, reservation_id: int, expiry: datetime) -> dict[str, Any]:
    return {
        "connectorId": 1,
        "expiryDate": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "idTag": tag,
        "reservationId": reservation_id,
    }


async def test_a_reservation_through_the_slot_is_recorded_and_enforced_offline(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path).model_copy(update={"ports": PORTS})
    async with running(tmp_path, settings) as pair:
        cp = await pair.connect("CP")
        expiry = datetime.now(UTC) + timedelta(hours=1)
        payload = reserve_payload("alice", 5, expiry)
        answer = await pair.session("CP").call_charger("ReserveNow", payload)
        assert isinstance(answer, CallResult) and answer.payload == {"status": "Accepted"}
        await pair.reservations.on_api_reserve("CP", "1.6", payload, "Accepted")
        assert cp.calls_received[-1][2:] == ["ReserveNow", payload]
        assert pair.cloud.frames("CP") == []  # the gateway's CALL is not the cloud's business
        (row,) = await pair.reservations.list_active()
        assert (row.reservation_id, row.source, row.status) == (5, "api", "Accepted")

        await outage(pair)
        bob = await pair.call(cp, "StartTransaction", start_tx("bob"))
        assert bob[2]["idTagInfo"] == {"status": "Invalid"}
        alice = await pair.call(cp, "StartTransaction", start_tx(" Alice "))
        assert alice[2]["idTagInfo"]["status"] == "Accepted"
        other = await pair.call(cp, "StartTransaction", {**start_tx("bob"), "connectorId": 2})
        assert other[2]["idTagInfo"]["status"] == "Accepted"
        # Authorize names no connector, and connector 2 is free: not refused.
        authorize = await pair.call(cp, "Authorize", {"idTag": "bob"})
        assert authorize[2]["idTagInfo"]["status"] == "Accepted"


async def test_the_cloud_s_reserve_now_is_relayed_unchanged_and_recorded_then_cancelled(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path).model_copy(update={"ports": PORTS})
    async with running(tmp_path, settings) as pair:
        cp = await pair.connect("CP")
        payload = {
            **reserve_payload("alice", 77, datetime.now(UTC) + timedelta(hours=1)),
            "connectorId": 2,
            "parentIdTag": "FLEET",
        }
        reserve = pair.cloud.call("CP", "ReserveNow", payload)
        await pair.settle()
        assert cp.calls_received == [[2, reserve, "ReserveNow", payload]]
        assert pair.cloud.answer_to("CP", reserve) == [3, reserve, {"status": "Accepted"}]
        (row,) = await pair.reservations.list_active()
        assert (row.reservation_id, row.source, row.status) == (77, "cloud", "Accepted")
        assert (row.charger_id, row.connector_id, row.parent_id_tag) == ("CP", 2, "FLEET")

        cancel = pair.cloud.call("CP", "CancelReservation", {"reservationId": 77})
        await pair.settle()
        assert cp.calls_received[-1] == [2, cancel, "CancelReservation", {"reservationId": 77}]
        assert pair.cloud.answer_to("CP", cancel) == [3, cancel, {"status": "Accepted"}]
        assert await pair.reservations.list_active() == []


async def test_a_start_with_the_reservation_id_closes_the_reservation(tmp_path: Path) -> None:
    settings = make_settings(tmp_path).model_copy(update={"ports": PORTS})
    async with running(tmp_path, settings) as pair:
        cp = await pair.connect("CP")
        payload = reserve_payload("alice", 42, datetime.now(UTC) + timedelta(hours=1))
        pair.cloud.call("CP", "ReserveNow", payload)
        await pair.settle()
        assert len(await pair.reservations.list_active()) == 1
        start = {**start_tx("alice"), "reservationId": 42}
        await pair.call(cp, "StartTransaction", start)
        assert pair.cloud.calls("CP", "StartTransaction")[-1][3] == start  # relayed unchanged
        assert await pair.reservations.list_active() == []


async def test_a_reserved_evse_accepts_only_the_reserved_token_offline_201(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path).model_copy(
        update={"ports": (PortMapping(id=201, charger="EV", connector=1),)}
    )
    async with running(tmp_path, settings) as pair:
        ev = await pair.connect("EV", "2.0.1")
        expiry = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
        payload = {
            "id": 5,
            "expiryDateTime": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "idToken": {"idToken": "alice", "type": "ISO14443"},
            "evseId": 1,
        }
        answer = await pair.session("EV").call_charger("ReserveNow", payload)
        assert isinstance(answer, CallResult) and answer.payload == {"status": "Accepted"}
        await pair.reservations.on_api_reserve("EV", "2.0.1", payload, "Accepted")
        await outage(pair)

        def started(tag: str) -> dict[str, Any]:
            return {
                "eventType": "Started",
                "timestamp": "2026-12-01T10:00:00Z",
                "triggerReason": "Authorized",
                "seqNo": 0,
                "transactionInfo": {"transactionId": f"tx-{tag}"},
                "evse": {"id": 1, "connectorId": 1},
                "idToken": {"idToken": tag, "type": "ISO14443"},
            }

        # EV has one known EVSE, so even an Authorize (no EVSE named) is refused for bob.
        bob = {"idToken": {"idToken": "bob", "type": "ISO14443"}}
        authorize = await pair.call(ev, "Authorize", bob)
        assert authorize[2]["idTokenInfo"]["status"] == "NotAtThisTime"
        refused = await pair.call(ev, "TransactionEvent", started("bob"))
        assert refused[2]["idTokenInfo"]["status"] == "NotAtThisTime"
        assert refused[2]["idTokenInfo"]["cacheExpiryDateTime"].startswith(
            expiry.strftime("%Y-%m-%dT%H:%M:%S")
        )
        alice = await pair.call(ev, "TransactionEvent", started("ALICE"))
        assert alice[2]["idTokenInfo"]["status"] == "Accepted"
        # Both stored for the cloud with offline true, in order.
        assert [r[2]["idToken"]["idToken"] for r in await pair.outbox("EV")] == ["bob", "ALICE"]
