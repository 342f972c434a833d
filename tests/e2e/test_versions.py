"""The cloud decides the OCPP version (design: "OCPP version negotiation with the cloud"), over
real loopback sockets: chargers offering several versions, a cloud double (raw ``websockets``)
speaking the versions each test chooses, taken down and brought back speaking others."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway.app import Gateway
from gateway.config import Settings
from tests.support import Charger, default_responder, make_settings, running_gateway, wait_for

NOW = "2026-12-08T01:00:00Z"
BOOT_201 = {"reason": "PowerUp", "chargingStation": {"model": "M", "vendorName": "V"}}
BOOT_16 = {"chargePointVendor": "V", "chargePointModel": "M"}


def status_201(status: str) -> dict[str, Any]:
    return {"timestamp": NOW, "connectorStatus": status, "evseId": 1, "connectorId": 1}


class VersionCloud:
    """A CSMS speaking ``subprotocols`` (websockets' server: it selects the first of its own that
    the client offers, and refuses the handshake with HTTP 400 when there is none). It answers
    every CALL and records, per charger, what was offered, what it selected and what it got."""

    def __init__(self, subprotocols: Sequence[str], *, handshake_delay_s: float = 0.0) -> None:
        self.subprotocols = [Subprotocol(p) for p in subprotocols]
        self.handshake_delay_s = handshake_delay_s  # how long it takes to answer a handshake
        self.port = 0
        self.server: Server | None = None
        self.offers: dict[str, list[str]] = defaultdict(list)  # Sec-WebSocket-Protocol headers
        self.selected: dict[str, list[str | None]] = defaultdict(list)
        self.received: dict[str, list[list[Any]]] = defaultdict(list)
        self.links: dict[str, ServerConnection] = {}
        self._reserved: socket.socket | None = None

    def reserve(self) -> None:
        """Take a port without listening on it: the cloud is unreachable (connections refused)
        until ``start``, and nothing else can take the port meanwhile."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self._reserved = sock

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp"

    async def start(self, subprotocols: Sequence[str] | None = None) -> VersionCloud:
        """Listen (on the same port as before, if any), speaking ``subprotocols`` if given."""
        if subprotocols is not None:
            self.subprotocols = [Subprotocol(p) for p in subprotocols]
        where: dict[str, Any] = {"host": "127.0.0.1", "port": self.port}
        if self._reserved is not None:  # listen on the reserved port itself
            where, self._reserved = {"sock": self._reserved}, None
        self.server = await serve(
            self._handler,
            subprotocols=self.subprotocols,
            process_request=self._record_offer,
            **where,
        )
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None
        self.links.clear()

    async def _record_offer(self, ws: ServerConnection, request: Any) -> None:
        charger_id = request.path.rsplit("/", 1)[-1]
        self.offers[charger_id].append(request.headers.get("Sec-WebSocket-Protocol", ""))
        await asyncio.sleep(self.handshake_delay_s)

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        charger_id = ws.request.path.rsplit("/", 1)[-1]
        self.selected[charger_id].append(ws.subprotocol)
        self.links[charger_id] = ws
        with contextlib.suppress(ConnectionClosed):
            async for text in ws:
                frame = json.loads(text)
                self.received[charger_id].append(frame)
                if frame[0] == 2:
                    answer = default_responder(charger_id, frame[2], frame[3])
                    await ws.send(json.dumps([3, frame[1], answer]))

    def actions(self, charger_id: str) -> list[str]:
        return [f[2] for f in self.received[charger_id] if f[0] == 2]


@contextlib.asynccontextmanager
async def station(
    gw: Gateway, charger_id: str, offered: Sequence[str]
) -> AsyncIterator[tuple[ClientConnection, Charger]]:
    """A charger offering ``offered`` (its order of preference) over a raw WebSocket."""
    ws = await connect(
        f"ws://127.0.0.1:{gw.charger_port}/ocpp/{charger_id}",
        subprotocols=[Subprotocol(p) for p in offered],
        open_timeout=5,  # the negotiation waits at most 2 s
    )
    cp = Charger(ws)
    try:
        yield ws, cp
    finally:
        await cp.close()


def settings_for(tmp_path: Any, url: str, *, call_timeout_s: float = 3.0) -> Settings:
    # upstream.call_timeout_s is also how long a cloud handshake may take.
    upstream = {"url": url, "call_timeout_s": call_timeout_s}
    return make_settings(tmp_path, upstream=upstream, offline={"unknown_tags": "accept"})


async def linked(gw: Gateway, charger_id: str, timeout: float = 5) -> None:
    assert gw.hub is not None
    hub = gw.hub
    await wait_for(lambda: (s := hub.get(charger_id)) is not None and s.upstream_connected, timeout)


async def detail(gw: Gateway, path: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as client:
        response = await client.get(path)
    return response.json()


async def test_a_2_1_charger_behind_a_2_0_1_cloud_is_linked_on_2_0_1_and_remembered(
    tmp_path: Any,
) -> None:
    cloud = await VersionCloud(["ocpp2.0.1", "ocpp1.6"]).start()
    settings = settings_for(tmp_path, cloud.url)
    try:
        async with (
            running_gateway(settings) as gw,
            station(gw, "CP-21", ["ocpp2.1", "ocpp2.0.1"]) as (ws, cp),
        ):
            # The cloud was offered the charger's list in its order, and its choice answered.
            assert ws.subprotocol == "ocpp2.0.1"
            assert cloud.offers["CP-21"] == ["ocpp2.1, ocpp2.0.1"]
            await linked(gw, "CP-21")
            answer = await cp.call("BootNotification", BOOT_201)
            assert answer[2]["status"] == "Accepted" and answer[2]["interval"] == 60  # the cloud's
            assert cloud.actions("CP-21") == ["BootNotification"]
            # The connection opened for the handshake is the session's link: no second one.
            assert cloud.selected["CP-21"] == ["ocpp2.0.1"]
            body = await detail(gw, "/api/chargers/CP-21")
            assert (body["ocppVersion"], body["cloudVersion"]) == ("2.0.1", "2.0.1")

        # A new gateway over the same store, the cloud unreachable: asked, it could not answer
        # (the charger would get its first, ocpp2.1); remembered, 2.0.1 is answered at once.
        await cloud.stop()
        async with (
            running_gateway(settings) as gw,
            station(gw, "CP-21", ["ocpp2.1", "ocpp2.0.1"]) as (ws, cp),
        ):
            assert ws.subprotocol == "ocpp2.0.1"
            assert cloud.offers["CP-21"] == ["ocpp2.1, ocpp2.0.1"]  # nobody asked the cloud
            body = await detail(gw, "/api/chargers/CP-21")
            assert body["cloudVersion"] == "2.0.1"
            # Back, the cloud gets the remembered version offered alone.
            await cloud.start()
            await linked(gw, "CP-21")
            assert cloud.offers["CP-21"][1:] == ["ocpp2.0.1"]
    finally:
        await cloud.stop()


async def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    await asyncio.wait_for(ws.wait_closed(), 10)
    return ws.close_code, ws.close_reason


async def dead_letters(gw: Gateway) -> list[dict[str, Any]]:
    return list((await detail(gw, "/api/outbox/dead"))["data"])


async def test_a_cloud_that_stops_speaking_the_version_gets_the_charger_back_on_the_next(
    tmp_path: Any,
) -> None:
    cloud = await VersionCloud(["ocpp2.0.1", "ocpp1.6"]).start()
    settings = settings_for(tmp_path, cloud.url)
    offered = ["ocpp2.1", "ocpp2.0.1", "ocpp1.6"]
    try:
        async with running_gateway(settings) as gw:
            async with station(gw, "CP-X", offered) as (ws, cp):
                assert ws.subprotocol == "ocpp2.0.1"
                await linked(gw, "CP-X")
                await cp.call("BootNotification", BOOT_201)
                await cloud.stop()  # the cloud goes away, and comes back speaking only 1.6
                await wait_for(lambda: gw.hub is not None and not gw.hub.upstreams_connected())
                stored = await cp.call("StatusNotification", status_201("Occupied"))
                assert stored[0] == 3  # answered by the gateway, stored under 2.0.1
                await cloud.start(["ocpp1.6"])
                # The link finds what the cloud speaks; the charger is told to come back.
                assert await closed_with(ws) == (1012, "OCPP version changes")
            assert cloud.offers["CP-X"][-2:] == ["ocpp2.0.1", "ocpp2.1, ocpp2.0.1, ocpp1.6"]

            async with station(gw, "CP-X", offered) as (ws, cp):
                assert ws.subprotocol == "ocpp1.6"  # the cloud's choice, at once
                await linked(gw, "CP-X")
                answer = await cp.call("BootNotification", BOOT_16)
                assert answer[2]["status"] == "Accepted"
                # What was stored under 2.0.1 is never translated: a dead letter, with why.
                await wait_for(lambda: gw.hub is not None and gw.hub.dead_letters == 1)
                [dead] = await dead_letters(gw)
                assert dead["chargerId"] == "CP-X" and dead["action"] == "StatusNotification"
                assert "cloud does not speak ocpp2.0.1" in dead["error"]
                health = await detail(gw, "/health")
                assert health["status"] == "degraded" and health["outbox"]["deadLetters"] == 1
                body = await detail(gw, "/api/chargers/CP-X")
                assert (body["ocppVersion"], body["cloudVersion"]) == ("1.6", "1.6")
            # The 1.6 cloud got the 1.6 Boot and nothing of 2.0.1.
            assert "StatusNotification" not in cloud.actions("CP-X")
            assert cloud.selected["CP-X"][-1] == "ocpp1.6"
    finally:
        await cloud.stop()


async def test_a_cloud_unreachable_at_first_contact_then_refusing_the_charger_s_first(
    tmp_path: Any,
) -> None:
    cloud = VersionCloud(["ocpp2.0.1", "ocpp1.6"])
    cloud.reserve()
    settings = settings_for(tmp_path, cloud.url)
    offered = ["ocpp2.1", "ocpp2.0.1"]
    try:
        async with running_gateway(settings) as gw:
            async with station(gw, "CP-U", offered) as (ws, cp):
                assert ws.subprotocol == "ocpp2.1"  # the cloud cannot be asked: the charger's first
                boot = await cp.call("BootNotification", BOOT_201)
                assert boot[2]["status"] == "Accepted"  # answered locally, kept for the cloud
                stored = await cp.call("StatusNotification", status_201("Available"))
                assert stored[0] == 3  # answered locally, stored under 2.1
                body = await detail(gw, "/api/chargers/CP-U")
                assert body["cloudVersion"] is None
                await cloud.start()  # up, refusing 2.1
                assert await closed_with(ws) == (1012, "OCPP version changes")
            assert cloud.offers["CP-U"][:2] == ["ocpp2.1", "ocpp2.1, ocpp2.0.1"]

            async with station(gw, "CP-U", offered) as (ws, cp):
                assert ws.subprotocol == "ocpp2.0.1"
                await linked(gw, "CP-U")
                await cp.call("BootNotification", BOOT_201)
                await wait_for(lambda: gw.hub is not None and gw.hub.dead_letters == 1)
                [dead] = await dead_letters(gw)
                assert "cloud does not speak ocpp2.1" in dead["error"]
                body = await detail(gw, "/api/chargers/CP-U")
                assert body["cloudVersion"] == "2.0.1"
            # Only the Boot sent on 2.0.1: the one stored under 2.1 is not replayed on 2.0.1.
            assert cloud.actions("CP-U") == ["BootNotification"]
    finally:
        await cloud.stop()


async def test_a_cloud_slower_than_2_s_leaves_the_charger_its_first_and_its_late_choice_counts(
    tmp_path: Any,
) -> None:
    cloud = await VersionCloud(["ocpp2.0.1", "ocpp1.6"], handshake_delay_s=3.0).start()
    settings = settings_for(tmp_path, cloud.url, call_timeout_s=8.0)
    offered = ["ocpp2.1", "ocpp2.0.1"]
    try:
        async with running_gateway(settings) as gw:
            # Answered before the cloud chose (the charger's connect gives up after 5 s): its
            # first, while the connection asking the cloud goes on.
            async with station(gw, "CP-S", offered) as (ws, cp):
                assert ws.subprotocol == "ocpp2.1"
                assert cloud.offers["CP-S"] == ["ocpp2.1, ocpp2.0.1"]
                answer = await cp.call("StatusNotification", status_201("Available"))
                assert answer[0] == 3
                # The late choice (2.0.1) is the cloud's: remembered, and the charger told to
                # come back; the connection that brought it was the only one opened.
                assert await closed_with(ws) == (1012, "OCPP version changes")
                assert cloud.offers["CP-S"] == ["ocpp2.1, ocpp2.0.1"]
            async with station(gw, "CP-S", offered) as (ws, cp):
                assert ws.subprotocol == "ocpp2.0.1"
                await linked(gw, "CP-S", timeout=10)  # a handshake takes this cloud 3 s
                assert cloud.offers["CP-S"][1:] == ["ocpp2.0.1"]  # nothing else asked meanwhile
                body = await detail(gw, "/api/chargers/CP-S")
                assert body["cloudVersion"] == "2.0.1"
    finally:
        await cloud.stop()
