"""A Python relay without per-frame tasks: websockets' sans-I/O protocol under asyncio.Protocol.

What a Python relay can cost when the frame path is only callbacks: bytes arrive in
``data_received``, the sans-I/O ``Protocol`` turns them into frames, and each text frame is sent
at once on the other side's protocol and written to its transport, in the same callback. No
``await``, no Task, no Future, no queue per frame (the asyncio connection of websockets, used by
``minimal_relay``, has all four). Pings, pongs and the closing handshake are the sans-I/O layer's.

Frames are forwarded as they come (opcode and FIN kept), so fragmented messages pass through
too. A charger's frames that arrive before the cloud link is open wait in a list.
Run: ``python -m bench.fast_relay --port 0 --target ws://127.0.0.1:9001``;
the first line on stdout is ``LISTENING <port>``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Protocol
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.uri import WebSocketURI, parse_uri

__all__ = ["main"]

SUBPROTOCOLS = [Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")]
MAX_SIZE = 1 << 20


class _Side(asyncio.Protocol):
    """One TCP connection and its sans-I/O WebSocket protocol; ``peer`` is the other side."""

    ws: Protocol
    peer: _Side | None = None
    transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def flush(self) -> None:
        if self.transport is None:
            return
        chunks = self.ws.data_to_send()
        if chunks:
            if chunks[-1] == b"":  # the protocol asks for EOF: the closing handshake is done
                self.transport.writelines(chunks[:-1])
                self.transport.close()
            else:
                self.transport.writelines(chunks)

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self.handle(self.ws.events_received())
        self.flush()

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        peer, self.peer = self.peer, None
        if peer is not None and peer.ws.state is OPEN:
            peer.ws.send_close(1001 if exc is None else 1011)
            peer.flush()

    def handle(self, events: list[Request | Response | Frame]) -> None:
        raise NotImplementedError

    def forward(self, frame: Frame) -> None:
        """Send a data frame on as it came, or start closing the other side."""
        peer = self.peer
        if peer is None or peer.ws.state is not OPEN:
            return
        if frame.opcode is Opcode.TEXT:
            peer.ws.send_text(frame.data, fin=frame.fin)
        elif frame.opcode is Opcode.BINARY:
            peer.ws.send_binary(frame.data, fin=frame.fin)
        elif frame.opcode is Opcode.CONT:
            peer.ws.send_continuation(frame.data, fin=frame.fin)
        elif frame.opcode is Opcode.CLOSE:
            peer.ws.send_close(self.ws.close_code or 1000, self.ws.close_reason or "")
        peer.flush()


class _Cloud(_Side):
    ws: ClientProtocol

    def __init__(
        self, charger: _Charger, uri: WebSocketURI, subprotocol: Subprotocol | None
    ) -> None:
        self.peer = self.charger = charger
        protocols = [subprotocol] if subprotocol else None
        self.ws = ClientProtocol(uri, subprotocols=protocols, max_size=MAX_SIZE)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.ws.send_request(self.ws.connect())
        self.flush()

    def handle(self, events: list[Request | Response | Frame]) -> None:
        for event in events:
            if isinstance(event, Response):
                if self.peer is not None:
                    self.charger.cloud_answered(self.ws.state is OPEN)
            else:
                assert isinstance(event, Frame)
                self.forward(event)


class _Charger(_Side):
    ws: ServerProtocol

    def __init__(self, target: str) -> None:
        self.target = target
        self.ws = ServerProtocol(subprotocols=SUBPROTOCOLS, max_size=MAX_SIZE)
        self.waiting: list[Frame] = []

    def handle(self, events: list[Request | Response | Frame]) -> None:
        for event in events:
            if isinstance(event, Request):
                self.ws.send_response(self.ws.accept(event))
                if self.ws.state is OPEN:
                    self._open_cloud(event.path)
            elif self.peer is None or self.peer.ws.state is not OPEN:
                assert isinstance(event, Frame)
                self.waiting.append(event)
            else:
                assert isinstance(event, Frame)
                self.forward(event)

    def _open_cloud(self, path: str) -> None:
        uri = parse_uri(self.target + path)
        cloud = _Cloud(self, uri, self.ws.subprotocol)
        self.peer = cloud
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: cloud, uri.host, uri.port))
        task.add_done_callback(self._cloud_connected)

    def _cloud_connected(self, task: asyncio.Task[object]) -> None:
        if task.cancelled() or task.exception() is not None:
            self.peer = None
            self.ws.send_close(1011, "cloud unreachable")
            self.flush()

    def cloud_answered(self, accepted: bool) -> None:
        if not accepted:  # the cloud refused the handshake: so does the relay, after the fact
            self.peer = None
            self.ws.send_close(1011, "cloud refused the connection")
        waiting, self.waiting = self.waiting, []
        for frame in waiting:
            self.forward(frame)
        self.flush()


async def _main(host: str, port: int, target: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Charger(target), host, port, backlog=4096)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    await stop
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="sans-I/O WebSocket relay")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--target", required=True, help="ws://host:port (the path is appended)")
    args = parser.parse_args()
    try:
        from uvloop import run
    except ImportError:  # pragma: no cover
        from asyncio import run  # type: ignore[assignment]
    run(_main(args.host, args.port, args.target.rstrip("/")))


if __name__ == "__main__":
    main()
