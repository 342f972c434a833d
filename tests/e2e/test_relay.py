"""Online relay over real loopback sockets: frames pass unchanged in both directions."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.typing import Subprotocol

from gateway import __version__
from tests.support import FakeCloud, charger, make_settings, running_gateway, wait_for

METER_VALUES = {
    "connectorId": 1,
    "transactionId": 42,
    "meterValue": [
        {
            "timestamp": "2026-11-21T12:00:00Z",
            "sampledValue": [
                {"value": "1234.5", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                {"value": "16.1", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
            ],
        }
    ],
}


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_frames_relayed_unchanged_both_ways(
    tmp_path: Any, cloud: FakeCloud, version: str
) -> None:
    settings = make_settings(tmp_path, upstream={"url": cloud.url})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP-1", version) as cp:
        assert cp.ws.subprotocol == f"ocpp{version}"
        payload = (
            METER_VALUES
            if version == "1.6"
            else {"evseId": 1, "meterValue": METER_VALUES["meterValue"]}
        )
        text = json.dumps([2, "odd-id-7", "MeterValues", payload], separators=(", ", ": "))
        answer = await cp.expect_raw_answer(text, "odd-id-7")
        assert answer == [3, "odd-id-7", {}]
        # Same id, same payload at the cloud; the path carries the charge point id.
        assert cloud.raw["CP-1"] == [text]  # byte for byte, spacing included
        assert cloud.paths == ["/ocpp/CP-1"]
        assert cloud.connections["CP-1"].subprotocol == f"ocpp{version}"

        # Cloud-originated CALL reaches the charger with the cloud's id; the answer goes back.
        call_task = asyncio.create_task(
            cloud.call(
                "CP-1",
                "GetConfiguration" if version == "1.6" else "GetVariables",
                {},
                message_id="c-99",
            )
        )
        incoming = await asyncio.wait_for(cp.calls.get(), 5)
        assert incoming[:2] == [2, "c-99"]
        await cp.answer(incoming, {"configurationKey": []})
        assert await call_task == [3, "c-99", {"configurationKey": []}]


async def test_two_chargers_isolated_and_closing_charger_closes_upstream(
    tmp_path: Any, cloud: FakeCloud
) -> None:
    settings = make_settings(tmp_path, upstream={"url": cloud.url})
    async with running_gateway(settings) as gw:
        async with charger(gw.charger_port, "A") as a, charger(gw.charger_port, "B") as b:
            await a.call("Heartbeat", {})
            await b.call("Heartbeat", {})
            # A bad frame from A: A gets a CALLERROR, B is unaffected.
            err = await a.expect_raw_answer('[2, "x1", "Heartbeat", "not-an-object"]', "x1")
            assert err[0] == 4 and err[2] == "FormationViolation"
            assert (await b.call("Heartbeat", {}))[0] == 3
            assert len(cloud.calls("A")) == 1 and len(cloud.calls("B")) == 2
            await cloud.wait_connected("A")
        # Chargers gone: their upstream connections are closed too.
        await wait_for(lambda: not cloud.connections)


async def test_subprotocol_mismatch_closes_after_handshake(tmp_path: Any) -> None:
    async with running_gateway(make_settings(tmp_path)) as gw:
        ws = await connect(
            f"ws://127.0.0.1:{gw.charger_port}/ocpp/CP-1", subprotocols=[Subprotocol("ocpp1.5")]
        )
        assert ws.subprotocol is None
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1002


@pytest.mark.parametrize(
    "path", ["/ocpp/", "/other/CP-1", "/ocpp/a/b", "/ocpp/" + "x" * 49, "/ocpp/bad%20id"]
)
async def test_bad_paths_are_404(tmp_path: Any, path: str) -> None:
    async with running_gateway(make_settings(tmp_path)) as gw:
        with pytest.raises(InvalidStatus) as info:
            await connect(
                f"ws://127.0.0.1:{gw.charger_port}{path}", subprotocols=[Subprotocol("ocpp1.6")]
            )
        assert info.value.response.status_code == 404


async def test_unknown_charger_refused_when_not_allowed(tmp_path: Any) -> None:
    settings = make_settings(
        tmp_path, chargers={"allow_unknown": False, "passwords": {"KNOWN": "0123456789abcdef"}}
    )
    async with running_gateway(settings) as gw:
        with pytest.raises(InvalidStatus) as info:
            await connect(
                f"ws://127.0.0.1:{gw.charger_port}/ocpp/OTHER",
                subprotocols=[Subprotocol("ocpp1.6")],
            )
        assert info.value.response.status_code == 404
        async with charger(gw.charger_port, "KNOWN") as cp:
            assert (await cp.call("Heartbeat", {}))[0] == 3


async def test_basic_auth(tmp_path: Any) -> None:
    settings = make_settings(
        tmp_path, chargers={"auth": "basic", "passwords": {"CP-1": "correct-horse-battery"}}
    )
    async with running_gateway(settings) as gw:
        base = f"127.0.0.1:{gw.charger_port}/ocpp/CP-1"
        for creds in ["", "CP-1:wrong-password@", "CP-2:correct-horse-battery@"]:
            with pytest.raises(InvalidStatus) as info:
                await connect(f"ws://{creds}{base}", subprotocols=[Subprotocol("ocpp1.6")])
            assert info.value.response.status_code == 401
        ws = await connect(
            f"ws://CP-1:correct-horse-battery@{base}", subprotocols=[Subprotocol("ocpp1.6")]
        )
        await ws.send('[2, "1", "Heartbeat", {}]')
        assert json.loads(await ws.recv())[0] == 3
        await ws.close()


async def test_oversized_frame_closes_only_that_charger(tmp_path: Any, cloud: FakeCloud) -> None:
    settings = make_settings(
        tmp_path, chargers={"max_message_bytes": 2048}, upstream={"url": cloud.url}
    )
    async with (
        running_gateway(settings) as gw,
        charger(gw.charger_port, "BIG") as big,
        charger(gw.charger_port, "OK") as ok,
    ):
        await big.send_raw(
            json.dumps([2, "1", "DataTransfer", {"vendorId": "x", "data": "y" * 4096}])
        )
        await asyncio.wait_for(big.ws.wait_closed(), 5)
        assert big.ws.close_code == 1009
        assert (await ok.call("Heartbeat", {}))[0] == 3


async def test_standalone_answers_boot_heartbeat_notifications(tmp_path: Any) -> None:
    settings = make_settings(tmp_path, offline={"heartbeat_interval_s": 120})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP", "2.0.1") as cp:
        boot = await cp.call(
            "BootNotification",
            {"chargingStation": {"model": "M", "vendorName": "V"}, "reason": "PowerUp"},
        )
        assert boot[2]["status"] == "Accepted" and boot[2]["interval"] == 120
        assert "currentTime" in (await cp.call("Heartbeat", {}))[2]
        status = {
            "timestamp": "2026-11-21T12:00:00Z",
            "connectorStatus": "Available",
            "evseId": 1,
            "connectorId": 1,
        }
        assert await cp.call("StatusNotification", status) == [3, "m3", {}]
        unsupported = await cp.call("DataTransfer", {"vendorId": "x"})
        assert unsupported[:3] == [4, "m4", "NotSupported"]
        async with httpx.AsyncClient() as client:
            health = (await client.get(f"http://127.0.0.1:{gw.api_port}/health")).json()
        assert health["status"] == "ok" and health["upstream"]["configured"] is False
        assert health["chargers"]["connected"] == 1


async def test_a_charger_that_stops_reading_stops_the_gateway_reading_the_cloud(
    tmp_path: Any,
) -> None:
    """Answers the charger does not read back up into the cloud's socket, not the gateway's memory."""
    big = "x" * 60_000
    cloud = await FakeCloud(
        responder=lambda cid, action, p: {"status": "Accepted", "data": big}
    ).start()
    settings = make_settings(tmp_path, upstream={"url": cloud.url})
    async with running_gateway(settings) as gw:
        # A small receive buffer (no autotuning) and max_queue=1: the client takes one message
        # off the socket, then stops reading, and the socket fills after ~64 KB.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.charger_port))
        ws = await connect(
            f"ws://127.0.0.1:{gw.charger_port}/ocpp/CP",
            subprotocols=[Subprotocol("ocpp1.6")],
            max_queue=1,
            compression=None,  # else the repeated answer would compress to almost nothing
            sock=sock,
        )
        assert gw.hub is not None
        hub = gw.hub
        await wait_for(lambda: "CP" in hub.sessions and hub.sessions["CP"].state.value == "online")
        calls = 300  # 18 MB of answers: far more than the socket buffers between them hold
        for i in range(calls):
            await ws.send(json.dumps([2, f"d{i}", "DataTransfer", {"vendorId": "V"}]))
        session = hub.sessions["CP"]
        await wait_for(lambda: session.upstream is not None and session.upstream.reading_held)
        answers = [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(calls)]
        assert [a[1] for a in answers] == [f"d{i}" for i in range(calls)]
        assert all(a[0] == 3 and a[2]["data"] == big for a in answers)
        assert session.upstream is not None and not session.upstream.reading_held
        await ws.close()
    await cloud.stop()


async def test_health_degraded_when_cloud_unreachable(tmp_path: Any) -> None:
    settings = make_settings(
        tmp_path, upstream={"url": "ws://127.0.0.1:9/ocpp", "call_timeout_s": 0.5}
    )
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP") as cp:
        assert (await cp.call("Heartbeat", {}))[0] == 3  # answered locally
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{gw.api_port}/health")
            metrics = (await client.get(f"http://127.0.0.1:{gw.api_port}/metrics")).text
        body = response.json()
        assert response.status_code == 200
        assert body["status"] == "degraded"
        assert body["upstream"] == {"configured": True, "connected": False, "chargers": 0}
        assert "flipturn_gateway_chargers_connected 1.0" in metrics
        assert 'flipturn_gateway_local_answers_total{action="Heartbeat"} 1.0' in metrics


@pytest.mark.parametrize("compression", [True, False])
async def test_upstream_compression_offered_unless_turned_off(
    tmp_path: Any, cloud: FakeCloud, compression: bool
) -> None:
    settings = make_settings(tmp_path, upstream={"url": cloud.url, "compression": compression})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP", "2.0.1") as cp:
        assert (await cp.call("Heartbeat", {}))[0] == 3
        await cloud.wait_connected("CP")
        negotiated = [type(e).__name__ for e in cloud.connections["CP"].protocol.extensions]
    offered = {k.lower(): v for k, v in cloud.headers[0].items()}.get("sec-websocket-extensions")
    if compression:
        assert offered is not None and offered.startswith("permessage-deflate")
        assert negotiated == ["PerMessageDeflate"]  # this cloud accepts it: frames are compressed
    else:
        assert offered is None and negotiated == []


@pytest.mark.parametrize("passed", [True, False])
async def test_charger_authorization_header_passed_upstream(
    tmp_path: Any, cloud: FakeCloud, passed: bool
) -> None:
    settings = make_settings(
        tmp_path,
        chargers={"auth": "basic", "passwords": {"CP-1": "correct-horse-battery"}},
        upstream={"url": cloud.url, "pass_authorization": passed},
    )
    async with running_gateway(settings) as gw:
        ws = await connect(
            f"ws://CP-1:correct-horse-battery@127.0.0.1:{gw.charger_port}/ocpp/CP-1",
            subprotocols=[Subprotocol("ocpp1.6")],
        )
        await ws.send('[2, "1", "Heartbeat", {}]')
        assert json.loads(await ws.recv())[0] == 3
        await ws.close()
    sent = {k.lower(): v for k, v in cloud.headers[0].items()}
    expected = "Basic " + base64.b64encode(b"CP-1:correct-horse-battery").decode()
    assert sent.get("authorization") == (expected if passed else None)
    assert sent["user-agent"] == f"flipturn-gateway/{__version__}"


async def test_tls_serves_wss(tmp_path: Any, certificate: tuple[str, str]) -> None:
    cert, key = certificate
    settings = make_settings(tmp_path, chargers={"tls_cert": cert, "tls_key": key})
    context = ssl.create_default_context(cafile=cert)
    async with running_gateway(settings) as gw:
        ws = await connect(
            f"wss://127.0.0.1:{gw.charger_port}/ocpp/CP-1",
            subprotocols=[Subprotocol("ocpp1.6")],
            ssl=context,
        )
        await ws.send('[2, "1", "Heartbeat", {}]')
        assert json.loads(await ws.recv())[0] == 3
        await ws.close()
        with pytest.raises((OSError, InvalidMessage, ConnectionClosed)):  # plain ws is refused
            await connect(f"ws://127.0.0.1:{gw.charger_port}/ocpp/CP-1", open_timeout=2)


async def test_bad_frames_from_the_cloud_are_refused_and_harm_nobody(
    tmp_path: Any, cloud: FakeCloud
) -> None:
    settings = make_settings(tmp_path, upstream={"url": cloud.url})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP") as cp:
        await cp.call("Heartbeat", {})
        ws = cloud.connections["CP"]
        await ws.send('[2, "c1", "Reset", "not-an-object"]')
        await ws.send("{garbage")
        await wait_for(lambda: any(f[:2] == [4, "c1"] for f in cloud.received["CP"]))
        refusal = next(f for f in cloud.received["CP"] if f[:2] == [4, "c1"])
        assert refusal[2] == "FormationViolation"  # 1.6 spelling toward a 1.6 charger's cloud
        assert [f for f in cp.received if f[0] == 2] == []  # no CALL reached the charger
        assert (await cp.call("Heartbeat", {}))[0] == 3  # and the link still relays


@pytest.mark.parametrize(("version", "answered"), [("2.0.1", True), ("1.6", False)])
async def test_unknown_message_type(tmp_path: Any, version: str, answered: bool) -> None:
    async with (
        running_gateway(make_settings(tmp_path)) as gw,
        charger(gw.charger_port, "CP", version) as cp,
    ):
        await cp.send_raw('[6, "s1", "NotifyPeriodicEventStream", {}]')
        await cp.call("Heartbeat", {})  # answered after the unknown frame was handled
        errors = [f for f in cp.received if f[0] == 4]
        if answered:  # OCPP-J 2.0.1: CALLERROR MessageTypeNotSupported
            assert [e[1:3] for e in errors] == [["s1", "MessageTypeNotSupported"]]
        else:  # OCPP-J 1.6: ignored
            assert errors == []


async def test_binary_frames_must_be_utf8_text(tmp_path: Any, cloud: FakeCloud) -> None:
    settings = make_settings(tmp_path, upstream={"url": cloud.url})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP") as cp:
        await cp.ws.send(b"\xff\xfe[2,")
        await wait_for(lambda: bool(cp.received))
        assert cp.received[0][:3] == [4, "-1", "FormationViolation"]
        await cp.ws.send(b'[2, "b1", "Heartbeat", {}]')  # valid UTF-8 in a binary frame: relayed
        await wait_for(lambda: any(f[1] == "b1" for f in cp.received))
        assert cloud.raw["CP"] == ['[2, "b1", "Heartbeat", {}]']


async def test_v201_charger_gets_permessage_deflate(tmp_path: Any) -> None:
    # OCPP 2.0.1 part 4: the CSMS (here the local controller) must support compression.
    async with (
        running_gateway(make_settings(tmp_path)) as gw,
        charger(gw.charger_port, "CP", "2.0.1") as cp,
    ):
        names = [type(ext).__name__ for ext in cp.ws.protocol.extensions]
        assert names == ["PerMessageDeflate"]
        assert (await cp.call("Heartbeat", {}))[0] == 3


async def test_simultaneous_connections_for_a_new_id_share_one_session(
    tmp_path: Any, cloud: FakeCloud
) -> None:
    settings = make_settings(tmp_path, upstream={"url": cloud.url})
    async with running_gateway(settings) as gw:
        url = f"ws://127.0.0.1:{gw.charger_port}/ocpp/NEW"
        first, second = await asyncio.gather(
            connect(url, subprotocols=[Subprotocol("ocpp1.6")]),
            connect(url, subprotocols=[Subprotocol("ocpp1.6")]),
        )
        # One of them replaced the other; the survivor is the session's charger and is relayed.
        await wait_for(lambda: first.close_code is not None or second.close_code is not None)
        survivor = second if first.close_code is not None else first
        await survivor.send('[2, "s1", "Heartbeat", {}]')
        assert json.loads(await survivor.recv())[:2] == [3, "s1"]
        assert gw.hub is not None and len(gw.hub.sessions) == 1
        assert gw.hub.sessions["NEW"].charger is not None
        assert cloud.calls("NEW", "Heartbeat")  # relayed, not answered locally
        await survivor.close()
