"""Test doubles of the systems around the gateway: a cloud CSMS and chargers, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from gateway.app import Gateway
from gateway.config import Settings

Responder = Callable[[str, str, dict[str, Any]], Any]
"""(charger id, action, payload) → result payload, or ("error", code) for a CALLERROR, or None = no answer."""

_tx_ids = itertools.count(1001)


def default_responder(charger_id: str, action: str, payload: dict[str, Any]) -> Any:
    now = "2026-11-21T12:00:00.000Z"
    if action == "BootNotification":
        return {"status": "Accepted", "currentTime": now, "interval": 60}
    if action == "Heartbeat":
        return {"currentTime": now}
    if action == "Authorize":
        if "idToken" in payload:
            return {"idTokenInfo": {"status": "Accepted"}}
        return {"idTagInfo": {"status": "Accepted"}}
    if action == "StartTransaction":
        return {"transactionId": next(_tx_ids), "idTagInfo": {"status": "Accepted"}}
    if action == "StopTransaction":
        return {"idTagInfo": {"status": "Accepted"}} if "idTag" in payload else {}
    return {}


@dataclass
class FakeCloud:
    """A CSMS on 127.0.0.1 that records every frame per charger and answers with ``responder``."""

    responder: Responder = default_responder
    received: dict[str, list[list[Any]]] = field(default_factory=lambda: defaultdict(list))
    raw: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    connections: dict[str, ServerConnection] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    delay_s: float = 0.0  # how long the cloud takes to answer each CALL
    handshake_delay_s: float = 0.0  # how long the cloud takes to accept a WebSocket handshake
    connected_at: list[float] = field(default_factory=list)  # loop time of each accepted link
    # While set to an unset event, handshakes wait for it (or for the client to give up).
    handshake_gate: asyncio.Event | None = None
    handshakes_open: int = 0  # handshakes received and not yet answered or abandoned
    max_handshakes_open: int = 0
    ssl_context: ssl.SSLContext | None = None  # serve wss:// with this context
    server: Server | None = None
    _answers: dict[str, asyncio.Future[list[Any]]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    async def start(self) -> FakeCloud:
        self.server = await serve(
            self._handler,
            "127.0.0.1",
            self.port,
            subprotocols=[Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")],
            process_request=self._slow_handshake,
            ssl=self.ssl_context,
        )
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        return self

    @property
    def url(self) -> str:
        scheme = "ws" if self.ssl_context is None else "wss"
        return f"{scheme}://127.0.0.1:{self.port}/ocpp"

    async def restart(self) -> None:
        """Bring the cloud back on the same port."""
        await self.start()

    async def stop(self) -> None:
        """Take the cloud down: drop every connection abruptly, stop listening, forget records."""
        self.received.clear()
        self.raw.clear()
        if self.server is not None:
            for ws in list(self.connections.values()):
                ws.transport.abort()
            self.server.close()
            await self.server.wait_closed()
            self.server = None
            self.connections.clear()

    async def _slow_handshake(self, ws: ServerConnection, request: Any) -> None:
        self.handshakes_open += 1
        self.max_handshakes_open = max(self.max_handshakes_open, self.handshakes_open)
        try:
            if self.handshake_delay_s:
                await asyncio.sleep(self.handshake_delay_s)
            if self.handshake_gate is not None:
                opened = asyncio.ensure_future(self.handshake_gate.wait())
                either: list[asyncio.Future[Any]] = [opened, ws.connection_lost_waiter]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                opened.cancel()
        finally:
            self.handshakes_open -= 1

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.connected_at.append(asyncio.get_running_loop().time())
        charger_id = ws.request.path.rsplit("/", 1)[-1]
        self.paths.append(ws.request.path)
        self.headers.append(dict(ws.request.headers.raw_items()))
        self.connections[charger_id] = ws
        try:
            async for text in ws:
                frame = json.loads(text)
                self.received[charger_id].append(frame)
                self.raw[charger_id].append(str(text))
                if frame[0] == 2:
                    answer = self.responder(charger_id, frame[2], frame[3])
                    if answer is None:
                        continue
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    if isinstance(answer, tuple):
                        await ws.send(json.dumps([4, frame[1], answer[1], "refused", {}]))
                    else:
                        await ws.send(json.dumps([3, frame[1], answer]))
                elif frame[1] in self._answers:
                    self._answers.pop(frame[1]).set_result(frame)
        except ConnectionClosed:
            pass
        finally:
            if self.connections.get(charger_id) is ws:
                del self.connections[charger_id]

    def calls(self, charger_id: str, action: str | None = None) -> list[list[Any]]:
        return [
            f for f in self.received[charger_id] if f[0] == 2 and (action is None or f[2] == action)
        ]

    async def call(
        self,
        charger_id: str,
        action: str,
        payload: dict[str, Any],
        *,
        message_id: str | None = None,
    ) -> list[Any]:
        """Send a CALL to a charger through the gateway and wait for its answer."""
        mid = message_id or f"cloud-{next(self._ids)}"
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._answers[mid] = future
        await self.connections[charger_id].send(json.dumps([2, mid, action, payload]))
        return await asyncio.wait_for(future, 5)

    async def wait_connected(self, charger_id: str, timeout: float = 5) -> None:
        await wait_for(lambda: charger_id in self.connections, timeout)


async def wait_for(predicate: Callable[[], bool], timeout: float = 5, step: float = 0.01) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


class Charger:
    """A charger speaking raw OCPP-J over a real WebSocket; records CALLs sent to it."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.calls: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.received: list[list[Any]] = []
        self._answers: dict[str, asyncio.Future[list[Any]]] = {}
        self._ids = itertools.count(1)
        self._reader = asyncio.create_task(self._read())
        self.outstanding_calls_to_me = 0
        self.max_outstanding_calls_to_me = 0

    async def _read(self) -> None:
        try:
            async for text in self.ws:
                frame = json.loads(text)
                self.received.append(frame)
                if frame[0] == 2:
                    self.outstanding_calls_to_me += 1
                    self.max_outstanding_calls_to_me = max(
                        self.max_outstanding_calls_to_me, self.outstanding_calls_to_me
                    )
                    await self.calls.put(frame)
                elif frame[1] in self._answers:
                    self._answers.pop(frame[1]).set_result(frame)
        except ConnectionClosed:
            pass
        finally:
            # The connection is gone: a CALL still waiting will never be answered, so it fails
            # now rather than at its timeout.
            for future in self._answers.values():
                if not future.done():
                    future.set_exception(
                        ConnectionClosed(self.ws.protocol.close_rcvd, self.ws.protocol.close_sent)
                    )
            self._answers.clear()

    async def send_raw(self, text: str) -> None:
        await self.ws.send(text)

    async def call(
        self,
        action: str,
        payload: dict[str, Any],
        *,
        message_id: str | None = None,
        timeout: float = 5,
    ) -> list[Any]:
        mid = message_id or f"m{next(self._ids)}"
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._answers[mid] = future
        await self.ws.send(json.dumps([2, mid, action, payload]))
        return await asyncio.wait_for(future, timeout)

    async def expect_raw_answer(self, text: str, message_id: str, timeout: float = 5) -> list[Any]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._answers[message_id] = future
        await self.ws.send(text)
        return await asyncio.wait_for(future, timeout)

    async def answer(self, call: list[Any], payload: dict[str, Any]) -> None:
        self.outstanding_calls_to_me -= 1
        await self.ws.send(json.dumps([3, call[1], payload]))

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


@contextlib.asynccontextmanager
async def charger(
    port: int, charger_id: str, version: str = "1.6", **kwargs: Any
) -> AsyncIterator[Charger]:
    scheme = "wss" if kwargs.get("ssl") is not None else "ws"
    ws = await connect(
        f"{scheme}://127.0.0.1:{port}/ocpp/{charger_id}",
        subprotocols=[Subprotocol(f"ocpp{version}")],
        **kwargs,
    )
    c = Charger(ws)
    try:
        yield c
    finally:
        await c.close()


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings) -> AsyncIterator[Gateway]:
    gateway = Gateway(settings, reconnect_max_s=0.3)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def make_settings(tmp_path: Any, **sections: dict[str, Any]) -> Settings:
    """Settings on loopback with ephemeral ports and a store in ``tmp_path``."""
    data: dict[str, Any] = {
        "chargers": {"host": "127.0.0.1", "port": 0},
        "api": {"host": "127.0.0.1", "port": 0},
        "store": {"path": str(tmp_path / "gateway.db")},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return Settings(**data)
