"""Test doubles of the systems around the gateway, over real loopback WebSockets.

- :class:`FakeCharger`: a charger (raw OCPP-J over ``websockets``) that answers the CALLs it
  receives from a script, may hold an answer back, and records how many CALLs were outstanding.
- :class:`FakeCloud`: a cloud CSMS server that accepts ``/{cpid}``, answers the charger's CALLs,
  and can send CALLs to a charger through the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["FakeCharger", "FakeCloud", "Received"]

Answer = dict[str, Any] | Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass
class Received:
    """One CALL a charger received, and how many were outstanding when it arrived."""

    message_id: str
    action: str
    payload: dict[str, Any]
    outstanding: int


@dataclass
class FakeCharger:
    """A charger connected to ``url`` speaking ``version`` ("1.6" or "2.0.1")."""

    url: str
    version: str
    answers: dict[str, Answer] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    max_outstanding: int = 0
    _ws: ClientConnection | None = None
    _reader: asyncio.Task[None] | None = None
    _pending: dict[str, asyncio.Future[list[Any]]] = field(default_factory=dict)
    _outstanding: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> FakeCharger:
        self._ws = await connect(
            self.url, subprotocols=[f"ocpp{self.version}"], proxy=None, open_timeout=5
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        for task in list(self._tasks):
            task.cancel()

    async def call(self, action: str, payload: dict[str, Any], wait_s: float = 5) -> list[Any]:
        """Send a CALL and return the raw reply frame (CALLRESULT or CALLERROR)."""
        assert self._ws is not None
        mid = uuid.uuid4().hex
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending[mid] = future
        await self._ws.send(json.dumps([2, mid, action, payload]))
        return await asyncio.wait_for(future, wait_s)

    async def wait_for(self, action: str, count: int = 1, wait_s: float = 5) -> list[Received]:
        """Wait until ``count`` CALLs named ``action`` have arrived; return them."""
        async with asyncio.timeout(wait_s):
            while True:
                found = [r for r in self.received if r.action == action]
                if len(found) >= count:
                    return found
                self.arrived.clear()
                await self.arrived.wait()

    async def _read(self) -> None:
        assert self._ws is not None
        with contextlib.suppress(ConnectionClosed):
            async for text in self._ws:
                frame = json.loads(text)
                if frame[0] == 2:
                    self._outstanding += 1
                    self.max_outstanding = max(self.max_outstanding, self._outstanding)
                    self.received.append(Received(frame[1], frame[2], frame[3], self._outstanding))
                    self.arrived.set()
                    task = asyncio.create_task(self._answer(frame[1], frame[2], frame[3]))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif frame[0] in (3, 4):
                    future = self._pending.pop(frame[1], None)
                    if future is not None and not future.done():
                        future.set_result(frame)

    async def _answer(self, mid: str, action: str, payload: dict[str, Any]) -> None:
        assert self._ws is not None
        answer = self.answers.get(action)
        if answer is None:
            reply: list[Any] = [4, mid, "NotImplemented", f"{action} not scripted", {}]
        else:
            result = answer if isinstance(answer, dict) else await answer(payload)
            if result.get("__no_answer__"):
                return  # stays outstanding: a silent charger
            reply = [3, mid, result]
        self._outstanding -= 1
        with contextlib.suppress(ConnectionClosed):
            await self._ws.send(json.dumps(reply))


@dataclass
class FakeCloud:
    """A cloud CSMS on 127.0.0.1. ``answers`` maps the charger's actions to CALLRESULT payloads."""

    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    received: list[tuple[str, list[Any]]] = field(default_factory=list)  # (cpid, frame)
    connections: dict[str, ServerConnection] = field(default_factory=dict)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _server: Server | None = None
    _pending: dict[str, asyncio.Future[list[Any]]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def __aenter__(self) -> FakeCloud:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            subprotocols=["ocpp1.6", "ocpp2.0.1"],  # type: ignore[list-item]
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def call(
        self, cpid: str, action: str, payload: dict[str, Any], message_id: str | None = None
    ) -> asyncio.Future[list[Any]]:
        """Send a CALL to ``cpid`` through the gateway; the future gets the reply frame."""
        mid = message_id or uuid.uuid4().hex
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending[mid] = future
        await self.connections[cpid].send(json.dumps([2, mid, action, payload]))
        return future

    async def wait_connected(self, cpid: str, wait_s: float = 5) -> None:
        async with asyncio.timeout(wait_s):
            while cpid not in self.connections:
                self.connected.clear()
                await self.connected.wait()

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cpid = ws.request.path.rsplit("/", 1)[-1]
        self.connections[cpid] = ws
        self.connected.set()
        try:
            async for text in ws:
                frame = json.loads(text)
                self.received.append((cpid, frame))
                if frame[0] == 2:
                    reply = self.answers.get(frame[2], {})
                    await ws.send(json.dumps([3, frame[1], reply]))
                elif frame[0] in (3, 4):
                    future = self._pending.pop(frame[1], None)
                    if future is not None and not future.done():
                        future.set_result(frame)
        except ConnectionClosed:
            pass
        finally:
            if self.connections.get(cpid) is ws:
                del self.connections[cpid]
