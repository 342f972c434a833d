"""OCPP 2.1 end to end: a charger and a cloud built with the ``ocpp`` package's v21 module.

Real loopback WebSockets and a real SQLite store. The ``ocpp`` package speaks CALL, CALLRESULT
and CALLERROR; the 2.1 message types it lacks (CALLRESULTERROR 5, SEND 6) are sent as raw text
over the same connection, and every raw frame either double sees is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from ocpp.exceptions import NotImplementedError as OcppNotImplemented
from ocpp.exceptions import NotSupportedError
from ocpp.routing import on
from ocpp.v21 import ChargePoint, call, call_result
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway.config import PortMapping
from gateway.core import offline
from gateway.core.link import LinkState
from tests.support import make_settings, running_gateway, wait_for

NOW = "2026-11-21T12:00:00.000Z"
SUBPROTOCOLS = [Subprotocol("ocpp2.1"), Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6")]
STREAM = {"id": 123, "pending": 0, "basetime": NOW, "data": [{"t": 0, "v": "230.4"}]}


class Recorder:
    """A WebSocket as the ``ocpp`` package uses it (``recv``/``send``), keeping every raw frame."""

    def __init__(self, ws: ClientConnection | ServerConnection) -> None:
        self.ws = ws
        self.received: list[str] = []
        self.sent: list[str] = []
        self._changed = asyncio.Condition()

    async def recv(self) -> str:
        text = str(await self.ws.recv())
        async with self._changed:
            self.received.append(text)
            self._changed.notify_all()
        return text

    async def send(self, text: str) -> None:
        self.sent.append(text)
        await self.ws.send(text)

    def frames(self) -> list[list[Any]]:
        return [json.loads(t) for t in self.received]

    async def received_frame(
        self, match: Callable[[list[Any]], bool], timeout: float = 5
    ) -> tuple[str, list[Any]]:
        """The first received frame (raw text, parsed) that ``match`` accepts; waits for it."""

        def found() -> tuple[str, list[Any]] | None:
            for text in self.received:
                if match(frame := json.loads(text)):
                    return text, frame
            return None

        async with self._changed:
            answer = await asyncio.wait_for(self._changed.wait_for(found), timeout)
        assert answer is not None  # wait_for returns once found() gives a value
        return answer


class Csms21(ChargePoint):
    """The cloud's view of one charger (a CSMS written with ``ocpp.v21``)."""

    def __init__(self, charger_id: str, connection: Recorder) -> None:
        super().__init__(charger_id, connection, response_timeout=5)
        self.recorder = connection
        self.hold_heartbeat = asyncio.Event()
        self.hold_heartbeat.set()

    @on("BootNotification")
    def on_boot(self, **_: Any) -> call_result.BootNotification:
        return call_result.BootNotification(current_time=NOW, interval=300, status="Accepted")

    @on("Heartbeat")
    async def on_heartbeat(self) -> call_result.Heartbeat:
        await self.hold_heartbeat.wait()
        return call_result.Heartbeat(current_time=NOW)

    @on("Authorize")
    def on_authorize(self, **_: Any) -> call_result.Authorize:
        return call_result.Authorize(id_token_info={"status": "Accepted"})

    @on("TransactionEvent")
    def on_transaction_event(self, **_: Any) -> call_result.TransactionEvent:
        return call_result.TransactionEvent()

    @on("NotifySettlement")
    def on_settlement(self, **_: Any) -> call_result.NotifySettlement:
        return call_result.NotifySettlement()

    # ocpp 2.1.0 sends no answer at all for a 2.1 action without a handler: raise to get one.
    @on("DataTransfer")
    def on_data_transfer(self, **_: Any) -> None:
        raise OcppNotImplemented(description="no DataTransfer here", details={"vendor": "x"})


def _clients_first(ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """A CSMS that selects in the client's order of preference (websockets' default: its own)."""
    return next((p for p in offered if p in SUBPROTOCOLS), None)


class Cloud21:
    """A 2.1 CSMS on 127.0.0.1 that can be taken down and brought back on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self.server: Server | None = None
        self.points: dict[str, Csms21] = {}
        self.connections: dict[str, ServerConnection] = {}

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def start(self) -> Cloud21:
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            self.port,
            subprotocols=SUBPROTOCOLS,
            select_subprotocol=_clients_first,
        )
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        charger_id = ws.request.path.rsplit("/", 1)[-1]
        point = Csms21(charger_id, Recorder(ws))
        self.points[charger_id] = point
        self.connections[charger_id] = ws
        with contextlib.suppress(ConnectionClosed):
            await point.start()

    async def point(self, charger_id: str) -> Csms21:
        await wait_for(lambda: charger_id in self.points)
        return self.points[charger_id]


class Station21(ChargePoint):
    """A charging station written with ``ocpp.v21``: answers reservations and GetVariables."""

    def __init__(self, charger_id: str, connection: Recorder) -> None:
        super().__init__(charger_id, connection, response_timeout=5)
        self.recorder = connection
        self.reserve_status = "Accepted"
        self.requests: list[tuple[str, dict[str, Any]]] = []

    @on("ReserveNow")
    def on_reserve_now(self, **kwargs: Any) -> call_result.ReserveNow:
        self.requests.append(("ReserveNow", kwargs))
        return call_result.ReserveNow(status=self.reserve_status)

    @on("CancelReservation")
    def on_cancel(self, **kwargs: Any) -> call_result.CancelReservation:
        self.requests.append(("CancelReservation", kwargs))
        return call_result.CancelReservation(status="Accepted")

    @on("Reset")
    def on_reset(self, **_: Any) -> None:
        raise NotSupportedError(description="this station does not reset")

    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[Any], **_: Any) -> Any:
        return call_result.GetVariables(
            get_variable_result=[
                {
                    "attribute_status": "Accepted",
                    "attribute_value": "true",
                    "component": d["component"],
                    "variable": d["variable"],
                }
                for d in get_variable_data
            ]
        )


@contextlib.asynccontextmanager
async def station(
    port: int, charger_id: str, subprotocols: list[str] | None = None
) -> AsyncIterator[Station21]:
    async with connect(
        f"ws://127.0.0.1:{port}/ocpp/{charger_id}",
        subprotocols=[Subprotocol(p) for p in subprotocols or ["ocpp2.1"]],
    ) as ws:
        point = Station21(charger_id, Recorder(ws))
        task = asyncio.create_task(point.start())
        try:
            yield point
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await task


@pytest.fixture
async def cloud21() -> AsyncIterator[Cloud21]:
    cloud = await Cloud21().start()
    try:
        yield cloud
    finally:
        await cloud.stop()


def boot() -> call.BootNotification:
    return call.BootNotification(
        charging_station={"model": "M21", "vendor_name": "Flipturn"}, reason="PowerUp"
    )


def transaction_event(event: str, seq: int, **extra: Any) -> call.TransactionEvent:
    return call.TransactionEvent(
        event_type=event,
        seq_no=seq,
        timestamp=NOW,
        transaction_info={"transaction_id": "tx-21"},
        trigger_reason="Authorized" if event == "Started" else "MeterValuePeriodic",
        evse={"id": 1, "connector_id": 1},
        **extra,
    )


def raw_of(recorder: Recorder, message_id: str) -> list[str]:
    return [t for t in recorder.received if json.loads(t)[1] == message_id]


# --- negotiation and compression ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["ocpp2.1"], "ocpp2.1"),
        (["ocpp2.1", "ocpp2.0.1", "ocpp1.6"], "ocpp2.1"),
        (["ocpp2.0.1", "ocpp2.1"], "ocpp2.0.1"),
        (["ocpp1.6", "ocpp2.1", "ocpp2.0.1"], "ocpp1.6"),
        (["ocpp1.5", "ocpp2.1"], "ocpp2.1"),
    ],
)
async def test_the_charger_s_order_of_preference_and_the_same_upstream(
    tmp_path: Any, cloud21: Cloud21, offered: list[str], chosen: str
) -> None:
    settings = make_settings(tmp_path, upstream={"url": cloud21.url})
    async with (
        running_gateway(settings) as gw,
        connect(
            f"ws://127.0.0.1:{gw.charger_port}/ocpp/CS-N",
            subprotocols=[Subprotocol(p) for p in offered],
        ) as ws,
    ):
        assert ws.subprotocol == chosen
        await wait_for(lambda: "CS-N" in cloud21.connections)
        upstream = cloud21.connections["CS-N"]
        assert upstream.subprotocol == chosen
        assert upstream.request is not None
        # The cloud decides: the gateway offers it the charger's versions in the charger's order
        # (one: nothing to decide, the link offers it alone).
        ours = [p for p in offered if p in SUBPROTOCOLS]
        assert upstream.request.headers["Sec-WebSocket-Protocol"] == ", ".join(ours)


async def test_permessage_deflate_on_both_links(tmp_path: Any, cloud21: Cloud21) -> None:
    # OCPP 2.1 Part 4 §3.4: the Local Controller supports RFC 7692 towards its chargers, and
    # offers it to the cloud (upstream.compression, default true).
    settings = make_settings(tmp_path, upstream={"url": cloud21.url})
    async with running_gateway(settings) as gw, station(gw.charger_port, "CS-Z") as cs:
        assert cs.recorder.ws.response is not None
        charger_link = cs.recorder.ws.response.headers["Sec-WebSocket-Extensions"]
        assert "permessage-deflate" in charger_link
        # Small windows both ways (RFC 7692 §7.1.2): the charger offered client_max_window_bits.
        assert "server_max_window_bits=11" in charger_link
        assert "client_max_window_bits=11" in charger_link
        await cs.call(boot())
        upstream = cloud21.connections["CS-Z"]
        assert upstream.request is not None and upstream.response is not None
        assert "permessage-deflate" in upstream.request.headers["Sec-WebSocket-Extensions"]
        cloud_link = upstream.response.headers["Sec-WebSocket-Extensions"]
        assert "permessage-deflate" in cloud_link
        assert "server_max_window_bits=11" in cloud_link


async def test_a_2_1_charger_is_refused_nothing_by_a_1_6_or_2_0_1_only_cloud_either(
    tmp_path: Any,
) -> None:
    """A cloud without ocpp2.1 does not get the link downgraded: the charger is served offline."""
    async with serve(
        lambda ws: ws.wait_closed(), "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp2.0.1")]
    ) as old:
        port = next(iter(old.sockets)).getsockname()[1]
        settings = make_settings(
            tmp_path,
            upstream={"url": f"ws://127.0.0.1:{port}/ocpp"},
            offline={"unknown_tags": "accept"},
        )
        async with running_gateway(settings) as gw, station(gw.charger_port, "CS-OLD") as cs:
            result = await cs.call(boot())
            assert result.status == "Accepted"  # answered by the gateway itself
            assert gw.hub is not None
            session = gw.hub.sessions["CS-OLD"]
            assert session.state is not LinkState.ONLINE and session.upstream is None


# --- online relay of every message type ---------------------------------------------------------


async def test_every_message_type_is_relayed_unchanged_both_ways(
    tmp_path: Any, cloud21: Cloud21
) -> None:
    settings = make_settings(tmp_path, upstream={"url": cloud21.url, "call_timeout_s": 5.0})
    async with running_gateway(settings) as gw, station(gw.charger_port, "CS-R") as cs:
        # CALL and CALLRESULT, charger → cloud, with the charger's id.
        result = await cs.call(boot(), unique_id="boot-1")
        assert result.status == "Accepted" and result.interval == 300
        csms = await cloud21.point("CS-R")
        assert raw_of(csms.recorder, "boot-1") == [cs.recorder.sent[0]]  # byte for byte
        assert raw_of(cs.recorder, "boot-1") == [csms.recorder.sent[0]]

        # CALLERROR, cloud → charger: the ocpp CSMS has no DataTransfer handler.
        assert await cs.call(call.DataTransfer(vendor_id="x"), unique_id="dt-1") is None
        [error_text] = raw_of(cs.recorder, "dt-1")
        assert json.loads(error_text)[0] == 4
        assert [error_text] == [t for t in csms.recorder.sent if json.loads(t)[1] == "dt-1"]

        # CALL and CALLRESULT, cloud → charger, with the cloud's id.
        variables = call.GetVariables(
            get_variable_data=[
                {"component": {"name": "AuthCtrlr"}, "variable": {"name": "Enabled"}}
            ]
        )
        answer = await csms.call(variables, unique_id="gv-1")
        assert answer.get_variable_result[0]["attribute_value"] == "true"
        assert raw_of(cs.recorder, "gv-1") == [t for t in csms.recorder.sent if '"gv-1"' in t]
        assert raw_of(csms.recorder, "gv-1") == [t for t in cs.recorder.sent if '"gv-1"' in t]

        # CALLERROR, charger → cloud: the ocpp station has no Reset handler.
        assert await csms.call(call.Reset(type="Immediate"), unique_id="rs-1") is None
        [error_text] = raw_of(csms.recorder, "rs-1")
        assert json.loads(error_text)[0] == 4
        assert [error_text] == [t for t in cs.recorder.sent if json.loads(t)[1] == "rs-1"]

        # CALLRESULTERROR, charger → cloud: "I could not process your BootNotification answer".
        refusal = '[5, "boot-1", "FormatViolation", "interval out of range", {"got": 300}]'
        await cs.recorder.send(refusal)
        text, _ = await csms.recorder.received_frame(lambda f: f[0] == 5)
        assert text == refusal

        # CALLRESULTERROR, cloud → charger, about the charger's GetVariables answer.
        refusal = '[5, "gv-1", "PropertyConstraintViolation", "unknown attribute", {}]'
        await csms.recorder.send(refusal)
        text, _ = await cs.recorder.received_frame(lambda f: f[0] == 5)
        assert text == refusal

        # SEND both ways; no answer either way.
        stream = json.dumps([6, "s-1", "NotifyPeriodicEventStream", STREAM])
        await cs.recorder.send(stream)
        text, _ = await csms.recorder.received_frame(lambda f: f[1] == "s-1")
        assert text == stream
        down = json.dumps([6, "s-2", "VendorNotice", {"note": "Ladesäule"}], ensure_ascii=False)
        await csms.recorder.send(down)
        text, _ = await cs.recorder.received_frame(lambda f: f[1] == "s-2")
        assert text == down

        # A malformed SEND is dropped: not relayed, and not answered either (§4.2.4).
        await cs.recorder.send('[6, "s-bad", "NotifyPeriodicEventStream", []]')

        # A round trip after them: everything before it has arrived, and nothing answered a SEND.
        await cs.call(call.Heartbeat(), unique_id="hb-1")
        await csms.call(variables, unique_id="gv-2")
        assert raw_of(cs.recorder, "s-1") == [] and raw_of(csms.recorder, "s-2") == []
        assert raw_of(cs.recorder, "s-bad") == [] and raw_of(csms.recorder, "s-bad") == []
        assert gw.stats.sends == {"from_charger relayed": 1, "from_cloud relayed": 1}
        assert gw.stats.errors["bad_frame_from_charger"] == 1
        assert gw.stats.errors["bad_frame_from_cloud"] == 0
        async with httpx.AsyncClient(trust_env=False) as client:
            metrics = (await client.get(f"http://127.0.0.1:{gw.api_port}/metrics")).text
        for direction in ("from_charger", "from_cloud"):
            line = f'flipturn_gateway_send_frames_total{{direction="{direction}",outcome="relayed"}} 1.0'
            assert line in metrics.splitlines()


async def test_a_callresulterror_is_not_mistaken_for_the_answer_to_a_pending_call(
    tmp_path: Any, cloud21: Cloud21
) -> None:
    """The cloud's CALLRESULTERROR "c-1" and the charger's own pending CALL "c-1" are unrelated:
    ids of the two directions come from different senders and may be equal."""
    settings = make_settings(tmp_path, upstream={"url": cloud21.url, "call_timeout_s": 5.0})
    async with running_gateway(settings) as gw, station(gw.charger_port, "CS-P") as cs:
        await cs.call(boot())
        csms = await cloud21.point("CS-P")
        csms.hold_heartbeat.clear()
        heartbeat = asyncio.create_task(cs.call(call.Heartbeat(), unique_id="c-1"))
        await csms.recorder.received_frame(lambda f: f[1] == "c-1")
        await csms.recorder.send('[5, "c-1", "GenericError", "about an older answer", {}]')
        text, _ = await cs.recorder.received_frame(lambda f: f[0] == 5)
        assert json.loads(text)[1] == "c-1"
        assert not heartbeat.done()  # still waiting for the cloud's real answer
        csms.hold_heartbeat.set()
        assert (await heartbeat).current_time == NOW
        assert [json.loads(t)[0] for t in raw_of(cs.recorder, "c-1")] == [5, 3]


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_2_1_message_types_on_an_older_link(
    tmp_path: Any, cloud21: Cloud21, version: str
) -> None:
    """2.0.1 answers types 5 and 6 with MessageTypeNotSupported; 1.6 ignores them."""
    settings = make_settings(tmp_path, upstream={"url": cloud21.url})
    async with (
        running_gateway(settings) as gw,
        connect(
            f"ws://127.0.0.1:{gw.charger_port}/ocpp/CS-O",
            subprotocols=[Subprotocol(f"ocpp{version}")],
        ) as ws,
    ):
        await ws.send(json.dumps([6, "s-1", "NotifyPeriodicEventStream", STREAM]))
        await ws.send('[5, "r-1", "GenericError", "", {}]')
        await ws.send('[2, "hb", "Heartbeat", {}]')
        answers = [
            json.loads(await asyncio.wait_for(ws.recv(), 5))
            for _ in range(3 if version == "2.0.1" else 1)
        ]
        if version == "2.0.1":
            assert answers[:2] == [
                [4, "s-1", "MessageTypeNotSupported", "message type 6 is not supported", {}],
                [4, "r-1", "MessageTypeNotSupported", "message type 5 is not supported", {}],
            ]
        assert answers[-1][:2] == [3, "hb"]
        csms = await cloud21.point("CS-O")
        assert [json.loads(t)[1] for t in csms.recorder.received] == ["hb"]  # nothing else relayed

        # The same from the cloud's side: not relayed; answered for 2.0.1, ignored for 1.6.
        await csms.recorder.send(json.dumps([6, "cs-1", "NotifyPeriodicEventStream", STREAM]))
        await csms.recorder.send('[2, "c-1", "GetLocalListVersion", {}]')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))[:2] == [2, "c-1"]
        await ws.send('[3, "c-1", {"listVersion": 0}]')
        await csms.recorder.received_frame(lambda f: f[1] == "c-1")
        answered = [json.loads(t) for t in csms.recorder.received if '"cs-1"' in t]
        if version == "2.0.1":
            assert answered == [
                [4, "cs-1", "MessageTypeNotSupported", "message type 6 is not supported", {}]
            ]
        else:
            assert answered == []  # OCPP-J 1.6: unknown message types are ignored
        assert gw.stats.sends == {}


# --- offline answers and replay -----------------------------------------------------------------


def test_the_2_1_action_table() -> None:
    # The 2.0.1 table, answered with the 2.1 schemas ...
    for action in ("BootNotification", "Heartbeat", "Authorize", "TransactionEvent", "NotifyEvent"):
        assert offline.rule_for("2.1", action) == offline.rule_for("2.0.1", action)
    # ... plus the 2.1 notifications whose answer has no required field, stored for replay ...
    for action in ("NotifySettlement", "BatterySwap", "ClosePeriodicEventStream", "NotifyDERAlarm"):
        rule = offline.rule_for("2.1", action)
        assert rule.answer is offline.Answer.EMPTY and rule.stored
        assert offline.rule_for("2.0.1", action).answer is offline.Answer.NOT_SUPPORTED
    # ... and 2.1 CALLs only the CSMS can decide are NotSupported.
    for action in ("OpenPeriodicEventStream", "PullDynamicScheduleUpdate", "VatNumberValidation"):
        assert offline.rule_for("2.1", action).answer is offline.Answer.NOT_SUPPORTED
    # A SEND is no CALL: it has no row (the session counts and drops it offline).
    assert (
        offline.rule_for("2.1", "NotifyPeriodicEventStream").answer is offline.Answer.NOT_SUPPORTED
    )


async def test_offline_answers_and_ordered_replay_with_offline_true(
    tmp_path: Any, cloud21: Cloud21
) -> None:
    await cloud21.stop()  # the cloud is down when the charger comes
    settings = make_settings(
        tmp_path,
        upstream={"url": cloud21.url, "call_timeout_s": 1.0},
        offline={"unknown_tags": "accept"},
    )
    token = {"id_token": "04A2B3C4", "type": "ISO14443"}
    async with running_gateway(settings) as gw, station(gw.charger_port, "CS-OFF") as cs:
        assert (await cs.call(boot(), unique_id="b-1")).status == "Accepted"
        auth = await cs.call(call.Authorize(id_token=token), unique_id="a-1")
        assert auth.id_token_info["status"] == "Accepted"
        started = await cs.call(transaction_event("Started", 0, id_token=token), unique_id="t-0")
        assert started.id_token_info["status"] == "Accepted"
        await cs.recorder.send(json.dumps([6, "s-1", "NotifyPeriodicEventStream", STREAM]))
        assert await cs.call(transaction_event("Updated", 1), unique_id="t-1") is not None
        settlement = call.NotifySettlement(
            psp_ref="psp-9", status="Settled", settlement_amount=12.5, settlement_time=NOW,
            transaction_id="tx-21",
        )  # fmt: skip
        assert await cs.call(settlement, unique_id="n-1") is not None
        # A 2.1 CALL only the CSMS can answer: NotSupported, not stored.
        stream = call.OpenPeriodicEventStream(
            constant_stream_data={"id": 1, "variable_monitoring_id": 7, "params": {}}
        )
        assert await cs.call(stream, unique_id="o-1") is None
        [refused] = raw_of(cs.recorder, "o-1")
        assert json.loads(refused)[:3] == [4, "o-1", "NotSupported"]
        # §4.1.4: a retry may reuse its message id; it is answered like the first time.
        ended = transaction_event("Ended", 2)
        assert await cs.call(ended, unique_id="t-2") is not None
        assert await cs.call(ended, unique_id="t-2") is not None
        assert [json.loads(t)[0] for t in raw_of(cs.recorder, "t-2")] == [3, 3]
        assert raw_of(cs.recorder, "s-1") == []  # a SEND gets no answer, not even offline
        assert gw.stats.sends == {"from_charger dropped": 1}
        # The refused CALLRESULT of a locally answered CALL is not the cloud's business (§6.4).
        await cs.recorder.send('[5, "b-1", "PropertyConstraintViolation", "interval", {}]')
        await wait_for(lambda: gw.stats.errors["local_answer_refused"] == 1)
        sent = {
            json.loads(t)[1]: json.loads(t)[3] for t in cs.recorder.sent if json.loads(t)[0] == 2
        }

        await cloud21.start()
        csms = await cloud21.point("CS-OFF")
        await csms.recorder.received_frame(lambda f: f[1] == "n-1", timeout=10)
        hub = gw.hub
        assert hub is not None
        await wait_for(lambda: hub.sessions["CS-OFF"].backlog == 0, timeout=10)
        replayed = [f for f in csms.recorder.frames() if f[0] == 2]
        ids = [f[1] for f in replayed]
        assert ids[0] == "b-1" and ids[-1] == "t-2"  # the boot first, then the queue in order
        assert [i for i in ids if i in ("t-0", "t-1", "n-1")] == ["t-0", "t-1", "n-1"]
        assert "s-1" not in ids and "o-1" not in ids and "a-1" not in ids
        assert not [f for f in csms.recorder.frames() if f[0] in (5, 6)]
        for frame in replayed:
            expected = sent[frame[1]]
            if frame[2] == "TransactionEvent":
                assert expected["offline"] is False  # what the ocpp station sent
                expected = {**expected, "offline": True}  # answered by the gateway (E02)
            assert frame[3] == expected
        assert (
            cs.recorder.sent.count(json.dumps([6, "s-1", "NotifyPeriodicEventStream", STREAM])) == 1
        )


# --- reservations -------------------------------------------------------------------------------


async def test_reservations_from_the_local_api_use_the_2_1_messages(
    tmp_path: Any, cloud21: Cloud21
) -> None:
    expiry = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    expiry_text = expiry.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    settings = make_settings(tmp_path, upstream={"url": cloud21.url}).model_copy(
        update={"ports": (PortMapping(id=21, charger="CS-RES", connector=2),)}
    )
    async with (
        running_gateway(settings) as gw,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}", trust_env=False) as api,
        station(gw.charger_port, "CS-RES") as cs,
    ):
        await cs.call(boot())
        body = {"portId": 21, "expiryDate": expiry_text, "idTag": "04A2B3C4", "reservationId": 9}
        response = await api.post("/api/ocpp/reservations", json=body)
        assert response.status_code == 200 and response.json() == {"status": "Accepted"}
        [(action, _)] = cs.requests
        assert action == "ReserveNow"  # validated by the ocpp station against the 2.1 schema
        [reserve_text] = [t for t in cs.recorder.received if '"ReserveNow"' in t]
        assert json.loads(reserve_text)[3] == {
            "id": 9,
            "expiryDateTime": expiry_text,
            "idToken": {"idToken": "04A2B3C4", "type": "Central"},
            "evseId": 2,
        }
        cs.reserve_status = "Occupied"
        response = await api.post("/api/ocpp/reservations", json={**body, "reservationId": 10})
        assert response.json() == {"status": "Occupied"}

        response = await api.post(
            "/api/ocpp/reservations/cancel", json={"portId": 21, "reservationId": 9}
        )
        assert response.status_code == 200 and response.json() == {"status": "Accepted"}
        assert cs.requests[-1] == ("CancelReservation", {"reservation_id": 9})
        # parentIdTag is 1.6 only, also for 2.1 chargers.
        response = await api.post("/api/ocpp/reservations", json={**body, "parentIdTag": "G"})
        assert response.status_code == 422 and response.json()["error"].startswith("parentIdTag")
        csms = await cloud21.point("CS-RES")
        assert not [t for t in csms.recorder.received if "Reservation" in t or "ReserveNow" in t]
